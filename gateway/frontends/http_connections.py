"""HTTP/1.1 connections for the gateway's data port: bounded (`modelgate.http_limits`,
from the `max_header_bytes`, `header_timeout`, `body_timeout` and `max_connections`
settings), refusing inference early under load (`http_admission`) and with a drain that
loses no request.

uvicorn's own shutdown closes every idle keep-alive connection at once and drops requests
queued behind the one in flight. A client that sent a request a moment before cannot tell
whether it ran, so it is lost. Here a stopping server instead:

1. while it still accepts (the drain delay), answers every request with `Connection: close`,
   so keep-alive clients open new connections, which load balancers send elsewhere;
2. once the listener is closed, answers every request it has read (pipelined ones too) as
   usual, and every request that arrives afterwards on a connection still open with a 503
   and `Connection: close`; an idle connection is closed only after `IDLE_LINGER` seconds
   without a request, never while a request head is arriving.

Closing a listening socket resets the connections the kernel has accepted but the server
has not yet taken (the client may already have sent its request). So the server keeps a
second descriptor of its listening socket, and when it stops takes the whole accept queue
before closing it: those connections are answered 503 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import uvicorn

from modelgate.gateway.codecs import v2_http
from modelgate.gateway.core.admission import Admission
from modelgate.gateway.frontends.http import Send
from modelgate.gateway.frontends.http_admission import AdmittingHttpProtocol, admitting_state
from modelgate.gateway.frontends.http_wire import Receive
from modelgate.gateway.settings import ServerSettings
from modelgate.http_limits import LoopServer, PreparedAnswer, ReadLimits, bounded

# Long enough for a request already on its way (sent before the client could see the
# listener close) to arrive and be answered 503; short so that stopping stays quick.
IDLE_LINGER = 0.5
# How long a connection the kernel had accepted when the server stopped gets to finish its
# TLS handshake (and then be answered like the others); one that does not is dropped.
HANDSHAKE_LINGER = 1.0

_REFUSAL = v2_http.encode_json({"error": "the server is shutting down; retry elsewhere"})


def read_limits(settings: ServerSettings) -> ReadLimits:
    """The limits of the data port's connections, from `settings`."""
    return ReadLimits(
        settings.max_header_bytes,
        settings.header_timeout,
        settings.body_timeout,
        settings.max_connections,
    )


class HttpDrain:
    """The drain state the HTTP connections of one server share."""

    def __init__(self) -> None:
        self.closing = False

    def begin(self) -> None:
        """From now on every answer closes its connection (`Connection: close`)."""
        self.closing = True


async def refuse(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI app for requests that arrive after the listener closed: 503, Connection: close."""
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _REFUSAL})


class DrainingHttpProtocol(AdmittingHttpProtocol):
    """The admitting protocol with the drain above; `protocol_for` binds its state."""

    drain: ClassVar[HttpDrain]

    def early_answer(self) -> PreparedAnswer | None:
        # While draining, every answer closes its connection; the application's path does it.
        return None if self.drain.closing else super().early_answer()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.drain.closing and self.cycle is not None:
            # uvicorn then sends `connection: close` and closes after the answer.
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        """The listener has closed: finish what was read, refuse what comes, then close."""
        self.app = refuse  # requests parsed from now on; those already read keep the real app
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(IDLE_LINGER, self._close_if_idle)
        elif self.pipeline:
            self.pipeline[0][0].keep_alive = False  # the newest read: close after its answer
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or self.pipeline:
            return  # the refusal's `connection: close` closes it after the answer
        if self._head_arriving:
            # A head on its way is answered (503) once complete; uvicorn's graceful-shutdown
            # timeout bounds a head that never completes.
            self.loop.call_later(IDLE_LINGER, self._close_if_idle)
            return
        self.transport.close()


def protocol_for(
    drain: HttpDrain,
    limits: ReadLimits,
    admission: Admission,
    on_slow_body: Callable[[], object] | None = None,
) -> type[DrainingHttpProtocol]:
    """A protocol class whose connections share `drain`, `limits` and `admission` (uvicorn
    instantiates the class); `on_slow_body` counts the refusals for a client's share of
    arriving bodies."""
    state = admitting_state(admission, on_slow_body)
    return bounded(limits, DrainingHttpProtocol, drain=drain, **state)


class DrainingServer(LoopServer):
    """uvicorn inside the gateway's loop, serving one listening socket and taking its accept
    queue when it stops (see above)."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket) -> None:
        super().__init__(config)
        # uvicorn closes `listener` when it stops; this descriptor keeps the socket and its
        # accept queue alive until `shutdown` has taken the queue.
        self._spare = listener.dup()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, take the accept queue, then uvicorn's shutdown (which calls
        `DrainingHttpProtocol.shutdown` on every connection, the queue's included)."""
        for server in self.servers:
            server.close()
        accepted: list[socket.socket] = []
        self._spare.setblocking(False)
        with contextlib.suppress(OSError):  # BlockingIOError: the queue is empty
            while True:
                accepted.append(self._spare.accept()[0])
        self._spare.close()  # no await since the last accept: nothing queued since is reset
        protocol: Any = self.config.http_protocol_class  # uvicorn types it as a bare Protocol
        factory = functools.partial(
            protocol,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.config.ssl is not None:  # those connections handshake first, all together
            tls = {"ssl": self.config.ssl, "ssl_handshake_timeout": HANDSHAKE_LINGER}
        connecting = [loop.connect_accepted_socket(factory, conn, **tls) for conn in accepted]
        await asyncio.gather(*connecting, return_exceptions=True)  # a failed one is closed
        await super().shutdown(sockets)
