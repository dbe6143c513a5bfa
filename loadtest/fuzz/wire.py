"""Fuzz cases on the wire: an HTTP request or a gRPC call's bytes, sent as they are.

HTTP goes through `http.client` on a kept-alive connection (a body is sent byte for byte,
headers as given); gRPC through a generic unary call with no serializer, so malformed
protobuf reaches the server untouched. Transport failures become a `Reply` too.
"""

from __future__ import annotations

import base64
import http.client
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

GRPC_SERVICE = "/inference.GRPCInferenceService/"


@dataclass(frozen=True, slots=True)
class Case:
    """One request. `kind` "http": method, path (with query), headers, body; "grpc": the
    full method name in `path` and the serialized (or mutated) message in `body`."""

    kind: str
    path: str
    body: bytes = b""
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    ops: tuple[str, ...] = ()  # the mutations that made it, for the report

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "headers": [list(h) for h in self.headers],
            "body_base64": base64.b64encode(self.body).decode(),
            "ops": list(self.ops),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Case:
        return cls(
            kind=doc["kind"],
            path=doc["path"],
            body=base64.b64decode(doc["body_base64"]),
            method=doc["method"],
            headers=tuple((k, v) for k, v in doc["headers"]),
            ops=tuple(doc.get("ops", ())),
        )


@dataclass(slots=True)
class Reply:
    """What came back: an HTTP status or a gRPC code name, or a transport failure
    ("reset", "hang") in `transport`."""

    status: int | None = None  # HTTP
    code: str | None = None  # gRPC status code name; "OK" on success
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # HTTP, names in lower case
    transport: str | None = None
    detail: str = ""
    seconds: float = 0.0


class HttpClient:
    """One kept-alive HTTP/1.1 connection to `host:port`, reopened when the server closed it."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._last = 0.0

    def send(self, case: Case) -> Reply:
        started = time.monotonic()
        # A connection idle this long may have been closed by the server's keep-alive
        # timer: start afresh, so that a reset is always the case's own doing.
        if self._conn is not None and started - self._last > 2.0:
            self.close()
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        conn = self._conn
        try:
            conn.putrequest(case.method, case.path, skip_accept_encoding=True)
            names = {k.lower() for k, _ in case.headers}
            for key, value in case.headers:
                conn.putheader(key, value.encode("latin-1", "replace"))
            if "content-length" not in names and (case.body or case.method in ("POST", "PUT")):
                conn.putheader("Content-Length", str(len(case.body)))
        except (ValueError, http.client.HTTPException) as exc:
            # http.client refused to write it (a control character in the path or a
            # header): the fuzzer's own mistake, nothing reached the server.
            self.close()
            return Reply(transport="unsent", detail=f"{type(exc).__name__}: {exc}"[:200])
        try:
            conn.endheaders(case.body or None)
            answer = conn.getresponse()
            body = answer.read()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            reply = Reply(status=answer.status, body=body, headers=headers)
            if answer.will_close:
                self.close()
        except TimeoutError:
            self.close()
            reply = Reply(transport="hang", detail=f"no answer within {self._timeout:g} s")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            reply = Reply(transport="reset", detail=f"{type(exc).__name__}: {exc}"[:200])
        self._last = time.monotonic()
        reply.seconds = self._last - started
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class GrpcClient:
    """A channel to the gateway's gRPC port that sends and receives bytes as they are."""

    def __init__(self, address: str, timeout: float) -> None:
        self._channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", -1), ("grpc.enable_retries", 0)],
        )
        self._timeout = timeout
        self._calls: dict[str, Any] = {}

    def send(self, case: Case) -> Reply:
        call = self._calls.get(case.path)
        if call is None:
            call = self._calls[case.path] = self._channel.unary_unary(case.path)
        started = time.monotonic()
        try:
            body = call(case.body, timeout=self._timeout)
            reply = Reply(code="OK", body=body)
        except grpc.RpcError as exc:
            code = exc.code()
            reply = Reply(code=code.name if code else "UNKNOWN", detail=str(exc.details())[:500])
        reply.seconds = time.monotonic() - started
        if reply.code == "DEADLINE_EXCEEDED" and reply.seconds >= self._timeout * 0.95:
            reply.transport = "hang"  # the client's own deadline ran out: no answer came
        return reply

    def close(self) -> None:
        self._channel.close()
