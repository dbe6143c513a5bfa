"""HTTP connections: request heads are bounded in size and time, idle keep-alive
connections close, and a stopping gateway answers every HTTP request that reaches it:
keep-alive clients are told to go (`Connection: close`) while it still accepts, and a
request arriving on a connection still open after the listener closed gets 503, never a
dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

from conftest import running
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n\r\n"
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and lower-cased head of one HTTP answer, its body read."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).lower()
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head:
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 10)
    return status, head


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (within a generous bound)."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def _listener_closed(gateway: Gateway) -> None:
    assert gateway.addresses is not None
    host, port = gateway.addresses.http.rsplit(":", 1)
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except ConnectionRefusedError:
            return
        writer.close()
        await asyncio.sleep(0.01)
    raise AssertionError("the listener never closed")


@contextlib.asynccontextmanager
async def _limited(
    settings: ServerSettings, store: RegistryStore, connections: int
) -> AsyncIterator[tuple[Gateway, str, int]]:
    """A started gateway keeping at most `connections` HTTP connections open (keep-alive
    long enough not to close any on its own); yields it with its HTTP host and port."""
    settings = dataclasses.replace(settings, max_connections=connections, keep_alive_timeout=60.0)
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        yield gateway, host, int(port)
    finally:
        await gateway.stop()


async def _idle_connections(host: str, port: int, count: int) -> list[Connection]:
    """`count` keep-alive connections, each answered once; the first has been idle the longest."""
    clients = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(LIVE)
        assert (await _answer(reader))[0] == 200
        clients.append((reader, writer))
    return clients


async def test_draining_http_closes_keep_alive_and_answers_late_requests_503(
    settings: ServerSettings, store: RegistryStore
) -> None:
    settings = dataclasses.replace(settings, drain_delay=0.5, drain_seconds=5.0)
    gateway = Gateway(settings, store)
    await gateway.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await gateway.wait_loaded()
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        connect = lambda: asyncio.open_connection(host, int(port))  # noqa: E731
        idle_reader, idle = await connect()
        idle.write(LIVE)
        status, head = await _answer(idle_reader)
        assert status == 200 and b"connection: close" not in head
        slow_reader, slow = await connect()
        slow.write(LIVE[:20])  # a head still arriving when the listener closes
        await slow.drain()

        stopping = asyncio.create_task(gateway.stop())
        await asyncio.sleep(0.1)
        # The drain delay: still served, but told to reconnect elsewhere.
        reader, writer = await connect()
        writer.write(LIVE)
        status, head = await _answer(reader)
        assert status == 200 and b"connection: close" in head
        assert await reader.read() == b""
        writer.close()

        await _listener_closed(gateway)
        # A client that sent on its idle keep-alive connection as the listener closed, and
        # one whose head was arriving, get an answer and a closed connection, not a reset.
        idle.write(LIVE)
        slow.write(LIVE[20:])
        for reader in (idle_reader, slow_reader):
            status, head = await _answer(reader)
            assert status == 503 and b"connection: close" in head
            assert await reader.read() == b""
        idle.close()
        slow.close()
        await asyncio.wait_for(stopping, 10)
    finally:
        await (gateway.stop() if stopping is None else stopping)


async def test_request_heads_are_bounded_in_size_and_time_and_idle_connections_close(
    settings: ServerSettings, store: RegistryStore
) -> None:
    settings = dataclasses.replace(
        settings, max_header_bytes=4096, header_timeout=0.5, keep_alive_timeout=0.5
    )
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        connect = lambda: asyncio.open_connection(host, int(port))  # noqa: E731

        # A head over the limit: 431 and closed, however much more the client sends.
        reader, writer = await connect()
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"a" * 16384)
                await writer.drain()
        status, _ = await _answer(reader)
        assert status == 431
        assert await _closed(reader)
        writer.close()

        # A head over the limit that arrives whole at once.
        reader, writer = await connect()
        writer.write(LIVE.replace(b"Host", b"X-Big: " + b"a" * 8192 + b"\r\nHost"))
        status, _ = await _answer(reader)
        assert status == 431
        assert await _closed(reader)
        writer.close()

        # A slowloris head: 408 and closed once the timeout passes; others are served.
        slow_reader, slow = await connect()
        slow.write(b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n")
        reader, writer = await connect()
        writer.write(LIVE)
        assert (await _answer(reader))[0] == 200
        status, _ = await _answer(slow_reader)
        assert status == 408
        assert await _closed(slow_reader)
        slow.close()

        # The served connection, now idle, is closed after the keep-alive timeout.
        assert await _closed(reader)
        writer.close()
    finally:
        await gateway.stop()


def _infer_head(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)
    )


_ROW = b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[%s]}]}' % (
    b",".join([b"0.5"] * 8)
)


async def _infer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """The status of a whole inference request sent on a connection."""
    writer.write(_infer_head(len(_ROW)) + _ROW)
    return (await _answer(reader))[0]


async def _hold_the_only_place(
    gateway: Gateway,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request, its body never complete, holds `max_inflight` 1: once a
    whole request on another connection is refused 503."""
    assert gateway.addresses is not None
    host, port = gateway.addresses.http.rsplit(":", 1)
    holder_reader, holder = await asyncio.open_connection(host, int(port))
    holder.write(_infer_head(len(_ROW)) + _ROW[:10])
    for _ in range(100):
        reader, writer = await asyncio.open_connection(host, int(port))
        status = await _infer(reader, writer)
        writer.close()
        if status == 503:
            return holder_reader, holder
        await asyncio.sleep(0.01)
    raise AssertionError("the slow request never took the place")


