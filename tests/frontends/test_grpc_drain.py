"""The gRPC drain's gate when gRPC core's counters cannot be read (channelz comes from
grpcio's private cygrpc): it fails safe, holding refusals a fixed time, with one log line."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.frontends.grpc_drain import CallGate, channelz_calls, channelz_listening


async def test_without_core_counters_refusals_are_held_briefly_then_answered_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert channelz_calls(0) is None and channelz_listening(0) is None
    gate = CallGate(capacity=2)  # server_id 0: no counters to read
    with caplog.at_level(logging.INFO, logger="modelgate.gateway.frontends.grpc_drain"):
        closing = asyncio.ensure_future(gate.close(time.monotonic() + 30))
        await asyncio.sleep(0)
        refusals = [asyncio.ensure_future(gate.refuse()) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert [r.done() for r in refusals] == [False, False, True]  # beyond capacity: at once
        await asyncio.wait_for(closing, 5)  # a fixed hold, not the whole grace
        assert not any(r.done() for r in refusals[:2])
        await gate.release()
        for refusal in refusals:
            with pytest.raises(InferenceError) as refused:
                await refusal
            assert refused.value.code == ErrorCode.UNAVAILABLE
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
