"""Shadow traffic: mirror live requests to shadow versions and compare, never answer.

A mirrored copy is queued in the shadow version's own micro-batcher once the primary has its
answer, and the comparison runs in a callback when the shadow's batch completes: the
primary response is never delayed, changed or failed by its shadows. Each shadow version
has a bound on copies in flight; beyond it (or when its queue is full) copies are dropped
and counted, so a slow shadow costs nothing but its own CPU.

Comparison, per output both versions have: label-like outputs (integers, booleans, strings:
classifier predictions) count rows that agree or disagree; scores (floats) record each row's
largest absolute difference.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from modelgate.gateway.core.deployments import Deployment, Shadows
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.types import Tensor
from modelgate.gateway.core.validation import model_feeds
from modelgate.gateway.metrics import Metrics

log = logging.getLogger(__name__)

Outputs = list[np.ndarray]


@dataclass
class ShadowStats:
    """Running totals for one shadow version (the rollout guard reads them)."""

    compared: int = 0
    dropped: int = 0
    errors: int = 0
    agree_rows: int = 0
    disagree_rows: int = 0
    inflight: int = 0


class ShadowMirror:
    """Sends sampled copies of live requests to shadow versions and compares the answers."""

    def __init__(self, metrics: Metrics, max_inflight: int) -> None:
        self._metrics = metrics
        self._max_inflight = max_inflight
        self._stats: dict[tuple[str, str], ShadowStats] = {}
        # Mirrors come from every serving loop (gRPC may run on its own, in a thread).
        self._lock = threading.Lock()

    def stats(self, name: str, version: str) -> ShadowStats:
        key = (name, version)
        found = self._stats.get(key)
        if found is None:
            found = self._stats.setdefault(key, ShadowStats())
        return found

    def mirror(
        self,
        inputs: list[Tensor],
        primary: Deployment,
        primary_outputs: Outputs,
        shadows: Shadows,
    ) -> None:
        """Queue a copy of a request the primary has answered for each sampled shadow."""
        for shadow, share in shadows:
            if share < 100.0 and random.random() * 100.0 >= share:
                continue
            stats = self.stats(shadow.name, shadow.version)
            if stats.inflight >= self._max_inflight:
                self._dropped(shadow, stats)
                continue
            model, batcher = shadow.model, shadow.batcher
            if model is None or batcher is None:
                continue
            started = time.monotonic()
            try:
                feeds, rows = model_feeds(inputs, model)
                future = batcher.submit(feeds, rows, None)
            except InferenceError as exc:
                if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
                    self._dropped(shadow, stats)
                else:
                    self._failed(shadow, stats, exc)
                continue
            with self._lock:
                stats.inflight += 1
            names = (primary.model.output_names, model.output_names) if primary.model else None
            if names is None:
                continue
            future.add_done_callback(
                functools.partial(self._compare, shadow, stats, names, primary_outputs, started)
            )

    def _compare(
        self,
        shadow: Deployment,
        stats: ShadowStats,
        names: tuple[list[str], list[str]],
        primary_outputs: Outputs,
        started: float,
        done: asyncio.Future[Outputs],
    ) -> None:
        with self._lock:
            stats.inflight -= 1
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._failed(shadow, stats, error)
            return
        m = self._metrics
        m.shadow_latency.labels(shadow.name, shadow.version).observe(time.monotonic() - started)
        primary_names, shadow_names = names
        shadow_index = {name: i for i, name in enumerate(shadow_names)}
        for i, name in enumerate(primary_names):
            j = shadow_index.get(name)
            if j is None:
                continue
            ours, theirs = primary_outputs[i], done.result()[j]
            if ours.shape != theirs.shape or ours.ndim == 0:
                continue
            rows = ours.shape[0]
            ours, theirs = ours.reshape(rows, -1), theirs.reshape(rows, -1)
            if ours.dtype.kind in "fc" and theirs.dtype.kind in "fc":
                diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max(axis=1)
                histogram = m.shadow_abs_diff.labels(shadow.name, shadow.version, name)
                for value in diff.tolist():
                    histogram.observe(value)
            else:
                agree = int(np.count_nonzero((ours == theirs).all(axis=1)))
                with self._lock:
                    stats.agree_rows += agree
                    stats.disagree_rows += rows - agree
                counter = m.shadow_agreement
                counter.labels(shadow.name, shadow.version, name, "agree").inc(agree)
                counter.labels(shadow.name, shadow.version, name, "disagree").inc(rows - agree)
        with self._lock:
            stats.compared += 1
        m.shadow_requests.labels(shadow.name, shadow.version, "compared").inc()

    def _dropped(self, shadow: Deployment, stats: ShadowStats) -> None:
        with self._lock:
            stats.dropped += 1
        self._metrics.shadow_requests.labels(shadow.name, shadow.version, "dropped").inc()

    def _failed(self, shadow: Deployment, stats: ShadowStats, error: BaseException) -> None:
        with self._lock:
            stats.errors += 1
        self._metrics.shadow_requests.labels(shadow.name, shadow.version, "error").inc()
        log.debug("shadow %s v%s failed: %s", shadow.name, shadow.version, error)
