"""How a stopping gRPC server lets go of its calls without losing one.

grpc.aio's `server.stop(grace)` lets the calls its Python handlers already run finish, but
gRPC core cancels (CANCELLED) every call it has received and not yet handed to Python
(grpc/grpc#41785; the fix, grpc/grpc#41786, is not in grpcio 1.85.3 either). Under load
there are many: the aio server takes one call at a time from core, a few event-loop turns
apart, so arriving calls queue inside core. Core also cancels every call that reaches it
after `stop` began and before the client has read the GOAWAY that `stop` sends
(`Server::CallData::StartNewRpc` kills calls once shutdown was called), and grpcio has no
other way to send GOAWAY. So `drain` stops in three steps:

1. Refusing. The gate closes: inference calls that reach Python from then on are refused
   with UNAVAILABLE at once (no decoding, no queueing); the ones in flight finish.
2. Holding. Once none is in flight, refusals are held back instead (up to `capacity`
   calls): a caller that waits for its answer before calling again sends nothing more,
   and the loop, idle but for taking calls, empties core's queue. After `_HOLD_SECONDS`
   (callers backing off that long after an earlier refusal have called again and wait
   too), this step ends at the first moment core's channelz counters show no call that
   Python does not hold, beyond those core rejected earlier: core counts a call it rejected
   for its pending-request backlog as started and never as ended (grpcio 1.85.3; see
   tests/frontends/test_grpc_core_backlog.py). With the loop free, a call really waiting
   in core is taken within a turn, so the fewest calls the counters showed beyond Python's
   while holding are such leftovers, not calls core holds.
3. Stopping. `stop` begins (GOAWAY on every connection; the listener closes); then the held
   calls are answered UNAVAILABLE. On each connection their answers follow the GOAWAY, so
   their callers' next calls go to a new connection, which the closed port refuses
   (UNAVAILABLE), instead of reaching a core that would cancel them.

What stays open: a call that a client sends without waiting for an earlier answer, in the
instant between the last look at the counters and the client reading the GOAWAY, is still
cancelled; only a core that answers such calls UNAVAILABLE (grpc/grpc#41786) or sends
GOAWAY before shutting down would close that (docs/hardening.md has the figures).

Channelz has no public Python API in grpcio: the counters come from the private
`grpc._cython.cygrpc`. When they cannot be read, holding lasts `_BLIND_HOLD_SECONDS`
instead and `stop` is taken to have begun after one event-loop turn (one log line says so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, NoReturn

from modelgate.gateway.core.errors import ErrorCode, InferenceError

log = logging.getLogger(__name__)

# How often a closing gate looks again at the calls in flight and in core.
_POLL_SECONDS = 0.002
# How long refusals are held at least: long enough for callers that back off this long
# after a refusal to call again and be held too, so that none of them is sending at `stop`.
_HOLD_SECONDS = 0.25
# Without channelz: how long refusals are held for core's queue to empty.
_BLIND_HOLD_SECONDS = 0.25
# How long `stop` may take to close its listener (the sign it has sent GOAWAY) before the
# held calls are answered anyway.
_STOP_BEGIN_SECONDS = 1.0


class CallGate:
    """Counts the inference calls (unary, and each request on a stream) being served and the
    streams open, and refuses new inference calls once `close` began. One per gRPC server,
    used on its event loop only. `capacity`: how many refusals it may hold back at once
    (calls grpcio takes beyond those: see `drain`)."""

    def __init__(self, capacity: int = 0) -> None:
        self.open = True
        self.closing = asyncio.Event()  # set when `close` begins: streams end then
        self.inflight = 0
        self.streams = 0  # calls that stay open (streams): core counts them too
        self.server_id = 0  # the server's channelz id (0: unknown)
        self._capacity = capacity
        self._holding = False
        self._held = 0
        self._released = asyncio.Event()

    def enter(self) -> None:
        """Take a call in, or raise UNAVAILABLE when the server is stopping; every `enter`
        that returns must be paired with one `leave`."""
        if not self.open:
            raise shutting_down()
        self.inflight += 1

    def leave(self) -> None:
        """The call taken in by `enter` was answered."""
        self.inflight -= 1

    async def refuse(self) -> NoReturn:
        """Raise UNAVAILABLE for a call the closed gate does not take: at once, or while the
        gate holds refusals, once `stop` has sent GOAWAY."""
        if self._holding and self._held < self._capacity:
            self._held += 1
            try:
                await self._released.wait()
            finally:
                self._held -= 1
        raise shutting_down()

    async def close(self, deadline: float) -> None:
        """Refuse new calls from now on; return when the calls in flight have finished and
        core holds no call beyond the open streams and the held refusals (or at `deadline`,
        monotonic)."""
        self.open = False
        self.closing.set()
        blind_until: float | None = None
        held_since: float | None = None
        rejected: int | None = None  # calls core rejected earlier (module docstring, step 2)
        while True:
            if not self.inflight:
                self._holding = True
                held_since = held_since or time.monotonic()
                in_core = channelz_calls(self.server_id)
                held_enough = time.monotonic() >= min(held_since + _HOLD_SECONDS, deadline)
                if in_core is not None:
                    beyond = in_core - self.streams - self._held
                    rejected = beyond if rejected is None else min(rejected, beyond)
                    if held_enough and beyond <= max(0, rejected):
                        return  # at once: a call arriving before `stop` would be left in core
                if in_core is None:
                    blind_until = blind_until or _blind_hold_end()
                    if time.monotonic() >= blind_until:
                        return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_SECONDS)
        log.warning("gRPC drain: calls still in flight or in core at the end of the grace")

    async def release(self) -> None:
        """Answer the held refusals; call once `stop` has begun."""
        self._holding = False
        self._released.set()


def _blind_hold_end() -> float:
    log.info("gRPC drain: core's call counters unreadable; holding refusals for a fixed time")
    return time.monotonic() + _BLIND_HOLD_SECONDS


async def drain(server: Any, gate: CallGate, deadline: float) -> None:
    """Stop a grpc.aio `server` whose inference calls pass `gate`, by `deadline` (monotonic):
    refuse, hold, stop, then answer the held calls (see the module docstring)."""
    await gate.close(deadline)
    stopping = asyncio.ensure_future(server.stop(max(0.0, deadline - time.monotonic())))
    await _stop_begun(stopping, gate.server_id)
    await gate.release()
    await stopping


async def _stop_begun(stopping: Awaitable[None], server_id: int) -> None:
    """Return once `stopping` has begun core's shutdown (GOAWAY queued on every connection):
    core closes the listener in the same step, which channelz shows."""
    await asyncio.sleep(0)  # grpc.aio's `stop` shuts core down in its first step
    until = time.monotonic() + _STOP_BEGIN_SECONDS
    while True:
        listening = channelz_listening(server_id)
        if listening is None:
            log.info("gRPC drain: core's listener state unreadable; taking `stop` as begun")
            return
        if not listening or time.monotonic() >= until:
            return
        await asyncio.sleep(_POLL_SECONDS)


def shutting_down() -> InferenceError:
    """What a call the stopping server does not take is told."""
    return InferenceError(
        ErrorCode.UNAVAILABLE, "server is shutting down; retry on another instance"
    )


def channelz_id(server: Any) -> int:
    """The channelz id of a grpc.aio server just created (0 when it cannot be told): the
    newest one in this process."""
    del server  # grpcio does not say; the newest server is the one just created
    try:
        from grpc._cython import cygrpc

        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        return max((int(s["ref"]["serverId"]) for s in servers), default=0)
    except Exception:
        return 0


def _channelz_server(server_id: int) -> dict[str, Any] | None:
    """The server's channelz entry (None when it cannot be read)."""
    if not server_id:
        return None
    try:
        from grpc._cython import cygrpc  # channelz has no public Python API in grpcio itself

        entry = json.loads(cygrpc.channelz_get_server(server_id))["server"]
        return entry if isinstance(entry, dict) and isinstance(entry.get("data"), dict) else None
    except Exception:
        return None


def channelz_calls(server_id: int) -> int | None:
    """Calls started and not yet ended in a server, by gRPC core's channelz (None when it
    cannot say): those its handlers run and those it holds for Python to take."""
    entry = _channelz_server(server_id)
    if entry is None:
        return None
    data = entry["data"]
    try:
        ended = int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0))
        return int(data.get("callsStarted", 0)) - ended
    except (TypeError, ValueError):
        return None


def channelz_listening(server_id: int) -> bool | None:
    """Whether the server still has a listening socket, by channelz (None when it cannot
    say)."""
    entry = _channelz_server(server_id)
    return None if entry is None else bool(entry.get("listenSocket"))