async def test_a_body_not_complete_in_time_is_408_and_gives_its_place_back(
    settings: ServerSettings, store: RegistryStore
) -> None:
    # One request in flight at most: a slow body holding its place would refuse all others
    # (each on a connection kept open: no shedding).
    settings = dataclasses.replace(
        settings, body_timeout=0.5, max_inflight=1, shed_connections=False
    )
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        await gateway.wait_loaded()
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        slow_reader, slow = await _hold_the_only_place(gateway)
        status, _ = await _answer(slow_reader)
        assert status == 408
        assert await _closed(slow_reader)
        slow.close()
        reader, writer = await asyncio.open_connection(host, int(port))
        assert await _infer(reader, writer) == 200
        writer.close()
    finally:
        await gateway.stop()


async def test_each_timeout_holds_when_the_other_is_much_longer(
    settings: ServerSettings, store: RegistryStore
) -> None:
    # A connection keeps one deadline timer that each head and body moves: a deadline moved
    # earlier than the timer (a body's after a long head timeout, the next head's after a
    # long body timeout) must still be kept, not wait for the other's.
    for head_seconds, body_seconds in ((60.0, 0.5), (0.5, 60.0)):
        limited = dataclasses.replace(
            settings,
            header_timeout=head_seconds,
            body_timeout=body_seconds,
            keep_alive_timeout=60.0,
        )
        async with running(limited, store) as gateway:
            assert gateway.addresses is not None
            host, port = gateway.addresses.http.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await _infer(reader, writer) == 200
            if body_seconds < head_seconds:
                writer.write(_infer_head(len(_ROW)) + _ROW[:10])  # a body that stalls
            else:
                writer.write(b"GET /v2/health/live HTTP/1.1\r\n")  # a head that stalls
            started = asyncio.get_running_loop().time()
            status, _ = await _answer(reader)
            assert status == 408
            assert asyncio.get_running_loop().time() - started < 10
            assert await _closed(reader)
            writer.close()


