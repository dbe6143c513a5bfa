"""How a stopping gRPC server lets go of its calls without losing one.

grpc.aio's `server.stop(grace)` lets the calls its Python handlers already run finish, but
gRPC core cancels (CANCELLED) every call it has received and not yet handed to Python
(grpc/grpc#41785). Under load there are many: the aio server takes one call per method at
a time from core, a few event-loop turns apart, so arriving calls queue inside core. So
before `stop`, the gate closes: inference calls that reach Python from then on are refused
with UNAVAILABLE at once (no decoding, no queueing), the ones already in finish, and the
loop, idle but for the refusals, empties core's queue. `stop` (GOAWAY; streams that open
after it are refused by the transport, which clients see as UNAVAILABLE) comes at a moment
when core's channelz counters show no call that Python does not hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from modelgate.gateway.core.errors import ErrorCode, InferenceError

log = logging.getLogger(__name__)

# How often a closing gate looks again at the calls in flight and in core.
_POLL_SECONDS = 0.002


class CallGate:
    """Counts the inference calls (unary, and each request on a stream) being served and the
    streams open, and refuses new inference calls once `close` began. One per gRPC server,
    used on its event loop only."""

    def __init__(self) -> None:
        self.open = True
        self.closing = asyncio.Event()  # set when `close` begins: streams end then
        self.inflight = 0
        self.streams = 0  # calls that stay open (streams): core counts them too
        self.server_id = 0  # the server's channelz id (0: unknown)

    def enter(self) -> None:
        """Take a call in, or raise UNAVAILABLE when the server is stopping; every `enter`
        that returns must be paired with one `leave`."""
        if not self.open:
            raise shutting_down()
        self.inflight += 1

    def leave(self) -> None:
        """The call taken in by `enter` was answered."""
        self.inflight -= 1

    async def close(self, deadline: float) -> None:
        """Refuse new calls from now on; return when the calls in flight have finished and
        core holds no call beyond the open streams (or at `deadline`, monotonic)."""
        self.open = False
        self.closing.set()
        while True:
            if not self.inflight:
                in_core = channelz_calls(self.server_id)
                if in_core is None or in_core <= self.streams:
                    return  # at once: a call arriving before `stop` would be left in core
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_SECONDS)
        log.warning("gRPC drain: calls still in flight or in core at the end of the grace")


def shutting_down() -> InferenceError:
    """What a call the stopping server does not take is told."""
    return InferenceError(
        ErrorCode.UNAVAILABLE, "server is shutting down; retry on another instance"
    )


def channelz_id(server: Any) -> int:
    """The channelz id of a grpc.aio server just created (0 when it cannot be told): the
    newest one in this process."""
    del server  # grpcio does not say; the newest server is the one just created
    from grpc._cython import cygrpc

    try:
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    except Exception:
        return 0
    return max((int(s["ref"]["serverId"]) for s in servers), default=0)


def channelz_calls(server_id: int) -> int | None:
    """Calls started and not yet ended in a server, by gRPC core's channelz (None when it
    cannot say): those its handlers run and those it holds for Python to take."""
    if not server_id:
        return None
    from grpc._cython import cygrpc  # channelz has no public Python API in grpcio itself

    try:
        data = json.loads(cygrpc.channelz_get_server(server_id))["server"]["data"]
    except Exception:
        return None
    ended = int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0))
    return int(data.get("callsStarted", 0)) - ended
