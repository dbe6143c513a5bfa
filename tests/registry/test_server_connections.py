"""The registry server's connections are bounded like the gateway's: beyond the limit, the
connection idle the longest is closed for a newcomer and the others are served."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelgate.http_limits import ReadLimits
from modelgate.registry.server import RegistryServer, build_app
from modelgate.registry.store import RegistryStore

LIST = b"GET /api/v1/models HTTP/1.1\r\nHost: registry\r\n\r\n"


async def _status(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 10)
    return int(head.split(b" ", 2)[1])


async def test_beyond_its_connection_limit_the_registry_closes_the_longest_idle(
    tmp_path: Path,
) -> None:
    app = build_app(RegistryStore(tmp_path / "store", create=True), tmp_path / "incoming")
    limits = ReadLimits(head_bytes=65536, head_timeout=10.0, body_timeout=10.0, connections=2)
    server = RegistryServer(app, "127.0.0.1", 0, limits, keep_alive=60.0)
    url = await server.start()
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        clients = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(LIST)
            assert await _status(reader) == 200
            clients.append((reader, writer))
        (first, first_writer), *rest = clients
        await asyncio.wait_for(first.read(), 10)  # closed by the server for the third
        assert first.at_eof()
        first_writer.close()
        for reader, writer in rest:
            writer.write(LIST)
            assert await _status(reader) == 200
            writer.close()
    finally:
        await server.stop()
