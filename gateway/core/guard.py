"""The rollout guard: archives a canary or shadow that does worse than production.

Off by default; `guard_enabled` per model (see `GuardSettings`). Once a second it takes a
snapshot of each watched version's cumulative counters — the request outcomes and latency
histogram the metrics already keep, and the shadow comparison totals — and judges the
difference across a sliding window, so the request path pays nothing for it:

- a canary whose server-side error rate exceeds production's by more than
  `guard_max_error_rate`, whose client-error rate (invalid requests) exceeds production's by
  more than `guard_max_client_error_rate`, or whose p99 latency exceeds
  `guard_max_p99_ratio` times production's over the same window;
- a shadow whose label outputs disagree with production's on more than
  `guard_max_disagreement` of rows.

A version that trips a rule is moved to `archived` through the registry (actor
`modelgate-guard`, the rule and figures as the reason), and the gateway follows as it does
for any stage change. A client mistake is not the version's fault, so client errors do
not count towards the error rate; but requests are assigned to production or a canary
regardless of what they carry, so both see the same mix, and a canary refusing more of them
than production does (a renamed input, another feature count) is the version's fault. That
comparison needs production's own rate: it waits until production has seen
`guard_min_requests` in the window too.

What the guard reads comes through a `TrafficView`: `ServedTraffic` is one serving
process's own traffic; with several workers, the supervisor's guard reads all of theirs
together from the merged metrics (gateway/controlplane.py), and the workers run none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from prometheus_client import Counter

from modelgate.gateway.core.deployments import Deployment, Deployments
from modelgate.gateway.core.errors import ErrorCode
from modelgate.gateway.core.shadow import ShadowMirror
from modelgate.gateway.metrics import LATENCY_BUCKETS
from modelgate.gateway.settings import GuardSettings, ServerSettings
from modelgate.registry.client import RegistryClient
from modelgate.registry.types import Stage

log = logging.getLogger(__name__)

ACTOR = "modelgate-guard"
_SERVER_ERRORS = frozenset(
    code.value
    for code in (
        ErrorCode.INTERNAL,
        ErrorCode.UNAVAILABLE,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.RESOURCE_EXHAUSTED,
    )
)
_CLIENT_ERRORS = frozenset(code.value for code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND))


class VersionRef(Protocol):
    """A served version, as the guard names it (a `Deployment` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Live:
    """One model's versions taking traffic: production, its canaries and shadows."""

    primary: VersionRef
    canaries: list[VersionRef]
    shadows: list[VersionRef]


@dataclass(frozen=True, slots=True)
class Counts:
    """Cumulative counters of one version: requests by outcome (OK or an error code), the
    latency histogram's bucket counts over LATENCY_BUCKETS (+Inf last), and the rows its
    answers agreed or disagreed with production's (a shadow)."""

    outcomes: dict[str, int] = field(default_factory=dict)
    latency: np.ndarray = field(
        default_factory=lambda: np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
    )
    agree: int = 0
    disagree: int = 0


class TrafficSnapshot(Protocol):
    """What the guard reads at one check."""

    def models(self) -> Iterable[str]: ...
    def live(self, model: str) -> Live | None: ...
    def counts(self, version: VersionRef) -> Counts: ...


class TrafficView(Protocol):
    """Where the guard reads traffic from: a snapshot per check."""

    def read(self) -> TrafficSnapshot: ...


class ServedTraffic:
    """This process's own traffic: its deployments' counters and the shadow comparisons."""

    def __init__(self, deployments: Deployments, mirror: ShadowMirror) -> None:
        self._deployments = deployments
        self._mirror = mirror

    def read(self) -> ServedTraffic:
        return self  # read live: the counters are cumulative

    def models(self) -> Iterable[str]:
        return self._deployments.names()

    def live(self, model: str) -> Live | None:
        routes = self._deployments.routes(model)
        if routes is None or routes.primary is None:
            return None
        primary = routes.primary
        canaries: list[VersionRef] = [
            a.target for a in routes.split.arms if a.target is not primary
        ]
        return Live(primary, canaries, [d for d, _ in routes.shadows])

    def counts(self, version: VersionRef) -> Counts:
        assert isinstance(version, Deployment)
        outcomes: dict[str, int] = {}
        latency = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        for (_, outcome), observations in dict(version.metrics.outcomes).items():
            counts, _ = observations.snapshot()
            outcomes[outcome] = outcomes.get(outcome, 0) + int(counts.sum())
            latency += counts
        stats = self._mirror.stats(version.name, version.version)
        return Counts(outcomes, latency, stats.agree_rows, stats.disagree_rows)


@dataclass(frozen=True, slots=True)
class _Totals:
    """Cumulative counters of one version at one moment."""

    at: float
    requests: int
    errors: int
    client_errors: int
    latency: np.ndarray  # histogram bucket counts over LATENCY_BUCKETS (+Inf last)
    agree: int
    disagree: int

    def minus(self, earlier: _Totals) -> _Totals:
        return _Totals(
            self.at - earlier.at,
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.client_errors - earlier.client_errors,
            self.latency - earlier.latency,
            self.agree - earlier.agree,
            self.disagree - earlier.disagree,
        )

    def p99(self) -> float:
        """The upper bound of the bucket holding the 99th percentile (inf past the last)."""
        total = int(self.latency.sum())
        if total == 0:
            return 0.0
        index = int(np.searchsorted(np.cumsum(self.latency), 0.99 * total, side="left"))
        return LATENCY_BUCKETS[index] if index < len(LATENCY_BUCKETS) else float("inf")


class RolloutGuard:
    """Watches canaries and shadows of guarded models; archives the ones that misbehave."""

    def __init__(
        self,
        traffic: TrafficView,
        registry: RegistryClient,
        settings: ServerSettings,
        rollbacks: Counter,
    ) -> None:
        self._traffic = traffic
        self._registry = registry
        self._settings = settings
        self._rollbacks = rollbacks  # by model, version, rule
        self._history: dict[VersionRef, deque[_Totals]] = {}
        self._tripped: set[VersionRef] = set()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                for deployment, rule, reason in self.check(time.monotonic()):
                    await self._archive(deployment, rule, reason)
            except Exception:  # the guard's own failure must never stop it, nor serving
                log.exception("rollout guard check failed")

    def check(self, now: float) -> list[tuple[VersionRef, str, str]]:
        """Record a snapshot of every watched version; the versions to archive, and why."""
        verdicts = []
        watched: set[VersionRef] = set()
        traffic = self._traffic.read()
        for name in traffic.models():
            guard = self._settings.for_model(name).guard
            live = traffic.live(name) if guard.guard_enabled else None
            if live is None:
                continue
            primary, canaries, shadows = live.primary, live.canaries, live.shadows
            for deployment in [primary, *canaries, *shadows]:
                watched.add(deployment)
                self._record(deployment, traffic.counts(deployment), now, guard)
            production = self._window(primary)
            for canary in canaries:
                verdict = self._judge_canary(canary, production, guard)
                if verdict is not None:
                    verdicts.append((canary, *verdict))
            for shadow in shadows:
                verdict = self._judge_shadow(shadow, guard)
                if verdict is not None:
                    verdicts.append((shadow, *verdict))
        for gone in set(self._history) - watched:
            del self._history[gone]
        self._tripped &= watched  # archived versions leave the routes; forget them
        return [v for v in verdicts if v[0] not in self._tripped]

    def _record(
        self, deployment: VersionRef, counts: Counts, now: float, guard: GuardSettings
    ) -> None:
        requests = errors = client_errors = 0
        for outcome, n in counts.outcomes.items():
            requests += n
            if outcome in _SERVER_ERRORS:
                errors += n
            elif outcome in _CLIENT_ERRORS:
                client_errors += n
        totals = _Totals(
            now, requests, errors, client_errors, counts.latency, counts.agree, counts.disagree
        )
        history = self._history.setdefault(deployment, deque())
        history.append(totals)
        while len(history) > 2 and now - history[1].at >= guard.guard_window_seconds:
            history.popleft()

    def _window(self, deployment: VersionRef) -> _Totals | None:
        history = self._history.get(deployment)
        if not history or len(history) < 2:
            return None
        return history[-1].minus(history[0])

    def _judge_canary(
        self, canary: VersionRef, production: _Totals | None, guard: GuardSettings
    ) -> tuple[str, str] | None:
        window = self._window(canary)
        if window is None or window.requests < guard.guard_min_requests:
            return None
        error_rate = window.errors / window.requests
        baseline = 0.0  # production's own rate: an overload that hits both is no verdict
        if production is not None and production.requests >= guard.guard_min_requests:
            baseline = production.errors / production.requests
        if error_rate - baseline > guard.guard_max_error_rate:
            return "error_rate", (
                f"error rate {error_rate:.1%} over {window.requests} requests in "
                f"{window.at:.0f} s exceeds production's {baseline:.1%} by more than "
                f"{guard.guard_max_error_rate:.1%}"
            )
        if production is not None and production.requests >= guard.guard_min_requests:
            client_rate = window.client_errors / window.requests
            their_rate = production.client_errors / production.requests
            if client_rate - their_rate > guard.guard_max_client_error_rate:
                return "client_error_rate", (
                    f"client-error rate {client_rate:.1%} (invalid requests) over "
                    f"{window.requests} requests in {window.at:.0f} s exceeds production's "
                    f"{their_rate:.1%} on the same traffic by more than "
                    f"{guard.guard_max_client_error_rate:.1%}: its inputs or outputs may "
                    "differ from what clients send"
                )
            ours, theirs = window.p99(), production.p99()
            if theirs > 0 and ours > guard.guard_max_p99_ratio * theirs:
                return "p99_latency", (
                    f"p99 latency {ours * 1000:.1f} ms exceeds {guard.guard_max_p99_ratio:g}x "
                    f"production's {theirs * 1000:.1f} ms over {window.at:.0f} s"
                )
        return None

    def _judge_shadow(self, shadow: VersionRef, guard: GuardSettings) -> tuple[str, str] | None:
        window = self._window(shadow)
        if window is None:
            return None
        rows = window.agree + window.disagree
        if rows < guard.guard_min_requests:
            return None
        rate = window.disagree / rows
        if rate > guard.guard_max_disagreement:
            return "disagreement", (
                f"disagrees with production on {rate:.1%} of {rows} rows in {window.at:.0f} s "
                f"(limit {guard.guard_max_disagreement:.1%})"
            )
        return None

    async def _archive(self, deployment: VersionRef, rule: str, reason: str) -> None:
        name, version = deployment.name, deployment.version
        self._tripped.add(deployment)
        try:
            # The routes may be a poll behind: never archive a version that has meanwhile
            # been promoted (or moved anywhere but canary/shadow) by a person.
            current = await asyncio.to_thread(self._registry.get, name, int(version))
            if current.stage not in (Stage.CANARY, Stage.SHADOW):
                log.info("rollout guard: %s v%s is %s now, not archived", name, version,
                         current.stage.value)  # fmt: skip
                return
            log.warning("rollout guard: archiving %s v%s: %s", name, version, reason)
            await asyncio.to_thread(
                self._registry.transition,
                name,
                int(version),
                Stage.ARCHIVED,
                actor=ACTOR,
                reason=f"rollout guard ({rule}): {reason}",
            )
        except Exception as exc:
            log.error("rollout guard could not archive %s v%s: %s", name, version, exc)
            self._tripped.discard(deployment)  # try again on the next check
            return
        self._rollbacks.labels(name, version, rule).inc()
        # The registry follower sees the change within one poll interval.
