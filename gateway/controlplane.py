"""What runs once over several workers: the rollout guard, judging their traffic together.

Each worker serves and counts its own traffic; the supervisor's guard
reads the workers' merged metrics (gateway/metrics_view.py) once a second — requests by
outcome, the latency histogram, the shadow comparisons and which versions take traffic —
and archives a misbehaving canary or shadow once, through the registry, whose change the
supervisor then pushes to every worker (gateway/route_link.py). The workers run no guard
of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter
from prometheus_client.metrics_core import Metric

from modelgate.gateway.core.guard import Counts, Live, RolloutGuard, VersionRef
from modelgate.gateway.loop_thread import LoopThread
from modelgate.gateway.metrics import LATENCY_BUCKETS
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.client import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """A version as the merged metrics name it."""

    name: str
    version: str


@dataclass(slots=True)
class _Roles:
    primary: ServedVersion | None = None
    canaries: list[VersionRef] = field(default_factory=list)
    shadows: list[VersionRef] = field(default_factory=list)


class MergedSnapshot:
    """The guard's view of every worker's traffic at one moment (a `TrafficSnapshot`)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._roles: dict[str, _Roles] = {}
        outcomes: dict[ServedVersion, dict[str, int]] = {}
        cumulative: dict[ServedVersion, dict[float, float]] = {}
        agreement: dict[ServedVersion, dict[str, int]] = {}
        for family in families:
            for s in family.samples:
                labels = s.labels
                if "model" not in labels or "version" not in labels:
                    continue
                key = ServedVersion(labels["model"], labels["version"])
                if s.name == "modelgate_traffic_share_percent" and s.value > 0:
                    roles = self._roles.setdefault(key.name, _Roles())
                    if labels["role"] == "primary":
                        roles.primary = key
                    elif labels["role"] == "canary":
                        roles.canaries.append(key)
                    elif labels["role"] == "shadow":
                        roles.shadows.append(key)
                elif s.name == "modelgate_requests_total":
                    _add(outcomes.setdefault(key, {}), labels["outcome"], int(s.value))
                elif s.name == "modelgate_request_duration_seconds_bucket":
                    buckets = cumulative.setdefault(key, {})
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
                elif s.name == "modelgate_shadow_agreement_rows_total":
                    _add(agreement.setdefault(key, {}), labels["result"], int(s.value))
        self._counts = {
            key: Counts(
                outcomes.get(key, {}),
                _per_bucket(cumulative.get(key, {})),
                agreement.get(key, {}).get("agree", 0),
                agreement.get(key, {}).get("disagree", 0),
            )
            for key in outcomes.keys() | cumulative.keys() | agreement.keys()
        }

    def models(self) -> Iterable[str]:
        return list(self._roles)

    def live(self, model: str) -> Live | None:
        roles = self._roles.get(model)
        if roles is None or roles.primary is None:
            return None
        return Live(roles.primary, roles.canaries, roles.shadows)

    def counts(self, version: VersionRef) -> Counts:
        return self._counts.get(ServedVersion(version.name, version.version), Counts())


def _add(totals: dict[str, int], key: str, n: int) -> None:
    totals[key] = totals.get(key, 0) + n


def _per_bucket(cumulative: dict[float, float]) -> np.ndarray:
    """Prometheus's cumulative `le` buckets as counts per bucket over LATENCY_BUCKETS."""
    bounds = (*LATENCY_BUCKETS, float("inf"))
    running = np.array([cumulative.get(b, 0.0) for b in bounds], dtype=np.float64)
    return np.diff(running, prepend=0.0).astype(np.int64)


class MergedTraffic:
    """A `TrafficView` over merged metric families, read afresh at each check."""

    def __init__(self, families: Callable[[], list[Metric]]) -> None:
        self._families = families

    def read(self) -> MergedSnapshot:
        return MergedSnapshot(self._families())


def guard_wanted(settings: ServerSettings) -> bool:
    """Whether any model is guarded (otherwise the control plane has nothing to run)."""
    models = [settings.models, *settings.model_overrides.values()]
    return any(m.guard.guard_enabled for m in models)


class ControlPlane:
    """The supervisor's once-only duties, on a thread with its own event loop."""

    def __init__(
        self,
        settings: ServerSettings,
        registry: RegistryClient,
        families: Callable[[], list[Metric]],
        rollbacks: Counter,
    ) -> None:
        self._guard = RolloutGuard(MergedTraffic(families), registry, settings, rollbacks)
        self._thread = LoopThread("control-plane", self._guard.run)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancel the guard and wait for its thread."""
        self._thread.stop()
