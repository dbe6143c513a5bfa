"""HTTP connections: request heads are bounded in size and time, idle keep-alive
connections close, and a stopping gateway answers every HTTP request that reaches it:
keep-alive clients are told to go (`Connection: close`) while it still accepts, and a
request arriving on a connection still open after the listener closed gets 503, never a
dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n\r\n"


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
