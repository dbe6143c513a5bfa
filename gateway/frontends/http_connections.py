"""HTTP/1.1 connections bounded in size, time and number, and a drain that loses no request.

A request head (request line and headers) larger than `max_header_bytes` is answered 431
and its connection closed; a head not complete `header_timeout` seconds after it began (or
after the connection opened) is answered 408 and closed, and so is a body not complete
`body_timeout` seconds after its head (time during which the server itself was not reading,
because an earlier request of the connection was still being served, does not count).
uvicorn's httptools protocol has none of these: a slowloris client holds its connection
forever, a slow body holds a request in flight too, and one header of any size is buffered
whole.

At most `max_connections` connections are open: a connection beyond the limit closes the
connection idle the longest (no request on it, none arriving), or, when every connection is
busy, is answered 503 and closed at once. Idle connections are cheap for a client to open,
so they go first; a busy one is never closed for a newcomer.

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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelgate.gateway.codecs import v2_http
from modelgate.gateway.frontends.http import Send
from modelgate.gateway.frontends.http_wire import Receive
from modelgate.gateway.settings import ServerSettings

# Long enough for a request already on its way (sent before the client could see the
# listener close) to arrive and be answered 503; short so that stopping stays quick.
IDLE_LINGER = 0.5

# How long a connection refused 431/408 may go on sending (discarded) before it is closed.
_REFUSED_LINGER = 1.0

_REFUSAL = v2_http.encode_json({"error": "the server is shutting down; retry elsewhere"})


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How large and how slow a request may arrive, and how many connections may be open."""

    head_bytes: int
    head_timeout: float
    body_timeout: float
    connections: int

    @classmethod
    def of(cls, settings: ServerSettings) -> ReadLimits:
        """The limits `settings` set."""
        return cls(
            settings.max_header_bytes,
            settings.header_timeout,
            settings.body_timeout,
            settings.max_connections,
        )


