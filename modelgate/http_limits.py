"""HTTP/1.1 connections bounded in size, time and number: uvicorn's httptools protocol with
the limits it lacks, for every HTTP server modelgate runs (the gateway's data and metrics
ports, the registry).

A request head (request line and headers) larger than `ReadLimits.head_bytes` is answered
431 and its connection closed; a head not complete `head_timeout` seconds after it began (or
after the connection opened) is answered 408 and closed, and so is a body not complete
`body_timeout` seconds after its head (time during which the server itself was not reading,
because an earlier request of the connection was still being served, does not count).
uvicorn has none of these: a slowloris client holds its connection forever, a slow body
holds a request in flight too, and one header of any size is buffered whole. Over TLS, the
handshake must be complete `head_timeout` seconds after the connection opened, before the
head's own time starts (`LoopServer`; asyncio's default is 60 s).

A subclass may answer a request itself as soon as its head is parsed (`early_answer`), with
an answer prepared once (`PreparedAnswer`): no request cycle, task or application then. Its
body is parsed and dropped as it arrives, never buffered, within `body_timeout` like any
body, and the connection serves its next request. This is how a server at capacity refuses
at a small part of the cost of serving (docs/hardening.md, "Admission control").

At most `connections` connections are open: a connection beyond the limit closes the
connection idle the longest (no request on it, none arriving), or, when every connection is
busy, is answered 503 and closed at once. Idle connections are cheap for a client to open,
so they go first; a busy one is never closed for a newcomer. (uvicorn's `limit_concurrency`
instead answers 503 to every request, established connections' too, while over its limit.)
Over TLS a connection counts from accept, its handshake included (`TlsAccept`): asyncio
hands a connection to its protocol only once the handshake is done, so clients that never
complete one would each hold a socket for `head_timeout` uncounted. One beyond the limit
whose handshake cannot be answered (no idle connection to close) is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelgate.errorlog import log_refused

_log = logging.getLogger(__name__)

# How long a connection refused 431/408 may go on sending (discarded) before it is closed.
_REFUSED_LINGER = 1.0


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How large and how slow a request may arrive, and how many connections may be open."""

    head_bytes: int
    head_timeout: float
    body_timeout: float
    connections: int


def answer(status: str, message: str, extra: str = "", close: bool = True) -> bytes:
    """A whole HTTP answer: `status` ("503 Service Unavailable"), the `extra` header lines
    (each ending in CRLF), a JSON error, and (unless not `close`) `connection: close`."""
    body = orjson.dumps({"error": message})
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
    if close:
        head += "connection: close\r\n"
    return f"{head}{extra}content-length: {len(body)}\r\n\r\n".encode() + body


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    """An error answer encoded once, for a connection kept open and for one closing after it;
    `closes`: the connection closes after it whatever the client asked."""

    keep_open: bytes
    closing: bytes
    closes: bool = False

    @classmethod
    def of(cls, status: str, message: str, extra: str = "", closes: bool = False) -> PreparedAnswer:
        """The answer `status` with the JSON error `message` and the `extra` header lines."""
        keep_open = answer(status, message, extra, close=False)
        return cls(keep_open, answer(status, message, extra), closes)


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing once the connection was answered and is
    closing (431, or an early answer on a connection that does not stay open)."""


_IDLE_LOOKS = 8  # idle connections looked at, at most, for one to close for a newcomer
_DRAIN_BYTES = 65536  # read, at most, from a refused newcomer before closing it


def _peer_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A duplicate of the transport's socket (the event loop's own may not offer `recv`:
    uvloop's does not); the caller closes it. None when it is gone."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return None
    try:
        return socket.fromfd(raw.fileno(), raw.family, raw.type)
    except OSError:
        return None


def _arriving(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes the event loop has not read yet wait on the connection."""
    sock = _peer_socket(transport)
    if sock is None:
        return False
    with sock:
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing (EAGAIN), or broken: closing it loses nothing
            return False


def _drain(transport: asyncio.BaseTransport) -> None:
    """Read and drop what a connection about to close has sent (`_DRAIN_BYTES` at most):
    closed with unread bytes, it would send a reset, which may destroy the answer just
    written to it before the client reads it."""
    sock = _peer_socket(transport)
    if sock is None:
        return
    with sock, contextlib.suppress(OSError):
        left = _DRAIN_BYTES
        while left > 0 and (data := sock.recv(min(left, 16384), socket.MSG_DONTWAIT)):
            left -= len(data)


