"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 recording every POST."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time
from typing import Any

import orjson


@dataclasses.dataclass(frozen=True)
class Request:
    """One POST the receiver got, with the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # monotonic

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def data(self) -> dict[str, Any]:
        return orjson.loads(self.body)["data"]


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request. It answers the scripted
    responses in order, then 200; `stop` closes the port, `start` opens the same one again."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.requests: list[Request] = []
        self._script: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def answer(self, *responses: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these statuses (and headers), then 200 again."""
        with self._lock:
            self._script = [r if isinstance(r, tuple) else (r, {}) for r in responses]

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    status, headers = receiver._script.pop(0) if receiver._script else (200, {})
                    receiver.requests.append(
                        Request(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            status,
                            time.monotonic(),
                        )
                    )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def accepted(self) -> list[Request]:
        """The requests answered with a 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def by_id(self, event_id: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.id == event_id]