def _answer(status: str, message: str) -> bytes:
    body = v2_http.encode_json({"error": message})
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a head that was answered 431."""


class HttpDrain:
    """The drain state the HTTP connections of one server share."""

    def __init__(self) -> None:
        self.closing = False

    def begin(self) -> None:
        """From now on every answer closes its connection (`Connection: close`)."""
        self.closing = True


class IdleConnections:
    """The idle connections of one server, longest idle first."""

    def __init__(self) -> None:
        # A dict keeps insertion order: the first key has been idle the longest.
        self._idle: dict[DrainingHttpProtocol, None] = {}

    def add(self, connection: DrainingHttpProtocol) -> None:
        self._idle[connection] = None

    def discard(self, connection: DrainingHttpProtocol) -> None:
        self._idle.pop(connection, None)

    def pop_oldest(self) -> DrainingHttpProtocol | None:
        """The connection idle the longest, no longer listed; None when none is idle."""
        for connection in self._idle:
            del self._idle[connection]
            return connection
        return None


async def refuse(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI app for requests that arrive after the listener closed: 503, Connection: close."""
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _REFUSAL})


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the drain above; `protocol_for` binds its state."""

    drain: ClassVar[HttpDrain]
    limits: ClassVar[ReadLimits]
    idle: ClassVar[IdleConnections]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_arriving = False
        self._head_bytes = 0  # bytes received since the head began: bounds a head arriving
        self._head_exact = 0  # bytes of the head's parsed parts: checked once it is whole
        # The deadline of the head or body arriving (one at a time on a connection).
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.limits.connections:
            oldest = self.idle.pop_oldest()
            if oldest is None:
                self._refuse_connection()
                return
            oldest.transport.close()
        self.idle.add(self)
        self._arm_head_timer()  # a connection that never sends a head is closed too

    def _refuse_connection(self) -> None:
        """Over the limit with every connection busy: 503 and closed at once (no linger, so
        a flood of them holds no descriptors; a client that already sent may see a reset)."""
        self._refused = True
        self.connections.discard(self)  # not counted while it closes
        limit = self.limits.connections
        self.transport.write(_answer("503 Service Unavailable", f"over {limit} connections"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.idle.discard(self)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms the keep-alive timeout when no pipelined request waits.
        waiting = self.timeout_keep_alive_task is not None and not self._head_arriving
        if waiting and not self.transport.is_closing():
            self.idle.add(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self.idle.discard(self)
        counting = self._head_arriving
        super().data_received(data)
        # Counted after parsing, so that one chunk (at most the transport's read size) is
        # all a head can take beyond the limit. A chunk in which a head begins counts whole.
        if self._head_arriving and (counting or self._head_bytes == 0):
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.head_bytes:
                self._too_large()

    def _too_large(self) -> None:
        limit = self.limits.head_bytes
        self._refuse("431 Request Header Fields Too Large", f"request head over {limit} bytes")

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        self._head_arriving = True
        self._head_bytes = 0
        self._head_exact = 0
        if self._timer is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_exact += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_exact += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_arriving = False
        self._cancel_timer()
        if self._head_exact > self.limits.head_bytes:  # a whole head within one chunk
            self._too_large()
            raise _HeadRefused  # stops the parser; no request is started
        super().on_headers_complete()
        # Armed for every request: one without a body completes in this same parse.
        self._timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        if self.drain.closing and self.cycle is not None:
            # uvicorn then sends `connection: close` and closes after the answer.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()

    def shutdown(self) -> None:
        """The listener has closed: finish what was read, refuse what comes, then close."""
        self.app = refuse  # requests parsed from now on; those already read keep the real app
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(IDLE_LINGER, self._close_if_idle)
        elif self.pipeline:
            self.pipeline[0][0].keep_alive = False  # the newest read: close after its answer
        else:
            self.cycle.keep_alive = False

    def _arm_head_timer(self) -> None:
        self._timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        seconds = self.limits.head_timeout
        self._refuse("408 Request Timeout", f"request head not complete within {seconds:g} s")

    def _body_timed_out(self) -> None:
        seconds = self.limits.body_timeout
        if self.flow.read_paused:
            # The server is not reading (an earlier request is being served, or the app has
            # not taken what came): not the client's delay; it gets the time again.
            self._timer = self.loop.call_later(seconds, self._body_timed_out)
            return
        self._timer = None
        cycle = self.cycle
        if cycle.response_started:
            # Answered already (refused before its body was read): nothing more to say.
            self._refused = True
            self.transport.close()
            return
        # The app, waiting for the rest of the body, is told the client has gone; what it
        # sends then is dropped (the 408 is the answer).
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse("408 Request Timeout", f"request body not complete within {seconds:g} s")

    def _refuse(self, status: str, message: str) -> None:
        """Answer `status` and close: the rest of what this connection sends is ignored."""
        self._refused = True
        self._cancel_timer()
        if self.transport.is_closing():
            return
        self.transport.write(_answer(status, message))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with unread input would reset the connection, and the client might never
        # read the answer: send it and a FIN, discard what still comes for a moment, close.
        self.transport.write_eof()
        self.loop.call_later(_REFUSED_LINGER, self.transport.close)

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


def protocol_for(drain: HttpDrain, limits: ReadLimits) -> type[DrainingHttpProtocol]:
    """A protocol class whose connections share `drain`, `limits` and the list of idle
    connections (uvicorn instantiates the class)."""
    shared = {"drain": drain, "limits": limits, "idle": IdleConnections()}
    return type("DrainingHttpProtocol", (DrainingHttpProtocol,), shared)


class DrainingServer(uvicorn.Server):
    """uvicorn inside the gateway's loop (signals are the gateway's to handle), serving one
    listening socket and taking its accept queue when it stops (see above)."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket) -> None:
        super().__init__(config)
        # uvicorn closes `listener` when it stops; this descriptor keeps the socket and its
        # accept queue alive until `shutdown` has taken the queue.
        self._spare = listener.dup()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

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
        for conn in accepted:
            await loop.connect_accepted_socket(factory, conn)
        await super().shutdown(sockets)
