"""The metrics port is bounded like the data port: a connection that sends no request is
closed after `header_timeout`, a slowloris head gets 408, and a scrape is still answered."""

from __future__ import annotations

import asyncio
import dataclasses

from conftest import sample, scrape
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore


async def test_the_metrics_port_closes_silent_and_slow_connections(
    settings: ServerSettings, store: RegistryStore
) -> None:
    settings = dataclasses.replace(settings, header_timeout=0.5)
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        await gateway.wait_loaded()
        assert gateway.addresses is not None
        host, port = gateway.addresses.metrics.rsplit(":", 1)
        silent_reader, silent = await asyncio.open_connection(host, int(port))
        slow_reader, slow = await asyncio.open_connection(host, int(port))
        slow.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n")
        # Scrapes are served meanwhile, with the gateway's metrics as before.
        assert (
            sample(await scrape(gateway), "modelgate_model_loaded", model="classifier", version="1")
            == 1
        )
        head = await asyncio.wait_for(slow_reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408")
        for reader in (silent_reader, slow_reader):
            await asyncio.wait_for(reader.read(), 10)  # until the server closes it
            assert reader.at_eof()
        silent.close()
        slow.close()
    finally:
        await gateway.stop()
