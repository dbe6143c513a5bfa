"""Admission control at the front door: shed, don't queue.

Every inference request holds one place from before its body is read (HTTP) or its message
decoded (gRPC) until it is answered, so decoding, queueing and computing all count. When
every place is taken the request is refused at once with RESOURCE_EXHAUSTED (HTTP 503 with
Retry-After): under overload a quick refusal a client can retry elsewhere beats an answer
that comes after the client gave up, and memory stays bounded whatever the offered load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from modelgate.gateway.core.errors import ErrorCode, InferenceError

# Seconds a refused client is asked to wait before retrying (HTTP Retry-After).
RETRY_AFTER_SECONDS = 1


class Admission:
    """Counts the inference requests in flight in one process and refuses beyond `limit`.

    Both front ends share one; with `grpc_workers="thread"` they call it from two threads,
    hence the lock (uncontended, it costs less than the request's own bookkeeping).
    """

    def __init__(self, limit: int, on_refuse: Callable[[], object] | None = None) -> None:
        self.limit = limit
        self._inflight = 0
        self._lock = threading.Lock()
        self._on_refuse = on_refuse

    @property
    def inflight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._inflight

    def try_enter(self) -> bool:
        """Take a place if one is free; False (and nothing taken) when all are in use."""
        with self._lock:
            if self._inflight >= self.limit:
                return False
            self._inflight += 1
            return True

    @property
    def refusal(self) -> str:
        """What a refused client is told."""
        return f"server at capacity ({self.limit} requests in flight); retry later"

    def refuses(self) -> bool:
        """Whether a request arriving now is refused (every place taken), the refusal then
        counted as `enter` counts its own: for a front end that answers a refusal itself,
        sooner and more cheaply than a request that would call `enter`."""
        if self._inflight < self.limit:
            return False
        if self._on_refuse is not None:
            self._on_refuse()
        return True

    def enter(self) -> None:
        """Take a place, or raise RESOURCE_EXHAUSTED at once; every `enter` that returns
        must be paired with one `leave`."""
        if not self.try_enter():
            if self._on_refuse is not None:
                self._on_refuse()
            raise InferenceError(ErrorCode.RESOURCE_EXHAUSTED, self.refusal)

    def leave(self) -> None:
        """Give back the place taken by `enter`."""
        with self._lock:
            self._inflight -= 1
