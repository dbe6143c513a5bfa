"""Shedding (`shed_connections`): at `max_inflight`, a refused HTTP request's connection
closes and the port stops accepting, so the kernel refuses new connections until half the
places are free; the port stays the same, and the connections waiting in the accept queue
are answered."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from conftest import running, sample, scrape
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

_ROW = b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[%s]}]}' % (
    b",".join([b"0.5"] * 8)
)
_HEAD = (
    b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_ROW)
)
_REQUEST = _HEAD + _ROW

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and lower-cased head of one answer, its body read."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).lower()
    if b"transfer-encoding: chunked" in head:
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 10)
    return int(head.split(b" ", 2)[1]), head


async def _holding_places(host: str, port: int, count: int) -> list[Connection]:
    """`count` connections whose inference request holds a place, its body not complete.
    Each from an address of its own: one client's arriving bodies may hold only a quarter
    of the places (the slow-body rule)."""
    return [await _holding_a_place(host, port, f"127.0.0.{2 + n}") for n in range(count)]


async def _holding_a_place(host: str, port: int, source: str) -> Connection:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(_HEAD + _ROW[:10])
    await writer.drain()
    return reader, writer


async def _served_after_shedding(host: str, port: int) -> int:
    """The status of a request on a new connection, once the port accepts again."""
    for _ in range(500):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            await asyncio.sleep(0.01)
            continue
        writer.write(_REQUEST)
        status = (await _answer(reader))[0]
        writer.close()
        return status
    raise AssertionError("the port never accepted again")


def _address(gateway: Gateway) -> tuple[str, int]:
    assert gateway.addresses is not None
    host, port = gateway.addresses.http.rsplit(":", 1)
    return host, int(port)


@pytest.fixture
def two_places(settings: ServerSettings) -> ServerSettings:
    return dataclasses.replace(settings, max_inflight=2, shed_connections=True)


async def test_at_capacity_the_port_refuses_connections_until_half_the_places_are_free(
    two_places: ServerSettings, store: RegistryStore
) -> None:
    async with running(two_places, store) as gateway:
        host, port = _address(gateway)
        held = await _holding_places(host, port, 2)
        await asyncio.sleep(0.05)  # both heads read: every place taken

        # Refused at capacity: 503, Retry-After, and the connection closes.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_REQUEST)
        status, head = await _answer(reader)
        assert status == 503 and b"retry-after: 1" in head and b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # The kernel refuses new connections: nothing reaches the gateway.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        # Connections already open are served as before: a place comes free...
        (first_reader, first), second = held
        first.write(_ROW[10:])
        assert (await _answer(first_reader))[0] == 200
        # ...which makes half the places free: the same port accepts again.
        assert await _served_after_shedding(host, port) == 200
        assert _address(gateway) == (host, port)
        second[1].write(_ROW[10:])
        assert (await _answer(second[0]))[0] == 200
        for _, w in held:
            w.close()

        metrics = await scrape(gateway)
        assert sample(metrics, "modelgate_http_shedding_total") == 1
        assert sample(metrics, "modelgate_http_shedding_seconds_total") > 0
        assert sample(metrics, "modelgate_requests_refused_total", reason="inflight") == 1


async def test_connections_the_kernel_accepted_when_shedding_began_are_answered(
    two_places: ServerSettings, store: RegistryStore
) -> None:
    """Not listening resets the connections waiting in the accept queue (their requests
    may be sent already): the queue is taken first, and they are answered."""
    async with running(two_places, store) as gateway:
        host, port = _address(gateway)
        assert gateway._http is not None
        # Connected and sent before the gateway's loop runs again (no await in between):
        # the connection waits in the accept queue when shedding begins.
        waiting = socket.create_connection((host, port), timeout=10)
        waiting.sendall(_REQUEST)
        gateway._http.shed()

        def received() -> bytes:
            with waiting:
                return waiting.recv(65536)

        answer = await asyncio.to_thread(received)
        assert answer.startswith(b"HTTP/1.1 200"), answer  # a place was free: served
        # Nothing is in flight: the port accepts again.
        assert await _served_after_shedding(host, port) == 200


async def test_a_gateway_stops_cleanly_while_shedding(
    two_places: ServerSettings, store: RegistryStore
) -> None:
    async with running(two_places, store) as gateway:
        host, port = _address(gateway)
        held = await _holding_places(host, port, 2)
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_REQUEST)
        assert (await _answer(reader))[0] == 503
        writer.close()
        assert gateway._http is not None and gateway._http.shedding
        stopping = asyncio.create_task(gateway.stop())
        await asyncio.sleep(0.1)
        # The held requests complete during the drain and are answered.
        for held_reader, held_writer in held:
            held_writer.write(_ROW[10:])
            assert (await _answer(held_reader))[0] == 200
            held_writer.close()
        await asyncio.wait_for(stopping, 30)
    # Places came free during the drain, but the port did not listen again.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)


async def test_with_shedding_off_a_refused_connection_stays_open_and_the_port_accepts(
    two_places: ServerSettings, store: RegistryStore
) -> None:
    off = dataclasses.replace(two_places, shed_connections=False)
    async with running(off, store) as gateway:
        host, port = _address(gateway)
        held = await _holding_places(host, port, 2)
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(2):  # the same connection, kept open
            writer.write(_REQUEST)
            status, head = await _answer(reader)
            assert status == 503 and b"connection: close" not in head
        other_reader, other = await asyncio.open_connection(host, port)
        other.write(_REQUEST)
        assert (await _answer(other_reader))[0] == 503
        for w in (writer, other, *(w for _, w in held)):
            w.close()
        assert sample(await scrape(gateway), "modelgate_http_shedding_total") == 0
