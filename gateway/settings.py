"""Typed settings, built once at the entry point and passed down by constructors.

Every setting is a dataclass field declared with `modelgate.fields.setting` (help text,
bounds, choices) and has one name for the config file, the `MODELGATE_*` variable and the
command-line flag (`SETTINGS` lists them). `build_settings` layers defaults < config file <
variables < flags, checks each value's type and rules, and names the setting and the source
of a wrong value. No other module reads the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate.fields import SettingRules, SettingValueError, check_fields, rules_of, setting
from modelgate.monitor.drift import DriftSettings

ENV_PREFIX = "MODELGATE_"
MAX_WORKERS = 256
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: its CPU affinity, lowered to its container's CPU
    quota rounded up (a Kubernetes CPU limit of 2 on a 64-core node is 2, not 64).

    Reads cgroup v2's `cpu.max` ("QUOTA PERIOD" or "max PERIOD"), else cgroup v1's
    `cpu/cpu.cfs_quota_us` and `cpu/cpu.cfs_period_us` (a quota of -1 is none)."""
    cores = max(1, len(os.sched_getaffinity(0)))
    quota = _cpu_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cpu_quota(root: Path) -> float | None:
    """The CPU quota in cores, or None where there is none (or no cgroup to read)."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        try:
            fields = [
                (root / "cpu" / "cpu.cfs_quota_us").read_text().strip(),
                (root / "cpu" / "cpu.cfs_period_us").read_text().strip(),
            ]
        except OSError:
            return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (ValueError, IndexError):
        return None  # "max", v1's -1 as the only field, or an unreadable file
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How one model version's micro-batcher forms batches.

    max_delay_us 0 means a batch goes as soon as the runner can take it; batches still grow
    with load because requests gather while the previous batch computes.
    """

    max_batch_size: int = setting(64, "rows per ONNX Runtime run; 1 turns batching off", minimum=1)
    max_delay_us: int = setting(
        0, "microseconds the oldest queued request may wait for company", minimum=0
    )
    max_queue: int = setting(
        4096, "rows that may wait; beyond, a request is refused at once", minimum=1
    )
    queue_budget_ms: int = setting(
        50,
        "milliseconds a request may wait in the queue: refused at once when the full batches "
        "ahead of it times the batch time exceed it, and, if it has waited longer than that "
        "(beyond the batch computing when it came) when its batch forms while waits have "
        "stayed past the budget for 0.1 s, refused then instead of computed; 0: no budget",
        minimum=0,
    )
    inline_max_us: int = setting(
        250,
        "batches expected to compute within this many microseconds run on the event loop, "
        "longer ones on the worker thread; 0: always the thread",
        minimum=0,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_queue < self.max_batch_size:
            raise SettingValueError(
                "max_queue",
                f"must be at least max_batch_size ({self.max_batch_size}), got {self.max_queue}",
            )


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """ONNX Runtime session options for each loaded model version.

    max_run_memory_bytes: memory one model version may compute with. Its runs (every batch
        in flight, warm-up included) share an ONNX Runtime arena of this size: a run that
        would need more fails (INVALID_ARGUMENT, the other requests of its batch are retried
        alone), and the server keeps serving. Constant folding at load may add at most as
        much in total. The weights themselves are not counted. String tensors keep their
        characters outside the arena (see docs/hardening.md).
    max_run_seconds: wall-clock limit of one run (one batch); a run still going after it is
        stopped and its requests fail with DEADLINE_EXCEEDED. 0: no limit.
    """

    intra_op_threads: int = setting(
        1, "ONNX Runtime threads per run (0 lets ONNX Runtime choose)", minimum=0
    )
    graph_optimization: str = setting(
        "all",
        "ONNX Runtime graph optimisation level",
        choices=("disable", "basic", "extended", "all"),
    )
    warmup_runs: int = setting(2, "runs on zeros before a version takes traffic", minimum=0)
    max_run_memory_bytes: int = setting(
        1024 * 1024 * 1024,
        "memory a model version may compute with (its runs' ONNX Runtime arena, and constant "
        "folding at load); a run needing more fails alone (INVALID_ARGUMENT)",
        minimum=1024 * 1024,
    )
    max_run_seconds: float = setting(
        30.0,
        "seconds one run (one batch) may take before it is stopped (DEADLINE_EXCEEDED); "
        "0: no limit",
        minimum=0,
    )

    def __post_init__(self) -> None:
        check_fields(self)


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

    guard_enabled: bool = setting(
        False, "the rollout guard: archive a canary or shadow that does worse than production"
    )
    guard_window_seconds: float = setting(
        60.0, "seconds of the sliding window the guard judges", above=0
    )
    guard_min_requests: int = setting(
        200, "requests (shadow: compared rows) before the guard judges a version", minimum=1
    )
    guard_max_error_rate: float = setting(
        0.05,
        "how far a canary's server-side error rate may exceed production's",
        minimum=0,
        maximum=1,
    )
    guard_max_client_error_rate: float = setting(
        0.05,
        "how far a canary's rate of requests refused as invalid (4xx / INVALID_ARGUMENT: a "
        "renamed input, another shape) may exceed production's on the same window",
        minimum=0,
        maximum=1,
    )
    guard_max_p99_ratio: float = setting(
        3.0, "canary p99 latency, as a multiple of production's, that archives it", above=1
    )
    guard_max_disagreement: float = setting(
        0.2,
        "fraction of rows where a shadow's labels differ from production's that archives it",
        minimum=0,
        maximum=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """Drift monitoring of one model: on or off, and where its retraining webhook goes
    (empty: the registry version's `retrain_webhook` tag, if any; the server-wide value is
    every model's default)."""

    monitoring: bool = setting(True, "drift monitoring (per model in the config file)")
    retrain_webhook: str = setting(
        "",
        "URL drift events are POSTed to (per model: the config file or the registry tag "
        "retrain_webhook)",
    )

    def __post_init__(self) -> None:
        check_fields(self)


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

    store: Path = setting(Path("modelstore"), "embedded registry directory")
    registry: str | None = setting(
        None,
        "where models come from instead of the store: a directory, http://host:port "
        "(a `modelgate registry serve`) or mlflow+http://host:port",
    )
    registry_token_file: Path | None = setting(
        None, "file holding the bearer token for the registry server or MLflow"
    )
    # A typo'd store path must not serve nothing: a directory without a store is an error.
    create_store: bool = setting(
        False, "start an empty store where the store directory has none (otherwise an error)"
    )
    poll_interval: float = setting(1.0, "seconds between registry change checks", above=0)
    routing_key_header: str = setting(
        "x-routing-key", "HTTP header / gRPC metadata whose value pins a caller to one version"
    )
    shadow_max_inflight: int = setting(
        256,
        "mirrored requests in flight per shadow version; beyond, copies are dropped",
        minimum=0,
    )
    # Signs every drift event; events wait in a durable outbox until delivered.
    webhook_secret: str | None = setting(
        None, "the webhook signing secret (whsec_<base64> or text)", secret=True
    )
    webhook_secret_file: Path | None = setting(None, "file holding the webhook signing secret")
    webhook_outbox: Path | None = setting(
        None, "SQLite file of undelivered drift events (default: webhook-outbox.db in the store)"
    )
    webhook_cooldown: float = setting(
        3600.0, "seconds before a drifting version fires again", minimum=0
    )
    webhook_retry_period: float = setting(
        86400.0, "seconds an undeliverable event is retried", above=0
    )
    webhook_outbox_max_events: int = setting(
        10_000,
        "pending events the webhook outbox holds at most; beyond, new events are dropped "
        "(counted and logged)",
        minimum=1,
    )
    # Registry writers choose a version's `retrain_webhook` tag; the operator chooses where
    # signed events may go (monitor/allowlist.py).
    webhook_allowed_urls: str = setting(
        "",
        "URLs (comma-separated scheme://host[:port][/path]) a version's retrain_webhook tag "
        "may point at or below; other tags are ignored, logged and counted",
    )
    host: str = setting("127.0.0.1", "address every endpoint binds")
    http_port: int = setting(8000, "HTTP port; 0 picks a free one", minimum=0, maximum=65535)
    grpc_port: int = setting(8001, "gRPC port; 0 picks a free one", minimum=0, maximum=65535)
    metrics_port: int = setting(
        8002, "Prometheus metrics port; 0 picks a free one", minimum=0, maximum=65535
    )
    # TLS and access (modelgate/tls.py, core/access.py; docs/hardening.md).
    tls_cert_file: Path | None = setting(
        None, "PEM certificate chain the HTTP, gRPC and metrics ports serve (TLS on when set)"
    )
    tls_key_file: Path | None = setting(None, "PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = setting(
        None,
        "PEM CA certificates that HTTP and gRPC clients' certificates must chain to; when set, "
        "clients must present one (mutual TLS)",
    )
    auth_tokens_file: Path | None = setting(
        None,
        "file of API tokens (name:secret or name:secret:model,model a line); when set, every "
        "API but the health checks needs 'Authorization: Bearer <token>'",
    )
    protect_metrics: bool = setting(
        False, "the metrics port needs a token for every model too (auth_tokens_file)"
    )
    max_body_bytes: int = setting(
        64 * 1024 * 1024, "largest HTTP body or gRPC message accepted", minimum=1
    )
    # Decoding JSON costs far more memory and event-loop time per byte than binary data
    # (docs/hardening.md, "Request limits"): large tensors belong in the binary extension or
    # gRPC, so JSON has a limit of its own.
    max_json_bytes: int = setting(
        8 * 1024 * 1024,
        "largest JSON in a request (a V2 or V1 JSON body, the JSON part of a binary one); "
        "larger is 413",
        minimum=1,
    )
    max_request_elements: int = setting(
        16 * 1024 * 1024,
        "tensor elements one inference request may declare, all inputs together (the "
        "default is 64 MiB of FP32); checked before anything is allocated",
        minimum=1,
    )
    # Each BYTES element is a Python object made and converted on the event loop, about a
    # microsecond apiece where a number costs nothing (docs/hardening.md).
    max_request_strings: int = setting(
        128 * 1024, "BYTES elements one inference request may declare", minimum=1
    )
    max_header_bytes: int = setting(
        64 * 1024, "largest HTTP request head (request line and headers); larger is 431",
        minimum=1024,
    )  # fmt: skip
    header_timeout: float = setting(
        10.0, "seconds an HTTP client gets to send a request head; then 408", above=0
    )
    body_timeout: float = setting(
        10.0,
        "seconds an HTTP client gets to send a request body once its head is in; then 408",
        above=0,
    )
    keep_alive_timeout: float = setting(
        5.0, "seconds an idle HTTP keep-alive connection stays open", above=0
    )
    max_connections: int = setting(
        1000,
        "open connections per port (HTTP and gRPC each); beyond, a new HTTP connection "
        "closes the longest idle one or is refused (503), a new gRPC one is closed",
        minimum=1,
    )
    # 128: two full default batches (max_batch_size 64) of one-row requests, one computing
    # and one gathering, enough to keep a batcher busy; and about what a process serving a
    # few thousand requests a second answers within tens of milliseconds. Measured against
    # 512: docs/hardening.md, "Admission control".
    max_inflight: int = setting(
        128,
        "inference requests in flight per process (being read, queued or computed); beyond, "
        "a request is refused at once (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED)",
        minimum=1,
    )
    # Refusing a request costs the event loop about a third of serving one (its read, parse
    # and write); past 1.5x its capacity a process spends more on refusals than on serving.
    # Refused by the kernel instead, a connection costs the process nothing; off by default
    # because a connection caught between the accept queue and the port's closing is reset:
    # docs/hardening.md, "Shedding connections".
    shed_connections: bool = setting(
        False,
        "HTTP at max_inflight: a refused request's connection closes, and the port accepts "
        "no connections (the kernel refuses them) until half the places are free",
    )
    grpc_workers: str = setting(
        "shared",
        "gRPC on the HTTP server's event loop (shared), or on its own loop in a thread",
        choices=("shared", "thread"),
    )
    # A text setting: a number or `auto`, checked by `worker_count`.
    workers: str = setting(
        "1",
        "serving processes sharing the HTTP and gRPC ports under one supervisor, each with "
        "its own batchers and model sessions; auto: one per core this process may use",
    )
    drain_delay: float = setting(
        1.0, "seconds a stopping server reports not-ready but still serves", minimum=0
    )
    drain_seconds: float = setting(10.0, "seconds in-flight requests then get to finish", minimum=0)
    # Readiness (/v2/health/ready, gRPC ServerReady and health): by default ready once startup
    # has settled, whatever single models do; strict: Triton's rule. See core/readiness.py.
    strict_readiness: bool = setting(
        False, "ready only while every model in production serves (Triton's rule)"
    )
    log_level: str = setting(
        "info", "logging level", choices=("debug", "info", "warning", "error", "critical")
    )
    models: ModelServingSettings = field(default_factory=ModelServingSettings)
    model_overrides: dict[str, ModelServingSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.protect_metrics and self.auth_tokens_file is None:
            raise SettingValueError(
                "protect_metrics", "needs auth_tokens_file (the tokens that may read metrics)"
            )
        header = self.routing_key_header
        if not header or header != header.lower():
            raise SettingValueError(
                "routing_key_header", f"must be a lower-case header name, got {header!r}"
            )

        self.worker_count()

    def worker_count(self) -> int:
        """How many serving processes `workers` asks for (`auto`: `usable_cores()`)."""
        text = self.workers.strip().lower()
        if text == "auto":
            return usable_cores()
        if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
            return int(text)
        raise SettingValueError(
            "workers", f"must be a number from 1 to {MAX_WORKERS} or auto, got {self.workers!r}"
        )

    def for_model(self, name: str) -> ModelServingSettings:
        return self.model_overrides.get(name, self.models)


_MODEL_GROUPS: tuple[tuple[str, type], ...] = (
    ("batch", BatchSettings),
    ("runtime", RuntimeSettings),
    ("guard", GuardSettings),
    ("monitor", MonitorSettings),
    ("drift", DriftSettings),
)


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as the user sees it: its name, type, default and rules."""

    name: str
    path: tuple[str, ...]  # attribute path from ServerSettings
    kind: type  # int, float, bool, str or Path (None, where allowed, means unset)
    default: Any
    rules: SettingRules

    @property
    def flag(self) -> str | None:
        """`--kebab-name`; None for a secret, which never goes on a command line."""
        return None if self.rules.secret else "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _settings_of(cls: type, path: tuple[str, ...]) -> dict[str, Setting]:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        rules = rules_of(f)
        if rules is None:
            continue
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
        kind = kinds[0] if kinds else hints[f.name]
        found[f.name] = Setting(f.name, (*path, f.name), kind, f.default, rules)
    return found


def _all_settings() -> dict[str, Setting]:
    found = _settings_of(ServerSettings, ())
    for group, cls in _MODEL_GROUPS:
        found.update(_settings_of(cls, ("models", group)))
    return found


SETTINGS: Mapping[str, Setting] = _all_settings()
"""Every setting by its one name (config file key, `MODELGATE_<NAME>`, `--<name>`)."""
SETTING_NAMES: tuple[str, ...] = tuple(SETTINGS)
MODEL_SETTING_NAMES: tuple[str, ...] = tuple(
    name for name, s in SETTINGS.items() if s.path[0] == "models"
)


class SettingsError(ValueError):
    """A user's mistake in the settings: the message names the setting, source and fix."""


_EXPECTED = {int: "an integer", float: "a number", bool: "on or off", str: "text", Path: "a path"}
_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def _parse_text(s: Setting, raw: str) -> Any:
    """A flag's or variable's text as the setting's type; ValueError says what is expected."""
    text = raw.strip()
    if s.kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif s.kind is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif s.kind is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return value
    elif s.kind is Path:
        return Path(raw)
    else:
        return raw
    raise ValueError(f"expected {_EXPECTED[s.kind]}, got {raw!r}")


def _check_typed(s: Setting, value: Any) -> Any:
    """A value that arrived typed (TOML, Python) as the setting's type, or ValueError."""
    if s.kind is bool:
        ok = isinstance(value, bool)
    elif s.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif s.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        value = float(value) if ok else value
    elif s.kind is Path:
        ok = isinstance(value, str | Path)
        value = Path(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = "true or false" if s.kind is bool else _EXPECTED[s.kind]
        raise ValueError(f"expected {expected}, got {_toml_repr(value)}")
    return value


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


# What `modelgate registry` honours of the serve settings; plus MODELGATE_REGISTRY_TOKEN, a
# token itself, for clients that hold no file.
REGISTRY_COMMAND_SETTINGS = ("store", "registry", "registry_token_file", "host", "create_store")


def registry_command_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of `REGISTRY_COMMAND_SETTINGS` (and `registry_token`) that `MODELGATE_*`
    variables set, parsed like `build_settings` parses them; empty variables count as unset.
    The registry package never imports the gateway, so the CLI hands these down to it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in REGISTRY_COMMAND_SETTINGS:
        s = SETTINGS[name]
        raw = environ.get(s.variable)
        if raw:
            values[name] = _value(s, raw, f"the variable {s.variable}", True)
    token = environ.get(ENV_PREFIX + "REGISTRY_TOKEN")
    if token:
        values["registry_token"] = token
    return values


def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML config file: top-level keys are setting names, `[models.NAME]` tables hold
    per-model settings. Unknown keys are an error, not ignored; SettingsError names them."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: not valid TOML: {exc}") from None
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise SettingsError(f"config file {path}: [models] must be a table of model names")
    unknown = set(doc) - set(SETTING_NAMES) - {"models"}
    for name, table in models.items():
        if not isinstance(table, dict):
            raise SettingsError(f"config file {path}: [models.{name}] must be a table")
        unknown |= {f"models.{name}.{key}" for key in set(table) - set(MODEL_SETTING_NAMES)}
    if unknown:
        raise SettingsError(f"config file {path}: unknown setting(s): {', '.join(sorted(unknown))}")
    return doc


def build_settings(
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
) -> ServerSettings:
    """Settings from defaults, then the config file, then `MODELGATE_<NAME>` variables, then
    explicit overrides (CLI flags: text, parsed like variables; or typed values).

    All layers use the names of `SETTING_NAMES` (e.g. `http_port`, `max_batch_size`); None
    values are ignored so that unset flags fall through. `config["models"]` maps a model name
    to per-model settings, layered over the server-wide ones. Raises SettingsError naming the
    setting, where its value came from, what was given and what is expected.
    """
    environ = os.environ if environ is None else environ
    config = config or {}
    file = f"the config file {config_path}" if config_path is not None else "the config file"
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS.values():
        flag = overrides.get(s.name)
        layers = (
            (config.get(s.name), file, False),
            (environ.get(s.variable), f"the variable {s.variable}", True),
            (flag, f"the flag {s.flag}" if s.flag else "the command line", isinstance(flag, str)),
        )
        for value, source, text in layers:
            if value is not None:
                values[s.name] = _value(s, value, source, text)
                sources[s.name] = source
    shared = {n: v for n, v in values.items() if SETTINGS[n].path[0] == "models"}
    top = {n: v for n, v in values.items() if n not in shared}
    with _naming(sources):
        models = _model_settings(shared)
    per_model = {}
    for model, table in config.get("models", {}).items():
        source = f"{file} ([models.{model}])"
        own = {**shared, **{n: _value(SETTINGS[n], v, source, False) for n, v in table.items()}}
        with _naming({**sources, **dict.fromkeys(table, source)}):
            per_model[model] = _model_settings(own)
    with _naming(sources):
        return ServerSettings(**top, models=models, model_overrides=per_model)


def _value(s: Setting, value: Any, source: str, text: bool) -> Any:
    """`value` as setting `s` takes it: `text` (flags, variables) is parsed, typed values
    (TOML, Python) are checked; SettingsError names the setting and `source`."""
    try:
        return _parse_text(s, value) if text else _check_typed(s, value)
    except ValueError as exc:
        raise SettingsError(f"setting {s.name} from {source}: {exc}") from None


@contextlib.contextmanager
def _naming(sources: Mapping[str, str]) -> Iterator[None]:
    """A settings class's SettingValueError as a SettingsError naming the value's source."""
    try:
        yield
    except SettingValueError as exc:
        source = sources.get(exc.setting)
        where = f"from {source}" if source else "(default)"
        raise SettingsError(f"setting {exc.setting} {where}: {exc.problem}") from None


def _model_settings(values: Mapping[str, Any]) -> ModelServingSettings:
    groups = []
    for _, cls in _MODEL_GROUPS:
        names = {f.name for f in dataclasses.fields(cls)}
        groups.append(cls(**{k: v for k, v in values.items() if k in names}))
    batch, runtime, guard, monitor, drift = groups
    return ModelServingSettings(batch, runtime, guard, monitor, drift)