async def test_beyond_max_connections_the_longest_idle_goes_then_newcomers_get_503(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with _limited(settings, store, 3) as (_, host, port):
        clients = await _idle_connections(host, port, 3)

        # A fourth connection: the one idle the longest is closed, the others stay.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(LIVE)
        assert (await _answer(reader))[0] == 200
        assert await _closed(clients[0][0])
        clients[0][1].close()
        clients = [*clients[1:], (reader, writer)]

        # Every connection busy (a request waiting for its body): a newcomer gets 503 and
        # is closed, and the busy ones are served.
        for reader, writer in clients:
            await _awaiting_body(reader, writer)
        reader, writer = await asyncio.open_connection(host, port)
        status, head = await _answer(reader)
        assert status == 503 and b"connection: close" in head and b"retry-after: 1" in head
        assert await _closed(reader)
        writer.close()
        for reader, writer in clients:
            writer.write(b"{}")
            assert (await _answer(reader))[0] == 200
            writer.close()


async def test_a_connection_whose_next_request_waits_unread_is_not_closed_as_idle(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """Behind on reading (overload), the event loop still lists as idle a connection whose
    next request waits in the kernel: closing it for a newcomer would reset that request."""
    async with _limited(settings, store, 2) as (gateway, host, port):
        assert gateway._http is not None
        (first_reader, first_writer), (second_reader, second_writer) = await _idle_connections(
            host, port, 2
        )
        # The loop "behind": it reads nothing more from the first, whose request arrives.
        oldest = next(iter(gateway._http.config.http.idle._idle))
        oldest.transport.pause_reading()
        first_writer.write(LIVE)
        await asyncio.sleep(0.05)

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(LIVE)
        assert (await _answer(reader))[0] == 200
        assert await _closed(second_reader)  # the idle one made room
        oldest.transport.resume_reading()
        assert (await _answer(first_reader))[0] == 200  # the waiting request is served
        for w in (first_writer, second_writer, writer):
            w.close()


async def test_a_newcomer_refused_for_the_connection_limit_reads_its_503_not_a_reset(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """What it sent before the refusal is read and dropped, so the close is no reset."""
    async with _limited(settings, store, 1) as (_, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        await _awaiting_body(reader, writer)

        # Connected and sent before the server's loop runs again (no await in between): its
        # request waits in the kernel when the server refuses the connection.
        newcomer = socket.create_connection((host, port), timeout=10)
        newcomer.sendall(LIVE * 50)

        def received() -> bytes:
            with newcomer:
                data = b""
                while chunk := newcomer.recv(65536):
                    data += chunk
                return data

        answer = await asyncio.to_thread(received)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        writer.write(b"{}")
        assert (await _answer(reader))[0] == 200
        writer.close()


async def _awaiting_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Make the connection busy: a request whose (2-byte) body the server now awaits."""
    index = b"POST /v2/repository/index HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
    writer.write(index + b"Expect: 100-continue\r\n\r\n")
    continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert continued.startswith(b"HTTP/1.1 100")


async def test_a_connection_answered_before_its_body_came_still_closes_when_idle(
    settings: ServerSettings, store: RegistryStore
) -> None:
    settings = dataclasses.replace(
        settings, max_inflight=1, body_timeout=60.0, keep_alive_timeout=0.5, shed_connections=False
    )
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        await gateway.wait_loaded()
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        _, holder = await _hold_the_only_place(gateway)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_infer_head(100))
        assert (await _answer(reader))[0] == 503  # refused before its body came
        writer.write(b" " * 100)  # the body comes after the answer; then nothing
        assert await _closed(reader)
        writer.close()
        holder.close()
    finally:
        await gateway.stop()


async def test_pipelined_answers_come_whole_and_in_order_head_requests_too(
    settings: ServerSettings, store: RegistryStore
) -> None:
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        head = LIVE.replace(b"GET", b"HEAD")
        writer.write(LIVE + head + b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n" + LIVE)
        assert (await _answer(reader))[0] == 200
        # A HEAD answer has no body, whatever its content-length says.
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 405")
        assert (await _answer(reader))[0] == 404
        assert (await _answer(reader))[0] == 200
        writer.close()
    finally:
        await gateway.stop()


def test_only_short_paths_are_remembered() -> None:
    # The route caches are bounded in size too: long paths (up to a 64 KiB head each) are
    # routed afresh every time, so 1,024 of them cannot pin 64 MiB.
    from modelgate.gateway.frontends import http, http_admission

    long_path = "/v2/models/" + "m" * 4000 + "/infer"
    before = http._remembered_route.cache_info().currsize
    assert http._endpoint(long_path)[0] == "infer"
    assert http_admission._names_inference(long_path.encode())
    assert http._remembered_route.cache_info().currsize == before
    assert http._endpoint("/v2/models/short/infer")[0] == "infer"
    assert http._remembered_route.cache_info().currsize <= before + 1
    remembered = http_admission._remembered_inference_target.cache_info().currsize
    assert http_admission._names_inference(long_path.encode())
    assert http_admission._remembered_inference_target.cache_info().currsize == remembered


class _Recorder:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_an_answer_head_and_body_go_out_in_one_write() -> None:
    from modelgate.http_limits import OneWriteAnswer

    recorder = _Recorder()
    transport = OneWriteAnswer(recorder)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert recorder.writes == []  # the head waits for its body
    transport.write(b"{}")
    transport.write(b"more")
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]
    assert transport.get_extra_info("peername") == "extra peername"

    empty = _Recorder()
    transport = OneWriteAnswer(empty)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.write(b"")  # uvicorn writes an empty body too
    assert empty.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]

    # The application failed after its head: closing sends the head, as before.
    failed = _Recorder()
    transport = OneWriteAnswer(failed)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n")
    transport.close()
    assert failed.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"] and failed.closed

    # The client went while its (pipelined) request was served: uvicorn marks only the
    # newest request read as disconnected, so an older one's answer still comes, and
    # uvloop raises on a closed transport (an ERROR with a traceback per such client).
    gone = _Recorder()
    gone.closed = True
    transport = OneWriteAnswer(gone)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    transport.close()
    assert gone.writes == []


async def test_get_post_head_and_continue_answers_are_whole_on_one_keep_alive_connection(
    settings: ServerSettings, store: RegistryStore
) -> None:
    # Answers whose head waits for their body, and those that do not (HEAD, an interim
    # 100 Continue), one after the other on the same connection: none stalls.
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        index = b"POST /v2/repository/index HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
        for _ in range(2):
            writer.write(LIVE)
            assert (await _answer(reader))[0] == 200
            writer.write(LIVE.replace(b"GET", b"HEAD"))
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 405")
            writer.write(index + b"Expect: 100-continue\r\n\r\n")
            continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert continued.startswith(b"HTTP/1.1 100")
            writer.write(b"{}")
            assert (await _answer(reader))[0] == 200
            writer.write(index + b"\r\n{}")
            assert (await _answer(reader))[0] == 200
        writer.close()
    finally:
        await gateway.stop()
