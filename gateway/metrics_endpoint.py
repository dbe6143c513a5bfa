"""The Prometheus endpoint on its own port: prometheus_client's ASGI app served by uvicorn on
the gateway's event loop (or, in the supervisor of several workers, on a loop of its own in
a thread: `MetricsThread`), with the connection limits of every modelgate HTTP server
(`modelgate.http_limits`).

prometheus_client's own `start_http_server` starts a thread per connection and has no
timeouts: idle or slow connections each held a thread for as long as they liked.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

from modelgate.gateway.codecs import v2_http
from modelgate.gateway.core.access import CHALLENGE, Access
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.frontends.http import STATUS_BY_CODE, Scope, Send
from modelgate.gateway.frontends.http_wire import Receive
from modelgate.gateway.security import Security
from modelgate.gateway.settings import ServerSettings
from modelgate.http_limits import (
    BoundedHttpProtocol,
    LoopServer,
    ReadLimits,
    bounded,
    start_serving,
)

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Scrapers are few (a Prometheus server keeps one connection): a handful of places is room
# enough, and bounds what a flood of connections to this port costs.
MAX_CONNECTIONS = 32
# A scrape request is a short GET.
MAX_HEAD_BYTES = 16 * 1024


class MetricsEndpoint:
    """Serves `registry` on a listening socket until stopped; over TLS and asking for a token
    as `security` says (gateway/security.py)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listener: socket.socket,
        settings: ServerSettings,
        security: Security | None = None,
    ) -> None:
        limits = ReadLimits(
            MAX_HEAD_BYTES, settings.header_timeout, settings.body_timeout, MAX_CONNECTIONS
        )
        app: ASGIApp = make_asgi_app(registry)
        if security is not None and security.protect_metrics and security.access is not None:
            app = _asking_for_tokens(app, security.access)
        config = uvicorn.Config(
            app,
            http=bounded(limits, BoundedHttpProtocol),
            loop="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # float works
            timeout_graceful_shutdown=1,
        )
        config.load()
        # uvicorn serves the context found here (None: plain text).
        config.ssl = security.metrics.ssl_context() if security and security.metrics else None
        self._listener = listener
        self._server = LoopServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    async def start(self) -> None:
        """Serve from now on (the socket is already bound and listening)."""
        self._task = await start_serving(self._server, self._listener)

    async def stop(self) -> None:
        """Finish the scrapes in flight, close the connections and the listener."""
        if self._task is not None:
            self._server.should_exit = True
            await self._task
        else:
            self._listener.close()


def _asking_for_tokens(app: ASGIApp, access: Access) -> ASGIApp:
    """`app` for callers with a token for every model: the figures are every model's."""

    async def asking(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                access.check(dict(scope["headers"]).get(b"authorization"), None)
            except InferenceError as exc:
                headers = [(b"content-type", b"application/json")]
                if exc.code is ErrorCode.UNAUTHENTICATED:
                    headers.append((b"www-authenticate", CHALLENGE.encode()))
                status = STATUS_BY_CODE[exc.code]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                body = v2_http.encode_json({"error": exc.message})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return asking


class MetricsThread:
    """A `MetricsEndpoint` on an event loop of its own in a thread, for a process that runs
    no loop (the supervisor). A scrape holds that loop while it collects (the merged view
    asks every worker), so scrapes take turns."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listener: socket.socket,
        settings: ServerSettings,
        security: Security | None = None,
    ) -> None:
        self._endpoint = MetricsEndpoint(registry, listener, settings, security)
        self.port = self._endpoint.port
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._started = threading.Event()
        self._failed: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    def start(self) -> None:
        """Serve from now on; returns once the endpoint serves (or raises why it cannot)."""
        self._thread.start()
        self._started.wait()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as exc:  # at startup: handed to `start`
            self._failed = exc
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        await self._endpoint.start()
        self._started.set()
        await self._stopping.wait()
        await self._endpoint.stop()
