"""gRPC connections: at most `max_connections`, those beyond are closed as they come, and a
connection that never completes its HTTP/2 handshake is closed after `header_timeout`;
established connections keep being served."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc

from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

_SETTINGS_FRAME = 0x04


async def _greeting(reader: asyncio.StreamReader) -> bytes:
    """The first bytes the server sends on a connection (b"" when it closes it first)."""
    return await asyncio.wait_for(reader.read(9), 10)


async def test_grpc_connections_beyond_the_limit_are_closed_and_silent_ones_time_out(
    settings: ServerSettings, store: RegistryStore
) -> None:
    settings = dataclasses.replace(settings, max_connections=2, header_timeout=1.0)
    gateway = Gateway(settings, store)
    await gateway.start()
    try:
        assert gateway.addresses is not None
        host, port = gateway.addresses.grpc.rsplit(":", 1)
        async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live

            # A connection that sends nothing takes the second place: greeted, and closed
            # once the handshake timeout passes.
            silent_reader, silent = await asyncio.open_connection(host, int(port))
            greeting = await _greeting(silent_reader)
            assert greeting[3] == _SETTINGS_FRAME
            # A third is closed at once, never greeted.
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await _greeting(reader) == b""
            writer.close()
            # The established connection is still served.
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live
            await asyncio.wait_for(silent_reader.read(), 10)  # closed by the server
            assert silent_reader.at_eof()
            silent.close()
    finally:
        await gateway.stop()
