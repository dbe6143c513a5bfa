"""Typed settings, built once at the entry point and passed down by constructors.

The CLI flags and the `MODELGATE_*` environment variables map onto the same fields: a flag
wins over the variable, the variable over the default. No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate.monitor.drift import DriftSettings

ENV_PREFIX = "MODELGATE_"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How one model version's micro-batcher forms batches.

    max_batch_size: rows per ONNX Runtime run (1 turns batching off).
    max_delay_us: how long the oldest queued request may wait for company once the runner is
        free; 0 means a batch goes as soon as the runner can take it, and batches still grow
        with load because requests gather while the previous batch computes.
    max_queue: rows that may wait; beyond it a request is refused at once (RESOURCE_EXHAUSTED).
    inline_max_us: batches expected to compute within this many microseconds run on the
        event loop itself (a thread hand-off costs more than they do); longer ones run on
        the version's worker thread. 0 sends every batch to the worker.
    """

    max_batch_size: int = 64
    max_delay_us: int = 0
    max_queue: int = 4096
    inline_max_us: int = 250

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_delay_us < 0:
            raise ValueError("max_delay_us must not be negative")
        if self.max_queue < self.max_batch_size:
            raise ValueError("max_queue must be at least max_batch_size")
        if self.inline_max_us < 0:
            raise ValueError("inline_max_us must not be negative")


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """ONNX Runtime session options for each loaded model version."""

    intra_op_threads: int = 1
    graph_optimization: str = "all"  # disable | basic | extended | all
    warmup_runs: int = 2

    def __post_init__(self) -> None:
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ValueError(f"unknown graph optimisation level {self.graph_optimization!r}")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads must not be negative (0 lets ORT choose)")


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The rollout guard: archives a canary or shadow that does worse than production.

    Over a sliding window of `guard_window_seconds`, once the version has seen at least
    `guard_min_requests`: a canary whose server-error rate exceeds production's by more
    than `guard_max_error_rate`, whose client-error rate exceeds production's by more than
    `guard_max_client_error_rate`, or whose p99 latency exceeds `guard_max_p99_ratio` times
    production's, and a shadow whose answers disagree with production's more often than
    `guard_max_disagreement`, is moved to `archived` through the registry, with the
    reason in the audit record.
    """

    guard_enabled: bool = False
    guard_window_seconds: float = 60.0
    guard_min_requests: int = 200
    guard_max_error_rate: float = 0.05
    # How much more often than production, on the same window, a canary may refuse
    # requests as invalid (4xx / INVALID_ARGUMENT: a renamed input, another shape) before
    # the guard archives it; a fraction of its requests.
    guard_max_client_error_rate: float = 0.05
    guard_max_p99_ratio: float = 3.0
    guard_max_disagreement: float = 0.2

    def __post_init__(self) -> None:
        if self.guard_window_seconds <= 0:
            raise ValueError("guard_window_seconds must be positive")
        if self.guard_min_requests < 1:
            raise ValueError("guard_min_requests must be at least 1")
        for name in (
            "guard_max_error_rate",
            "guard_max_client_error_rate",
            "guard_max_disagreement",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction between 0 and 1")
        if self.guard_max_p99_ratio <= 1:
            raise ValueError("guard_max_p99_ratio must be above 1")


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """Drift monitoring of one model: on or off, and where its retraining webhook goes
    (empty: the registry version's `retrain_webhook` tag, if any; the server-wide value is
    every model's default)."""

    monitoring: bool = True
    retrain_webhook: str = ""


@dataclass(frozen=True, slots=True)
class ModelServingSettings:
    """Per-model serving options; `ServerSettings.model_overrides` holds exceptions by name."""

    batch: BatchSettings = field(default_factory=BatchSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything `modelgate serve` needs to run one serving process."""

    store: Path = Path("modelstore")
    # Where models come from: None serves the embedded store above; otherwise a directory,
    # `http(s)://host:port` (a `modelgate registry serve`) or `mlflow+http(s)://host:port`.
    registry: str | None = None
    registry_token_file: Path | None = None  # bearer token for a registry server or MLflow
    poll_interval: float = 1.0  # seconds between registry change checks
    routing_key_header: str = "x-routing-key"  # HTTP header / gRPC metadata for sticky routing
    shadow_max_inflight: int = 256  # mirrored requests in flight per shadow version; more drop
    # Retraining webhook: the secret signs every event (`whsec_<base64>` or plain text; the
    # variable MODELGATE_WEBHOOK_SECRET or a file); events wait in a durable outbox (default:
    # webhook-outbox.db in the store directory) until delivered.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_secret_file: Path | None = None
    webhook_outbox: Path | None = None
    webhook_cooldown: float = 3600.0  # seconds before a version's drift may fire again
    webhook_retry_period: float = 86400.0  # seconds an undeliverable event is retried
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_body_bytes: int = 64 * 1024 * 1024
    grpc_workers: str = "shared"  # shared: the HTTP loop; thread: own asyncio loop in a thread
    drain_delay: float = 1.0  # seconds a draining server still takes new requests
    drain_seconds: float = 10.0
    # Readiness (/v2/health/ready, gRPC ServerReady and health): by default ready once startup
    # has settled, whatever single models do; strict: only while every model in production
    # serves (Triton's rule). See gateway/core/readiness.py.
    strict_readiness: bool = False
    log_level: str = "info"
    models: ModelServingSettings = field(default_factory=ModelServingSettings)
    model_overrides: dict[str, ModelServingSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if self.shadow_max_inflight < 0:
            raise ValueError("shadow_max_inflight must not be negative")
        header = self.routing_key_header
        if not header or header != header.lower():
            raise ValueError("routing_key_header must be a lower-case header name")

    def for_model(self, name: str) -> ModelServingSettings:
        return self.model_overrides.get(name, self.models)


_PATH_SETTINGS = frozenset(
    {"store", "registry_token_file", "webhook_secret_file", "webhook_outbox"}
)


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, Path):
        return Path(value)
    return value


_MODEL_GROUPS: tuple[tuple[str, type], ...] = (
    ("batch", BatchSettings),
    ("runtime", RuntimeSettings),
    ("guard", GuardSettings),
    ("monitor", MonitorSettings),
    ("drift", DriftSettings),
)


def _flat_fields() -> dict[str, tuple[str, ...]]:
    """Setting names (as flags, variables and the config file use them) -> attribute path."""
    flat: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(ServerSettings):
        if f.name in ("models", "model_overrides"):
            continue
        flat[f.name] = (f.name,)
    for group, cls in _MODEL_GROUPS:
        for f in dataclasses.fields(cls):
            flat[f.name] = ("models", group, f.name)
    return flat


SETTING_NAMES: tuple[str, ...] = tuple(_flat_fields())
MODEL_SETTING_NAMES: tuple[str, ...] = tuple(
    name for name, path in _flat_fields().items() if path[0] == "models"
)


def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML config file: top-level keys are setting names, `[models.NAME]` tables hold
    per-model batching and runtime settings. Unknown keys are an error, not ignored."""
    with path.open("rb") as f:
        doc = tomllib.load(f)
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise ValueError(f"{path}: [models] must be a table of model names")
    unknown = set(doc) - set(SETTING_NAMES) - {"models"}
    for name, table in models.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [models.{name}] must be a table")
        unknown |= {f"models.{name}.{key}" for key in set(table) - set(MODEL_SETTING_NAMES)}
    if unknown:
        raise ValueError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    return doc


def build_settings(
    overrides: dict[str, Any],
    environ: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> ServerSettings:
    """Settings from defaults, then the config file, then `MODELGATE_<NAME>` variables, then
    explicit overrides (CLI flags).

    All layers use the flat names of `SETTING_NAMES` (e.g. `http_port`, `max_batch_size`);
    None values are ignored so that unset CLI flags fall through. `config["models"]` maps a
    model name to per-model settings, layered over the server-wide ones.
    """
    environ = dict(os.environ) if environ is None else environ
    config = config or {}
    defaults = ServerSettings()
    values: dict[tuple[str, ...], Any] = {}
    for name, path in _flat_fields().items():
        current: Any = defaults
        for part in path:
            current = getattr(current, part)
        if name in _PATH_SETTINGS:
            current = Path()
        if config.get(name) is not None:
            value = config[name]
            values[path] = Path(value) if isinstance(current, Path) else value
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[path] = _coerce(raw, current)
        if overrides.get(name) is not None:
            values[path] = overrides[name]
        if path in values and name in _PATH_SETTINGS:
            values[path] = Path(values[path])
    top = {p[0]: v for p, v in values.items() if len(p) == 1}
    shared = {p[2]: v for p, v in values.items() if p[0] == "models"}
    models = _model_settings(shared)
    per_model = {
        name: _model_settings({**shared, **table})
        for name, table in config.get("models", {}).items()
    }
    return ServerSettings(**top, models=models, model_overrides=per_model)


def _model_settings(values: dict[str, Any]) -> ModelServingSettings:
    groups = []
    for _, cls in _MODEL_GROUPS:
        names = {f.name for f in dataclasses.fields(cls)}
        groups.append(cls(**{k: v for k, v in values.items() if k in names}))
    batch, runtime, guard, monitor, drift = groups
    return ModelServingSettings(batch, runtime, guard, monitor, drift)
