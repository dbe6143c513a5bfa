"""Every Prometheus metric modelgate exports, defined once.

Metrics live in a `CollectorRegistry` owned by the server (no module-level state), so tests
and several servers in one process never share counters. Hot paths hold pre-labelled
children (`VersionMetrics`) instead of calling `.labels()` per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """The gateway's metric families, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelgate_requests",
            "Inference requests by model, version, protocol and outcome (OK or an error code).",
            ["model", "version", "protocol", "outcome"],
            registry=r,
        )
        self.request_latency = Histogram(
            "modelgate_request_duration_seconds",
            "Time from a decoded request reaching the core to its answer.",
            ["model", "version", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelgate_queue_wait_seconds",
            "Time a request waited in the micro-batcher before its batch ran.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "modelgate_compute_seconds",
            "ONNX Runtime time per batch.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "modelgate_batch_size_rows",
            "Rows per ONNX Runtime run.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
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
        self.model_load_failures = Counter(
            "modelgate_model_load_failures",
            "Model versions that failed to load.",
            ["model", "version"],
            registry=r,
        )

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model, version)


class VersionMetrics:
    """The children of `Metrics` for one model version, bound once."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.model = model
        self.version = version
        self.queue_wait = metrics.queue_wait.labels(model, version)
        self.compute = metrics.compute.labels(model, version)
        self.batch_rows = metrics.batch_rows.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.loaded = metrics.model_loaded.labels(model, version)
        self._ok: dict[str, Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def request_done(self, protocol: str, outcome: str, seconds: float) -> None:
        if outcome == "OK":
            ok = self._ok.get(protocol)
            if ok is None:
                ok = self._ok[protocol] = self._metrics.requests.labels(
                    self.model, self.version, protocol, "OK"
                )
            ok.inc()
        else:
            self._metrics.requests.labels(self.model, self.version, protocol, outcome).inc()
        latency = self._latency.get(protocol)
        if latency is None:
            latency = self._latency[protocol] = self._metrics.request_latency.labels(
                self.model, self.version, protocol
            )
        latency.observe(seconds)
