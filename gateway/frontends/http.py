"""The HTTP front end: a raw ASGI app for V2 REST (JSON and binary) and V1 predict.

A thin adapter: it routes, reads the body, decodes with the codecs, calls the one
`InferenceService`, encodes, and maps `InferenceError` codes to HTTP statuses in one table.
It is a bare ASGI callable rather than a framework app because on a 2-core machine the
per-request cost of a framework's routing and request objects is a large share of the
serving budget (see docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelgate.gateway.codecs import v1, v2_http
from modelgate.gateway.core.errors import ErrorCode, InferenceError, invalid
from modelgate.gateway.core.service import InferenceService
from modelgate.gateway.core.types import InferRequest

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STATUS_BY_CODE = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}

_JSON = [(b"content-type", b"application/json")]
TIMEOUT_HEADER = b"x-request-timeout-ms"
_HEADER_LENGTH = b"inference-header-content-length"


class HttpError(Exception):
    """An error only HTTP has (e.g. 413, 405): status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpFrontend:
    """The ASGI application; one per server, sharing the service with the gRPC front end."""

    def __init__(
        self,
        service: InferenceService,
        max_body_bytes: int,
        routing_key_header: str = "x-routing-key",
    ) -> None:
        self._service = service
        self._max_body = max_body_bytes
        self._routing_key = routing_key_header.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._route(scope, receive)
        except InferenceError as exc:
            status, body, headers = STATUS_BY_CODE[exc.code], _error(exc.message), _JSON
        except HttpError as exc:
            status, body, headers = exc.status, _error(exc.message), _JSON
        except Exception:
            log.exception("unhandled error serving %s", scope.get("path"))
            status, body, headers = 500, _error("internal error"), _JSON
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[Any]]:
        method = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if parts[0] == "v2":
            if method == "POST":
                model, version, action = _model_path(parts)
                if action != "infer":
                    raise HttpError(404, f"no such endpoint: POST {scope['path']}")
                return await self._infer(scope, receive, model, version)
            if method != "GET":
                raise HttpError(405, f"method {method} not allowed")
            return self._get_v2(parts)
        if parts[0] == "v1" and len(parts) == 3 and parts[1] == "models":
            name, _, verb = parts[2].partition(":")
            if method == "POST" and verb == "predict":
                return await self._predict_v1(scope, receive, name)
            if method == "GET" and not verb:
                return 200, v2_http.encode_json(self._v1_status(name)), _JSON
        raise HttpError(404, f"no such endpoint: {method} {scope['path']}")

    def _get_v2(self, parts: list[str]) -> tuple[int, bytes, list[Any]]:
        service = self._service
        if len(parts) == 1:
            doc: dict[str, Any] = {
                "name": service.name,
                "version": service.version,
                "extensions": list(service.extensions),
            }
            return 200, v2_http.encode_json(doc), _JSON
        if parts[1] == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
            ok = service.live() if parts[2] == "live" else service.ready()
            return (200 if ok else 503), b"", _JSON
        model, version, action = _model_path(parts)
        if action == "":
            meta = v2_http.metadata_json(service.model_metadata(model, version))
            return 200, v2_http.encode_json(meta), _JSON
        if action == "ready":
            ready = service.model_ready(model, version)
            return (200 if ready else 503), b"", _JSON
        if action == "config":
            config = v2_http.config_json(service.model_config(model, version))
            return 200, v2_http.encode_json(config), _JSON
        if action == "drift":
            return 200, v2_http.encode_json(service.drift_report(model, version)), _JSON
        raise HttpError(404, f"no such endpoint: GET /{'/'.join(parts)}")

    def _v1_status(self, name: str) -> dict[str, Any]:
        return {"name": name, "ready": self._service.model_ready(name, None)}

    async def _infer(
        self, scope: Scope, receive: Receive, model: str, version: str | None
    ) -> tuple[int, bytes, list[Any]]:
        headers = dict(scope["headers"])
        body = await self._read_body(receive, headers)
        header_length = _int_header(headers, _HEADER_LENGTH)
        request, encoding = v2_http.decode_infer_request(body, header_length, model, version)
        _apply_timeout_header(request, headers)
        self._apply_routing_key(request, headers)
        response = await self._service.infer(request)
        out, json_length = v2_http.encode_infer_response(response, encoding)
        if json_length is None:
            return 200, out, _JSON
        return (
            200,
            out,
            [
                (b"content-type", b"application/octet-stream"),
                (_HEADER_LENGTH, str(json_length).encode()),
            ],
        )

    async def _predict_v1(
        self, scope: Scope, receive: Receive, model: str
    ) -> tuple[int, bytes, list[Any]]:
        headers = dict(scope["headers"])
        body = await self._read_body(receive, headers)
        inputs = self._service.model_metadata(model, None).inputs
        request = v1.decode_predict_request(body, model, None, inputs)
        _apply_timeout_header(request, headers)
        self._apply_routing_key(request, headers)
        response = await self._service.infer(request)
        return 200, v1.encode_predict_response(response), _JSON

    def _apply_routing_key(self, request: InferRequest, headers: dict[bytes, bytes]) -> None:
        key = headers.get(self._routing_key)
        if key is not None:
            request.routing_key = key.decode("latin-1")

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        declared = _int_header(headers, b"content-length")
        if declared is not None and declared > self._max_body:
            raise HttpError(413, f"body of {declared} bytes exceeds the limit of {self._max_body}")
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise HttpError(413, f"body exceeds the limit of {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _model_path(parts: list[str]) -> tuple[str, str | None, str]:
    """(model, version, action) of /v2/models/{m}[/versions/{v}][/action]."""
    if len(parts) < 3 or parts[1] != "models" or not parts[2]:
        raise HttpError(404, f"no such endpoint: /{'/'.join(parts)}")
    model = parts[2]
    rest = parts[3:]
    version = None
    if rest[:1] == ["versions"]:
        if len(rest) < 2 or not rest[1]:
            raise HttpError(404, "missing version in path")
        version = rest[1]
        rest = rest[2:]
    if len(rest) > 1:
        raise HttpError(404, f"no such endpoint: /{'/'.join(parts)}")
    return model, version, rest[0] if rest else ""


def _int_header(headers: dict[bytes, bytes], name: bytes) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid(f"header {name.decode()} must be an integer") from None


def _apply_timeout_header(request: InferRequest, headers: dict[bytes, bytes]) -> None:
    """`x-request-timeout-ms` sets the deadline unless the body's `timeout` already did."""
    millis = _int_header(headers, TIMEOUT_HEADER)
    if millis is None:
        return
    if millis <= 0:
        raise invalid("x-request-timeout-ms must be positive")
    if request.timeout is None or millis / 1000 < request.timeout:
        request.timeout = millis / 1000


def _error(message: str) -> bytes:
    return v2_http.encode_json({"error": message})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
