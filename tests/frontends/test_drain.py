"""A stopping gateway answers every HTTP request that reaches it: keep-alive clients are told
to go (`Connection: close`) while it still accepts, and a request that arrives on a
connection still open after the listener closed is answered 503, never dropped."""

from __future__ import annotations

import asyncio
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
