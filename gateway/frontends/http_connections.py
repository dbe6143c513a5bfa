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

Shedding (`shed_connections`, off by default). Refusing a request in the event loop costs
about a third of serving one (a read, the parse, a write): past about 1.5x its capacity a
process spends more on refusals than on serving, and goodput collapses. With shedding, an
inference request refused because every `max_inflight` place is taken has its connection
closed after the 503, and the server stops accepting: the listening socket stops listening
(it keeps its port) and the kernel refuses new connections at once, at no cost to this
process, whose core goes to the requests it holds. The accept queue is taken first, as when
stopping; a connection whose handshake completes in the instant between is reset, which is
why shedding is not the default. After `SHED_MIN_SECONDS`, once half the places are free,
the socket listens again. With `--workers`, a worker that sheds leaves the port's
SO_REUSEPORT group meanwhile, so the kernel hands new connections to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from prometheus_client import Counter

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

log = logging.getLogger(__name__)

# A server sheds for at least this long, then until half its places are free (looked at
# every SHED_CHECK_SECONDS). Each time it listens again, the clients it refused meanwhile
# connect at once, and a connection accepted only to be refused costs more than a refusal on
# a kept-open one: listening again at the first free place, about a hundred times a second
# under load, gave less goodput than not shedding at all (docs/hardening.md).
SHED_MIN_SECONDS = 0.2
SHED_CHECK_SECONDS = 0.01

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


@dataclass(frozen=True, slots=True)
class SheddingMetrics:
    """How often, and for how long, a server did not accept connections (shedding)."""

    episodes: Counter
    seconds: Counter


class DrainingServer(LoopServer):
    """uvicorn inside the gateway's loop, serving one listening socket, taking its accept
    queue when it stops (see above), and, given an `Admission` to shed for, not accepting
    while every place is taken (see above)."""

    def __init__(
        self,
        config: uvicorn.Config,
        listener: socket.socket,
        shed_for: Admission | None = None,
        metrics: SheddingMetrics | None = None,
    ) -> None:
        super().__init__(config)
        # uvicorn closes `listener` when it stops; this descriptor keeps the socket and its
        # accept queue alive until `shutdown` has taken the queue, and across shedding.
        self._spare = listener.dup()
        self._backlog = config.backlog
        self._admission = shed_for
        self._metrics = metrics
        self.shedding = False
        self._shedding_since = 0.0
        self._stopping = False
        self._accepting_again: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[Any]] = set()
        if shed_for is not None:
            protocol: Any = config.http_protocol_class  # uvicorn types it as a bare Protocol
            protocol.shedding(self)

    def shed(self) -> None:
        """Every place is taken (a request was just refused for it): stop accepting for
        `SHED_MIN_SECONDS`, then until half the places are free. The kernel refuses new
        connections meanwhile, at no cost to this process. The accept queue is taken first;
        a connection whose handshake completes in the instant between is reset."""
        if self.shedding or self._stopping or not self.started:
            return
        self.shedding = True
        loop = asyncio.get_running_loop()
        self._shedding_since = loop.time()
        if self._metrics is not None:
            self._metrics.episodes.inc()
        for server in self.servers:
            server.close()
        accepted = self._take_accept_queue()
        # Not listening, the socket keeps its port; without SO_REUSEADDR (only binding looks
        # at it) no other process can bind the port meanwhile.
        self._spare.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        self._spare.shutdown(socket.SHUT_RD)  # the kernel refuses connections from here
        for connecting in self._connect(accepted):
            task = loop.create_task(connecting)
            self._connecting.add(task)
            task.add_done_callback(self._connected)
        loop.call_later(SHED_MIN_SECONDS, self._accept_when_free)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting.discard(task)
        if not task.cancelled():
            task.exception()  # a connection that failed (a TLS handshake) is closed already

    def _accept_when_free(self) -> None:
        if self._stopping:
            return
        assert self._admission is not None
        loop = asyncio.get_running_loop()
        if self._admission.inflight > self._admission.limit // 2:
            loop.call_later(SHED_CHECK_SECONDS, self._accept_when_free)
            return
        self._accepting_again = loop.create_task(self._accept_again())

    async def _accept_again(self) -> None:
        """Listen and accept again; what nobody foresaw (out of descriptors) is said in one
        line, and tried again each second."""
        while not self._stopping:
            try:
                # The connections this server closed wait out TIME_WAIT on the port:
                # listening binds the port again, which they allow only with SO_REUSEADDR.
                self._spare.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._spare.listen(self._backlog)
                self.servers = await self.accepting([self._spare.dup()])
            except OSError as exc:
                log.error("the HTTP port cannot accept again after shedding: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.shedding = False
            if self._metrics is not None:
                self._metrics.seconds.inc(asyncio.get_running_loop().time() - self._shedding_since)
            break
        self._accepting_again = None

    def _take_accept_queue(self) -> list[socket.socket]:
        """The connections the kernel has accepted and this server has not yet taken."""
        accepted: list[socket.socket] = []
        self._spare.setblocking(False)
        with contextlib.suppress(OSError):  # BlockingIOError: the queue is empty
            while True:
                accepted.append(self._spare.accept()[0])
        return accepted

    def _connect(self, accepted: list[socket.socket]) -> list[Coroutine[Any, Any, Any]]:
        """Hand connections taken from the accept queue to the server's protocol."""
        factory = self.connection_factory()
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.config.ssl is not None:  # those connections handshake first, all together
            tls = {"ssl": self.config.ssl, "ssl_handshake_timeout": HANDSHAKE_LINGER}
        return [loop.connect_accepted_socket(factory, conn, **tls) for conn in accepted]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, take the accept queue, then uvicorn's shutdown (which calls
        `DrainingHttpProtocol.shutdown` on every connection, the queue's included)."""
        self._stopping = True
        if self._accepting_again is not None:  # listening again: its server is closed below
            await self._accepting_again
        for server in self.servers:
            server.close()
        accepted = self._take_accept_queue()  # none while shedding: nothing listens
        self._spare.close()  # no await since the last accept: nothing queued since is reset
        connecting = self._connect(accepted)
        await asyncio.gather(*connecting, *self._connecting, return_exceptions=True)
        await super().shutdown(sockets)
