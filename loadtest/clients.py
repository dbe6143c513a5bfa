"""The load generator's clients: what goes on the wire and how each request ended.

A generator that shares the 2 cores with the server must cost far less per request than the
server does, or it measures itself. So each protocol gets the cheapest client that still
speaks it the way real clients do:

- HTTP: V2 JSON over keep-alive connections from a bounded pool (`HttpPool`), one request
  at a time on each (or up to `pipeline` in a row), written from pre-encoded bytes and parsed
  with httptools (which the gateway already depends on). httpx costs ten times more CPU.
- gRPC: grpc.aio unary ModelInfer calls (`GrpcCalls`), the request a pre-serialized
  `ModelInferRequest` (the generated message), the answer kept as bytes: only its status
  counts.

Both write into a `Record`: per request its scheduled, dispatched and finished times and one
`Outcome`. The probes send single requests, one at a time, for latency checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import grpc
import httptools
import numpy as np
import orjson

from loadtest.models import FEATURES
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb

MODEL = "light"
GRPC_METHOD = f"/{pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer"
_VARIANTS = 64  # distinct request rows, cycled
_MAX_DETAILS = 24  # distinct error texts kept per record; the rest are counted as "other"


class Outcome(IntEnum):
    """How a request ended."""

    PENDING = 0
    OK = 1  # HTTP 200, gRPC OK
    REFUSED = 2  # HTTP 503/429, RESOURCE_EXHAUSTED, UNAVAILABLE, or no connection (nothing sent)
    TIMEOUT = 3  # the client's deadline passed first (then it gave up on the request)
    LOST = 4  # the connection closed or was reset with the request unanswered; CANCELLED
    ERROR = 5  # any other status


class Record:
    """Per-request times and outcomes while a job runs (Python lists: cheap to write)."""

    def __init__(self, scheduled: list[float]) -> None:
        n = len(scheduled)
        self.scheduled = scheduled
        self.dispatched = [math.nan] * n
        self.sent = [math.nan] * n  # written to a connection (HTTP) or its call started (gRPC)
        self.finished = [math.nan] * n
        self.outcome = [0] * n
        self.details: Counter[str] = Counter()

    def add(self, at: float) -> int:
        """A closed-loop request scheduled now; its index."""
        self.scheduled.append(at)
        self.dispatched.append(math.nan)
        self.sent.append(math.nan)
        self.finished.append(math.nan)
        self.outcome.append(0)
        return len(self.outcome) - 1

    def finish(self, index: int, outcome: Outcome, detail: str | None = None) -> bool:
        """Record the end of a request once; False if it had already ended."""
        if self.outcome[index]:
            return False
        self.outcome[index] = outcome
        self.finished[index] = time.monotonic()
        if detail is not None:
            key = re.sub(r"\d+", "N", detail)[:120]
            if key not in self.details and len(self.details) >= _MAX_DETAILS:
                key = "other"
            self.details[key] += 1
        return True


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(_VARIANTS, FEATURES)).astype(np.float32)


def http_requests(address: str, seed: int = 0, model: str = MODEL) -> list[bytes]:
    """Whole V2 JSON infer requests (head and body) for one row each, keep-alive."""
    requests = []
    for row in _rows(seed):
        body = orjson.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                         "data": row.tolist()}]}
        )  # fmt: skip
        head = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {address}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode("ascii") + body)
    return requests


def grpc_requests(seed: int = 0, model: str = MODEL) -> list[bytes]:
    """Serialized ModelInferRequests for one row each."""
    requests = []
    for row in _rows(seed):
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
        request.raw_input_contents.append(row.tobytes())
        requests.append(request.SerializeToString())
    return requests


def http_outcome(status: int) -> Outcome:
    """What an HTTP status means for the overload and drain accounting."""
    if status == 200:
        return Outcome.OK
    return Outcome.REFUSED if status in (429, 503) else Outcome.ERROR


def grpc_outcome(code: grpc.StatusCode, details: str) -> Outcome:
    """What a gRPC status means. UNAVAILABLE is a clean refusal (the client may retry) unless
    the transport says the connection broke under the call: then the call is lost."""
    if code == grpc.StatusCode.OK:
        return Outcome.OK
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Outcome.REFUSED
    if code == grpc.StatusCode.UNAVAILABLE:
        broken = ("reset", "socket closed", "broken pipe", "connection aborted")
        return Outcome.LOST if any(b in details.lower() for b in broken) else Outcome.REFUSED
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.TIMEOUT
    return Outcome.LOST if code == grpc.StatusCode.CANCELLED else Outcome.ERROR


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection of the pool; answers arrive in the order requests were sent."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.outstanding: deque[int] = deque()
        self.status = 0
        self.closing = False  # the server said `Connection: close`: send nothing more
        self.queued = False  # in the pool's ready queue
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.pool.garbled(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.closing = True

    def on_message_complete(self) -> None:
        self.pool.answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.pool.closed(self, exc)


class HttpPool:
    """A bounded pool of keep-alive connections. A request takes a free connection, else opens
    one while the pool is below its bound, else waits for one (counted in `pool_waits`)."""

    def __init__(
        self, address: str, record: Record, requests: list[bytes], bound: int, pipeline: int
    ) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._record = record
        self._requests = requests
        self._bound = bound
        self._pipeline = pipeline
        self._ready: deque[_HttpConnection] = deque()  # may hold dead ones: skipped
        self._waiting: deque[int] = deque()
        self._carrier: dict[int, _HttpConnection] = {}
        self._open = 0  # connections open or being opened
        self._connecting: set[asyncio.Task[None]] = set()
        self._all: set[_HttpConnection] = set()
        self.on_finish: Callable[[int], None] | None = None
        self.pool_waits = 0
        self.connections = 0

    def submit(self, index: int) -> None:
        """Send request `index` now, or as soon as the pool has a connection for it."""
        ready = self._ready
        while ready and (ready[0].dead or ready[0].closing):
            ready.popleft().queued = False
        if ready:
            connection = ready[0]
            self._send(connection, index)
            if len(connection.outstanding) >= self._pipeline:
                ready.popleft()
                connection.queued = False
        elif self._open < self._bound:
            self._connect(index)
        else:
            self._waiting.append(index)
            self.pool_waits += 1

    def abandon(self, index: int) -> None:
        """The request timed out: drop its connection, as a client that stops waiting does
        (its other pipelined requests time out with it)."""
        connection = self._carrier.pop(index, None)
        if connection is not None and connection.transport is not None:
            for other in connection.outstanding:
                self._record.finish(other, Outcome.TIMEOUT)
            connection.outstanding.clear()
            connection.transport.abort()

    def _send(self, connection: _HttpConnection, index: int) -> None:
        connection.transport.write(self._requests[index % len(self._requests)])
        self._record.sent[index] = time.monotonic()
        connection.outstanding.append(index)
        self._carrier[index] = connection

    def _free(self, connection: _HttpConnection) -> None:
        """A connection can take another request: give it a waiting one, or queue it."""
        while self._waiting and not connection.closing:
            index = self._waiting.popleft()
            if not self._record.outcome[index]:
                self._send(connection, index)
                if len(connection.outstanding) >= self._pipeline:
                    if connection.queued:  # pipelining: it may sit anywhere in the queue
                        self._ready.remove(connection)
                        connection.queued = False
                    return
        if not connection.queued and not connection.closing:
            connection.queued = True
            self._ready.append(connection)

    def _connect(self, index: int) -> None:
        self._open += 1
        self.connections += 1
        task = asyncio.get_running_loop().create_task(self._opening(index))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _opening(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _HttpConnection(self), self._host, self._port
            )
        except OSError as exc:
            self._open -= 1
            # Refused or reset while connecting: the request was never sent.
            refused = isinstance(exc, (ConnectionRefusedError, ConnectionResetError))
            outcome = Outcome.REFUSED if refused else Outcome.LOST
            self._record.finish(index, outcome, f"connect: {exc.strerror or exc}")
            self._after_finish(index)
            self._reopen()
            return
        self._all.add(connection)
        if not self._record.outcome[index]:
            self._send(connection, index)
        if len(connection.outstanding) < self._pipeline:
            self._free(connection)

    def _reopen(self) -> None:
        """Below the bound again: open a connection for the oldest waiting request."""
        while self._waiting and self._open < self._bound:
            index = self._waiting.popleft()
            if not self._record.outcome[index]:
                self._connect(index)

    def answered(self, connection: _HttpConnection, status: int) -> None:
        index = connection.outstanding.popleft()
        self._carrier.pop(index, None)
        outcome = http_outcome(status)
        detail = None if outcome is Outcome.OK else f"HTTP {status}"
        if self._record.finish(index, outcome, detail):
            if len(connection.outstanding) < self._pipeline:
                self._free(connection)
            self._after_finish(index)

    def garbled(self, connection: _HttpConnection) -> None:
        for index in connection.outstanding:
            self._carrier.pop(index, None)
            if self._record.finish(index, Outcome.ERROR, "unparsable response"):
                self._after_finish(index)
        connection.outstanding.clear()
        connection.transport.abort()

    def closed(self, connection: _HttpConnection, exc: Exception | None) -> None:
        self._open -= 1
        self._all.discard(connection)
        how = "reset" if isinstance(exc, ConnectionResetError) else "closed"
        if connection.closing:
            how += " after Connection: close"
        for index in connection.outstanding:
            self._carrier.pop(index, None)
            if self._record.finish(index, Outcome.LOST, f"connection {how}, no answer"):
                self._after_finish(index)
        connection.outstanding.clear()
        self._reopen()

    def _after_finish(self, index: int) -> None:
        if self.on_finish is not None:
            self.on_finish(index)

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        for connection in list(self._all):
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run


class GrpcCalls:
    """Unary ModelInfer calls on `channels` grpc.aio channels, each its own HTTP/2 connection,
    taken in turn. One connection carries at most the server's `max_concurrent_streams` calls
    at once and holds the rest back in the client: a generator that stands for many clients
    needs several, or that client-side queue is what it measures."""

    def __init__(
        self, address: str, record: Record, requests: list[bytes], timeout: float, channels: int = 1
    ):
        # A local subchannel pool each: channels to one address would share a connection.
        self._channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, channels))
        ]
        self._calls = [c.unary_unary(GRPC_METHOD) for c in self._channels]  # bytes in and out
        self._record = record
        self._requests = requests
        self._timeout = timeout
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.on_finish: Callable[[int], None] | None = None
        self.pool_waits = 0
        self.connections = len(self._channels)

    def submit(self, index: int) -> None:
        self._tasks[index] = asyncio.get_running_loop().create_task(self._one(index))

    def abandon(self, index: int) -> None:
        task = self._tasks.pop(index, None)
        if task is not None:
            task.cancel()

    async def _one(self, index: int) -> None:
        record = self._record
        now = time.monotonic()
        record.dispatched[index] = record.sent[index] = now
        left = max(record.scheduled[index] + self._timeout - now, 0.001)
        call = self._calls[index % len(self._calls)]
        try:
            await call(self._requests[index % len(self._requests)], timeout=left)
            outcome, detail = Outcome.OK, None
        except grpc.aio.AioRpcError as exc:
            code, text = exc.code(), exc.details() or ""
            outcome, detail = grpc_outcome(code, text), f"{code.name}: {text}"
        except asyncio.CancelledError:
            return  # abandoned: already recorded as a timeout
        self._tasks.pop(index, None)
        if record.finish(index, outcome, detail) and self.on_finish is not None:
            self.on_finish(index)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for channel in self._channels:
            await channel.close()


class HttpProbe:
    """Single V2 infer requests, one at a time, each timed from its send: on one kept-alive
    connection, or on a new connection each (`fresh`, as a newly arriving client)."""

    def __init__(self, address: str, fresh: bool = False, model: str = MODEL) -> None:
        self._address = address
        self._fresh = fresh
        self._model = model
        self._record = Record([])
        self._pool: HttpPool | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _done(self, index: int) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __call__(self, timeout: float) -> tuple[Outcome, float]:
        """Send one request; its outcome and seconds until it ended."""
        if self._pool is None or self._fresh:
            if self._pool is not None:
                await self._pool.close()
            self._pool = HttpPool(
                self._address, self._record, http_requests(self._address, model=self._model), 1, 1
            )
            self._pool.on_finish = self._done
        record = self._record
        index = record.add(time.monotonic())
        self._waiter = asyncio.get_running_loop().create_future()
        self._pool.submit(index)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._waiter, timeout)
        if record.finish(index, Outcome.TIMEOUT):
            self._pool.abandon(index)
        return Outcome(record.outcome[index]), record.finished[index] - record.scheduled[index]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class GrpcProbe:
    """Single ModelInfer calls, one at a time, each timed: on one channel, or on a new channel
    (a new connection) each (`fresh`)."""

    def __init__(self, address: str, fresh: bool = False, model: str = MODEL) -> None:
        self._address = address
        self._fresh = fresh
        self._request = grpc_requests(model=model)[0]
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self, timeout: float) -> tuple[Outcome, float]:
        """Make one call; its outcome and seconds until it ended."""
        if self._channel is None or self._fresh:
            if self._channel is not None:
                await self._channel.close()
            self._channel = grpc.aio.insecure_channel(self._address)
        start = time.monotonic()
        try:
            await self._channel.unary_unary(GRPC_METHOD)(self._request, timeout=timeout)
            outcome = Outcome.OK
        except grpc.aio.AioRpcError as exc:
            outcome = grpc_outcome(exc.code(), exc.details() or "")
        return outcome, time.monotonic() - start

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


Probe = HttpProbe | GrpcProbe


def probe_for(protocol: str, address: str, fresh: bool = False, model: str = MODEL) -> Probe:
    """The probe of `protocol` ("http" or "grpc") against `address`, asking `model`."""
    probe = HttpProbe if protocol == "http" else GrpcProbe
    return probe(address, fresh, model)