class IdleConnections:
    """The idle connections of one server, longest idle first."""

    def __init__(self) -> None:
        # A dict keeps insertion order: the first key has been idle the longest.
        self._idle: dict[BoundedHttpProtocol, None] = {}

    def add(self, connection: BoundedHttpProtocol) -> None:
        self._idle[connection] = None

    def discard(self, connection: BoundedHttpProtocol) -> None:
        self._idle.pop(connection, None)

    def close_oldest(self) -> bool:
        """Close the connection idle the longest for a newcomer; False when none is idle.

        "Idle" is what the event loop has read: behind on reading (under overload), it may
        list a connection whose next request is already in the kernel's buffer. Closed, that
        request would be lost (the unread bytes make the close a reset); such a connection is
        busy, so it is taken off the list (it comes back when answered) and the next one is
        looked at, `_IDLE_LOOKS` at most, so that a newcomer never costs a scan of them all.
        """
        for _ in range(_IDLE_LOOKS):
            connection = next(iter(self._idle), None)
            if connection is None:
                return False
            del self._idle[connection]
            if not _arriving(connection.transport):
                connection.transport.close()
                return True
        return False


class OneWriteAnswer:
    """The transport of one request cycle, on which an answer's head waits for its body and
    both go out in one write.

    uvicorn writes an answer's head and its body apart. On loopback each write is a system
    call that sends a segment and wakes the reader: for a small answer, the head's write was
    the largest single cost of the event loop's time (docs/performance.md). Used only where
    the cycle's first write is the head and a body write follows (the body's write, empty
    included, is always made but for HEAD requests; an `Expect: 100-continue` request's
    interim answer is written by `receive` before the head). Closing sends what is held
    first, as uvicorn does after a head when the application fails before its body.

    Nothing is written once the connection is closing. An answer can come after its client
    has gone: uvicorn marks only the newest request read on a connection as disconnected,
    not an older pipelined one being served, and uvloop raises on a closed transport.
    """

    __slots__ = ("_head", "_sent_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""
        self._sent_head = False

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            return
        if self._sent_head:
            self._transport.write(data)
        elif not self._head:
            self._head = data
        else:
            self._sent_head = True
            self._transport.write(self._head + data)

    def close(self) -> None:
        if self._transport.is_closing():
            return
        if self._head and not self._sent_head:
            self._sent_head = True
            self._transport.write(self._head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport as it is
        return getattr(self._transport, name)


class _WithoutWarnings(logging.LoggerAdapter):
    """A logger as it is, but for its warnings, which are dropped."""

    @property
    def level(self) -> int:  # uvicorn reads its logger's level
        return self.logger.level

    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass


_UVICORN_LOG = logging.getLogger("uvicorn.error")
_UVICORN_LOG_WITHOUT_WARNINGS = _WithoutWarnings(_UVICORN_LOG, {})


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `bounded` binds them."""

    limits: ClassVar[ReadLimits]
    idle: ClassVar[IdleConnections]

    # uvicorn logs a warning ("Invalid HTTP request received.") whenever its parser stops on
    # an exception. Once this protocol has answered and is closing, it stops the parser on
    # purpose (`_HeadRefused`): that is no invalid request, and a client must not be able to
    # make each of its refused requests a warning line (modelgate/errorlog.py).
    @property
    def logger(self) -> Any:
        return _UVICORN_LOG_WITHOUT_WARNINGS if self._refused else _UVICORN_LOG

    @logger.setter
    def logger(self, value: Any) -> None:
        pass  # uvicorn sets its own, the same `_UVICORN_LOG`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_arriving = False
        self._head_bytes = 0  # bytes received since the head began: bounds a head arriving
        # The deadline of the head or body arriving (one at a time on a connection), and
        # what to do when it passes (None: nothing is awaited). Every request moves the
        # deadline twice; a timer per move would cost two timers per request, so one timer
        # stays armed, and when it fires at a deadline since moved later it is armed again.
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._refused = False
        self._dropping_body = False  # answered by `early_answer`: the body is parsed, dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.limits.connections and not self.idle.close_oldest():
            self._refuse_connection()
            return
        self.idle.add(self)
        self._arm_head_timer()  # a connection that never sends a head is closed too

    def _refuse_connection(self) -> None:
        """Over the limit with every connection busy: 503 and closed at once (no linger, so
        a flood of them holds no descriptors). What the client sent already is read and
        dropped first, so that the close is no reset racing the 503; bytes it sends later
        may still meet one."""
        self._refused = True
        self.connections.discard(self)  # not counted while it closes
        limit = self.limits.connections
        message = f"over {limit} connections; retry"
        _drain(self.transport)
        self.transport.write(answer("503 Service Unavailable", message, "retry-after: 1\r\n"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._timer is not None:  # not left holding the connection until it fires
            self._timer.cancel()
            self._timer = None
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
        # Busy from here, also when the head begins in the chunk that ended a request which
        # `on_message_complete` found answered (and made idle).
        self._unset_keepalive_if_required()
        self.idle.discard(self)
        self._head_arriving = True
        self._head_bytes = 0
        if self._on_deadline is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_arriving = False
        self._cancel_timer()
        if self._head_size() > self.limits.head_bytes:  # a whole head within one chunk
            self._too_large()
            raise _HeadRefused  # stops the parser; no request is started
        early = self.early_answer() if self._nothing_unanswered() else None
        if early is None:
            super().on_headers_complete()
            if self.scope["method"] != "HEAD" and not self.expect_100_continue:
                # Duck-typed: what a cycle uses of a transport, `write` and `close` changed.
                self.cycle.transport = cast(asyncio.Transport, OneWriteAnswer(self.transport))
        else:
            self._answer_early(early)
        if self._refused:  # answered and closing: the rest of the input is not parsed
            raise _HeadRefused
        # Armed for every request: one without a body completes in this same parse.
        self._expect(self.limits.body_timeout, self._body_timed_out)

    def _head_size(self) -> int:
        """Bytes of the parsed head: its target and each header line (with ": " and CRLF;
        trailing blanks of a value, which the parser drops and nothing holds, not counted).
        """
        headers = self.headers
        parts = itertools.chain.from_iterable(headers)  # summed in C: no frame per header
        return len(self.url) + 4 * len(headers) + sum(map(len, parts))

    def early_answer(self) -> PreparedAnswer | None:
        """The answer to give the request whose head was just parsed without handing it to
        the application, or None (the default): the application answers it. Asked only when
        no earlier request of the connection is unanswered (a pipelined request waits for
        its turn, and the application answers it)."""
        return None

    def _nothing_unanswered(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _answer_early(self, early: PreparedAnswer) -> None:
        self._dropping_body = True
        if self.transport.is_closing():
            return
        parser = self.parser
        if early.closes or parser.get_http_version() == "1.0" or not parser.should_keep_alive():
            self._close_with(early.closing)
            return
        self.transport.write(early.keep_open)
        if self.flow.write_paused:
            # The client does not read its answers: read no more requests until it does.
            self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._nothing_unanswered():  # reading paused above, not for a request in flight
            self.flow.resume_reading()

    def on_body(self, body: bytes) -> None:
        if not self._dropping_body:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if self._dropping_body:
            self._dropping_body = False
            if not self.transport.is_closing():
                self._wait_for_next_request()
            return
        super().on_message_complete()
        cycle = self.cycle
        if cycle.response_complete and not self.pipeline and not self.transport.is_closing():
            # Answered before its body was read (refused at once): the body's arrival
            # cancelled uvicorn's keep-alive timeout, which nothing would arm again.
            self._wait_for_next_request()

    def _wait_for_next_request(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self.idle.add(self)

    def _arm_head_timer(self) -> None:
        self._expect(self.limits.head_timeout, self._head_timed_out)

    def _expect(self, seconds: float, on_deadline: Callable[[], None]) -> None:
        """Call `on_deadline` in `seconds` unless `_cancel_timer` (or another `_expect`)
        comes first."""
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        self._on_deadline = on_deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._deadline_passed)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        """Nothing is awaited any more (the armed timer, when it fires, does nothing)."""
        self._on_deadline = None

    def _deadline_passed(self) -> None:
        self._timer = None
        on_deadline = self._on_deadline
        if on_deadline is None:
            return
        if self._deadline > self._timer_at:  # moved since the timer was armed
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)
            self._timer_at = self._deadline
            return
        self._on_deadline = None
        on_deadline()

    def _head_timed_out(self) -> None:
        seconds = self.limits.head_timeout
        self._refuse("408 Request Timeout", f"request head not complete within {seconds:g} s")

    def _body_timed_out(self) -> None:
        seconds = self.limits.body_timeout
        if self.flow.read_paused:
            # The server is not reading (an earlier request is being served, or the app has
            # not taken what came): not the client's delay; it gets the time again.
            self._expect(seconds, self._body_timed_out)
            return
        cycle = self.cycle
        if self._dropping_body or cycle.response_started:
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
        log_refused(_log, "HTTP connection", status, message)
        self._close_with(answer(status, message))

    def _close_with(self, data: bytes) -> None:
        """Write `data` (an answer saying `connection: close`) and close."""
        self._refused = True
        self._cancel_timer()
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with unread input would reset the connection, and the client might never
        # read the answer: send it and a FIN, discard what still comes for a moment, close.
        self.transport.write_eof()
        self.loop.call_later(_REFUSED_LINGER, self.transport.close)


class TlsAccept:
    """Accepts the connections of one TLS listening socket and counts each toward the
    connection limit from accept on, while its handshake runs (at most the head timeout),
    handing it to a protocol from `factory` once the handshake is done. Stands in for the
    `asyncio.Server` that uvicorn closes when it stops."""

    def __init__(
        self,
        listener: socket.socket,
        factory: Callable[[], BoundedHttpProtocol],
        context: ssl.SSLContext,
        limits: ReadLimits,
        idle: IdleConnections,
        connections: set[Any],
    ) -> None:
        self._listener = listener
        self._factory = factory
        self._context = context
        self._limits = limits
        self._idle = idle
        self._connections = connections  # uvicorn's: the connections past their handshake
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError:  # out of descriptors, or the connection went away already
                await asyncio.sleep(0.1)
                continue
            if not self._room():
                conn.close()  # over the limit, all busy: no handshake, so no 503 possible
                continue
            conn.setblocking(False)
            handshake = loop.create_task(self._handshake(conn))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    def _room(self) -> bool:
        """Whether a connection just accepted may open: below the limit, counting those in
        a handshake, or once the connection idle the longest is closed for it."""
        if len(self._connections) + len(self._handshakes) < self._limits.connections:
            return True
        return self._idle.close_oldest()

    async def _handshake(self, conn: socket.socket) -> None:
        # On success the protocol is connected (and counted by uvicorn) before this returns.
        with contextlib.suppress(Exception):  # timed out, not TLS, reset: closed by asyncio
            await asyncio.get_running_loop().connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._context,
                ssl_handshake_timeout=self._limits.head_timeout,
            )

    def close(self) -> None:
        """Stop accepting and close the listening socket (what `asyncio.Server.close` does);
        handshakes under way go on, each within its timeout."""
        self._accepting.cancel()
        self._listener.close()

    async def wait_closed(self) -> None:
        """Stop the handshakes still under way (the server has stopped)."""
        for handshake in list(self._handshakes):
            handshake.cancel()


P = TypeVar("P", bound=BoundedHttpProtocol)


def bounded(limits: ReadLimits, base: type[P], **shared: Any) -> type[P]:
    """A subclass of `base` whose connections share `limits`, a list of idle connections and
    the `shared` class attributes (uvicorn instantiates the class per connection)."""
    return type(base.__name__, (base,), {"limits": limits, "idle": IdleConnections(), **shared})


class LoopServer(uvicorn.Server):
    """uvicorn inside a loop of ours, serving listening sockets of ours with a protocol from
    `bounded`: signals are ours to handle (uvicorn's own are main-thread only), and a TLS
    handshake must be complete within the head timeout (uvicorn passes asyncio none, whose
    default holds a connection that never completes its handshake for 60 s; the head's
    own timer only starts once the handshake is done) and counts toward the connection
    limit (`TlsAccept`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup for the sockets given (the only way modelgate serves), with
        TLS connections counted from accept (`TlsAccept`)."""
        if sockets is None:
            raise ValueError("a LoopServer serves the listening sockets it is given")
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise RuntimeError("the application's startup failed")
        self.servers = await self.accepting(sockets)
        self.started = True

    def connection_factory(self) -> Callable[[], Any]:
        """What makes the protocol of a connection accepted (uvicorn's way)."""
        protocol: Any = self.config.http_protocol_class  # uvicorn types it as a bare Protocol
        return functools.partial(
            protocol,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )

    async def accepting(self, sockets: list[socket.socket]) -> list[Any]:
        """Accept the connections of listening `sockets` from now on; returns what accepts
        them, an `asyncio.Server` (or, over TLS, a `TlsAccept`) per socket."""
        config = self.config
        factory = self.connection_factory()
        if config.ssl is not None:
            protocol: Any = config.http_protocol_class
            connections = self.server_state.connections
            return [
                TlsAccept(sock, factory, config.ssl, protocol.limits, protocol.idle, connections)
                for sock in sockets
            ]
        loop = asyncio.get_running_loop()
        return [
            await loop.create_server(factory, sock=sock, backlog=config.backlog) for sock in sockets
        ]


async def start_serving(server: uvicorn.Server, listener: socket.socket) -> asyncio.Task[None]:
    """Serve `listener` with `server` on the running loop; returns once it serves (the task
    runs until `server.should_exit`), or raises uvicorn's startup error."""
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    return task
