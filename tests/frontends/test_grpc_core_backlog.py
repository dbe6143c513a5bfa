"""What gRPC core does with calls the event loop has not taken yet, pinned on a real grpc.aio
server: the facts issue 14 ("shed, don't queue") ran into, kept as tests so that a grpcio
that behaves otherwise fails here and the workarounds can be revisited (docs/hardening.md,
"Admission control", "gRPC calls queue in grpc core").

grpc.aio takes calls from core one at a time; those that arrive faster wait in core's
pending queue, and core's backlog protector (`grpc.server.max_pending_requests`, its hard
limit) rejects the overflow. In src/core/server/server.cc (`RealRequestMatcher::
MatchRequest`) that rejection is RESOURCE_EXHAUSTED "Too many pending requests for this
server"; with grpcio 1.85.3 the client receives CANCELLED instead, and channelz counts the
call as started but never as ended (so `channelz_calls`, which the drain relies on, counts
every such call as still in the server; the drain's gate must see past them).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from modelgate.gateway.frontends.grpc_drain import CallGate, channelz_calls, channelz_id

_METHOD = "/backlog.Probe/Call"
_CALLS = 200


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, int]]:
    """A grpc.aio server on 127.0.0.1 whose handler holds the event loop for 2 ms per call,
    and whose core keeps at most one call waiting (soft limit 0, hard limit 1): every call
    arriving while one waits is rejected by core. Yields its address and channelz id."""

    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        time.sleep(0.002)  # the loop is busy: core holds what arrives meanwhile
        return request

    server = grpc.aio.server(
        options=[
            ("grpc.server.max_pending_requests", 0),
            ("grpc.server.max_pending_requests_hard_limit", 1),
        ]
    )
    server_id = channelz_id(server)
    handler = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("backlog.Probe", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", server_id
    finally:
        await server.stop(0)


def _rejections(statuses: collections.Counter[str]) -> int:
    """How many calls core rejected; the test is skipped on a grpcio whose core has no
    backlog protector (1.66, the oldest supported, queues every call)."""
    if not statuses["CANCELLED"]:
        pytest.skip(f"grpcio {grpc.__version__}: core rejected no call, even at limits 0 / 1")
    return statuses["CANCELLED"]


def _flood(address: str) -> collections.Counter[str]:
    """`_CALLS` calls sent at once (a sync channel: core sends them, not the event loop);
    how many ended with each status."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_METHOD)
        futures = [call.future(b"x", timeout=30) for _ in range(_CALLS)]
        return collections.Counter(f.code().name for f in futures)


async def test_core_rejects_calls_the_loop_has_not_taken_with_cancelled(
    slow_server: tuple[str, int],
) -> None:
    address, _ = slow_server
    statuses = await asyncio.to_thread(_flood, address)
    assert set(statuses) <= {"OK", "CANCELLED"}, statuses  # not RESOURCE_EXHAUSTED: docstring
    assert _rejections(statuses) > 0, statuses


async def test_channelz_counts_core_rejected_calls_as_still_in_the_server(
    slow_server: tuple[str, int],
) -> None:
    address, server_id = slow_server
    statuses = await asyncio.to_thread(_flood, address)
    in_server = channelz_calls(server_id)
    assert in_server is not None, "channelz unreadable"
    # Every call has ended, yet each one core rejected still counts as started, not ended.
    assert in_server == _rejections(statuses) > 0, (in_server, statuses)


async def test_a_drain_after_core_rejected_calls_does_not_wait_out_its_grace(
    slow_server: tuple[str, int],
) -> None:
    """Core's rejected calls stay counted in channelz; the drain's gate, with nothing in
    flight, must still see core as empty instead of holding refusals until its deadline."""
    address, server_id = slow_server
    statuses = await asyncio.to_thread(_flood, address)
    assert _rejections(statuses) > 0, statuses
    gate = CallGate(capacity=4)
    gate.server_id = server_id
    await asyncio.wait_for(gate.close(time.monotonic() + 60), 10)
    await gate.release()
