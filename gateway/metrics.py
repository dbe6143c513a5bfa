"""Every Prometheus metric modelgate exports, defined once.

Metrics live in a `CollectorRegistry` owned by the server (no module-level state), so tests
and several servers in one process never share counters. prometheus-client does the
exposition; what is recorded per request (request counts, end-to-end latency, queue wait)
goes through `Observations`: a lock-free append on the request path, folded into histogram
counts in bulk with NumPy, because prometheus-client's per-call locking costs more than the
rest of the request's bookkeeping on the serving budget of a few tens of microseconds.
Per-batch metrics use prometheus-client's own types directly.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from modelgate.gateway.core.errors import ErrorCode

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Observations:
    """A histogram fed from any thread without a lock: `observe` appends to a deque (atomic
    under the GIL), and pending values are folded into bucket counts in bulk, every
    `fold_every` values and whenever the metrics are read. A small `fold_every` keeps the
    pending floats few: thousands of them per histogram cost the serving path more, in cache
    misses, than the folds they save."""

    def __init__(self, bounds: tuple[float, ...], fold_every: int = 256) -> None:
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._pending: deque[float] = deque()
        self._fold_every = fold_every
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()  # between folds only, never on `observe`

    def observe(self, value: float) -> None:
        pending = self._pending
        pending.append(value)
        if len(pending) >= self._fold_every:
            self.fold()

    def fold(self) -> None:
        """Move pending values into the bucket counts (vectorised)."""
        with self._lock:
            pending = self._pending
            n = len(pending)
            if n == 0:
                return
            values = np.fromiter((pending.popleft() for _ in range(n)), np.float64, n)
            # Prometheus buckets are `le`: a value equal to a bound belongs to that bucket.
            index = np.searchsorted(self._bounds, values, side="left")
            self._counts += np.bincount(index, minlength=len(self._counts))
            self._sum += float(values.sum())

    def snapshot(self) -> tuple[np.ndarray, float]:
        """Per-bucket counts (the last is +Inf) and the sum, after folding what is pending."""
        self.fold()
        with self._lock:
            return self._counts.copy(), self._sum


@dataclass(frozen=True, slots=True)
class ExecutionTotals:
    """What `Executions` counted: successful model runs, the rows and requests they
    answered, and per batch size (in rows) the runs and their seconds."""

    runs: int
    rows: int
    requests: int
    request_seconds: float  # each request counted with the run of its batch
    by_size: dict[int, tuple[int, float]]


class Executions:
    """Successful model runs, fed from any thread without a lock like `Observations`, and
    folded into totals per batch size when read (the statistics extension's batch_stats).

    At most `max_sizes` distinct batch sizes are itemised, so that requests of ever new
    sizes cannot grow it without bound; runs of further sizes count in the totals only.
    """

    def __init__(self, fold_every: int = 256, max_sizes: int = 1024) -> None:
        self._pending: deque[tuple[int, int, float]] = deque()
        self._fold_every = fold_every
        self._max_sizes = max_sizes
        self._runs = 0
        self._rows = 0
        self._requests = 0
        self._request_seconds = 0.0
        self._by_size: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()  # between folds only, never on `observe`

    def observe(self, rows: int, requests: int, seconds: float) -> None:
        """Count one successful run of `rows` rows for `requests` requests."""
        pending = self._pending
        pending.append((rows, requests, seconds))
        if len(pending) >= self._fold_every:
            self.fold()

    def fold(self) -> None:
        """Move pending runs into the totals."""
        with self._lock:
            pending = self._pending
            by_size = self._by_size
            for _ in range(len(pending)):
                rows, requests, seconds = pending.popleft()
                self._runs += 1
                self._rows += rows
                self._requests += requests
                self._request_seconds += requests * seconds
                runs, total = by_size.get(rows, (0, 0.0))
                if runs or len(by_size) < self._max_sizes:
                    by_size[rows] = (runs + 1, total + seconds)

    def snapshot(self) -> ExecutionTotals:
        """The totals, after folding what is pending."""
        self.fold()
        with self._lock:
            return ExecutionTotals(
                self._runs, self._rows, self._requests, self._request_seconds, dict(self._by_size)
            )


def _buckets(bounds: tuple[float, ...], counts: np.ndarray) -> list[tuple[str, float]]:
    """Prometheus' cumulative (le, count) pairs."""
    labels = [*(repr(float(b)) for b in bounds), "+Inf"]
    return list(zip(labels, np.cumsum(counts).tolist(), strict=True))


class Metrics:
    """The gateway's metric families, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._versions: list[VersionMetrics] = []
        self._versions_lock = threading.Lock()
        r.register(_ObservationsCollector(self))
        self.queue_depth = Gauge(
            "modelgate_queue_depth_rows",
            "Rows waiting in the micro-batcher.",
            ["model", "version"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "modelgate_model_loaded",
            "1 while a model version is loaded and serving, 0 after it was unloaded.",
            ["model", "version"],
            registry=r,
        )
        self.model_state = Gauge(
            "modelgate_model_state",
            "1 for the state each model is in, 0 for the others: serving (requests that name "
            "no version are answered), loading (its production version's first load), failed "
            "(its production version failed to load and is retried), no_production.",
            ["model", "state"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "modelgate_model_load_failures",
            "Model versions that failed to load.",
            ["model", "version"],
            registry=r,
        )
        self.webhook_urls_refused = Counter(
            "modelgate_webhook_urls_refused",
            "Drift events not sent to a version's retrain_webhook tag because its URL is not "
            "on the webhook allow-list (webhook_allowed_urls).",
            ["model"],
            registry=r,
        )
        self.registry_polls = Counter(
            "modelgate_registry_polls",
            "Registry change checks by outcome (ok, error: the gateway keeps serving).",
            ["outcome"],
            registry=r,
        )
        self.traffic_share = Gauge(
            "modelgate_traffic_share_percent",
            "Percent of unaddressed requests each version answers (primary, canary) or "
            "receives mirrored (shadow).",
            ["model", "version", "role"],
            registry=r,
        )
        self.routing_changes = Counter(
            "modelgate_routing_changes",
            "Times a model's routing table was switched (promotions, canary shares, ...).",
            ["model"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "modelgate_shadow_requests",
            "Requests mirrored to a shadow version by outcome: compared, dropped (shadow "
            "work backed up), error (the shadow failed; the primary answer was unaffected).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "modelgate_shadow_agreement_rows",
            "Rows of label-like outputs (integers, booleans, strings) where the shadow's "
            "answer agreed or disagreed with the primary's.",
            ["model", "version", "output", "result"],
            registry=r,
        )
        self.shadow_abs_diff = Histogram(
            "modelgate_shadow_abs_diff",
            "Per row, the largest absolute difference between shadow and primary scores.",
            ["model", "version", "output"],
            buckets=_DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_latency = Histogram(
            "modelgate_shadow_duration_seconds",
            "Time a mirrored request took on the shadow version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.signature_mismatch = Gauge(
            "modelgate_signature_mismatch",
            "1 while a canary or shadow gets none of its traffic because its inputs or outputs "
            "differ from the production version's and no modelgate.signature_change tag "
            "allows it.",
            ["model", "version"],
            registry=r,
        )
        self.requests_refused = Counter(
            "modelgate_requests_refused",
            "Inference requests refused at the front door before any work, by reason "
            "(inflight: max_inflight requests were already in flight; queue_budget: the "
            "expected queue wait exceeded queue_budget_ms; deadline: the client's deadline "
            "could not be met; slow_body: the client's address already had a quarter of "
            "max_inflight requests whose body was still arriving).",
            ["reason"],
            registry=r,
        )
        self.http_shedding = Counter(
            "modelgate_http_shedding",
            "Times the HTTP port stopped accepting connections because every max_inflight "
            "place was taken (shed_connections); the kernel refuses new connections until "
            "half the places are free.",
            registry=r,
        )
        self.http_shedding_seconds = Counter(
            "modelgate_http_shedding_seconds",
            "Seconds the HTTP port accepted no connections (shed_connections).",
            registry=r,
        )
        self.guard_rollbacks = Counter(
            "modelgate_guard_rollbacks",
            "Versions the rollout guard archived, by the rule that tripped.",
            ["model", "version", "rule"],
            registry=r,
        )

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """The metrics of one model version (created on first use, then the same object)."""
        with self._versions_lock:
            for existing in self._versions:
                if (existing.model, existing.version) == (model, version):
                    return existing
            created = VersionMetrics(self, model, version)
            self._versions.append(created)
            return created

    def versions(self) -> list[VersionMetrics]:
        with self._versions_lock:
            return list(self._versions)


class VersionMetrics:
    """The metrics of one model version, bound once so the hot path does no label look-ups."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.queue_wait = Observations(LATENCY_BUCKETS)
        self.compute = Observations(LATENCY_BUCKETS)
        self.batch_rows = Observations(_BATCH_BUCKETS)
        self.executions = Executions()
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.loaded = metrics.model_loaded.labels(model, version)
        self.refused = {
            ErrorCode.RESOURCE_EXHAUSTED: metrics.requests_refused.labels("queue_budget"),
            ErrorCode.DEADLINE_EXCEEDED: metrics.requests_refused.labels("deadline"),
        }
        # (protocol, outcome) -> latencies; their counts are the request counts. Entries are
        # only ever added (setdefault is atomic), and readers copy before iterating.
        self.outcomes: dict[tuple[str, str], Observations] = {}
        self.last_request = 0.0  # when the last request was answered (Unix time), 0: never

    def request_done(self, protocol: str, outcome: str, seconds: float) -> None:
        """Count one answered request and record its end-to-end latency."""
        self.last_request = time.time()  # a timestamp for clients, not a clock for deadlines
        key = (protocol, outcome)
        observations = self.outcomes.get(key)
        if observations is None:
            observations = self.outcomes.setdefault(key, Observations(LATENCY_BUCKETS))
        observations.observe(seconds)


class _ObservationsCollector(Collector):
    """Exposes the series that `VersionMetrics` records without locks (per request, and per
    batch: with cheap models over gRPC a batch is often a single request)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "modelgate_requests",
            "Inference requests by model, version, protocol and outcome (OK or an error code).",
            labels=["model", "version", "protocol", "outcome"],
        )
        latency = HistogramMetricFamily(
            "modelgate_request_duration_seconds",
            "Time from a decoded request reaching the core to its answer.",
            labels=["model", "version", "protocol"],
        )
        queue_wait = HistogramMetricFamily(
            "modelgate_queue_wait_seconds",
            "Time a request waited in the micro-batcher before its batch ran.",
            labels=["model", "version"],
        )
        compute = HistogramMetricFamily(
            "modelgate_compute_seconds",
            "ONNX Runtime time per batch.",
            labels=["model", "version"],
        )
        batch_rows = HistogramMetricFamily(
            "modelgate_batch_size_rows", "Rows per ONNX Runtime run.", labels=["model", "version"]
        )
        for v in self._metrics.versions():
            by_protocol: dict[str, tuple[np.ndarray, float]] = {}
            for (protocol, outcome), observations in dict(v.outcomes).items():
                counts, total = observations.snapshot()
                requests.add_metric([v.model, v.version, protocol, outcome], int(counts.sum()))
                if protocol in by_protocol:
                    so_far, so_far_total = by_protocol[protocol]
                    counts, total = so_far + counts, so_far_total + total
                by_protocol[protocol] = (counts, total)
            for protocol, (counts, total) in by_protocol.items():
                buckets = _buckets(LATENCY_BUCKETS, counts)
                latency.add_metric([v.model, v.version, protocol], buckets, total)
            for family, observations, bounds in (
                (queue_wait, v.queue_wait, LATENCY_BUCKETS),
                (compute, v.compute, LATENCY_BUCKETS),
                (batch_rows, v.batch_rows, _BATCH_BUCKETS),
            ):
                counts, total = observations.snapshot()
                family.add_metric([v.model, v.version], _buckets(bounds, counts), total)
        yield from (requests, latency, queue_wait, compute, batch_rows)
