"""When the server is ready: one rule, decided from the models' states, for both front ends.

By default the server is ready once the registry has been read and every model's first
load has settled (its production version serves, or failed to load). From then on a model
that serves nothing is reported (its own ready endpoint answers 503, the
`modelgate_model_state` gauge, one log line) but does not make the server unready: every
replica reads the same registry and fails the same way, so taking them out of rotation
would turn one broken model into an outage of every model.

`strict_readiness` is Triton's rule instead: ready only while every model that has a
version in production serves one (a model whose new version is loading or failed still
serves its previous one, so a rollout never makes a server unready).

Canary, shadow and staging versions never count: a canary that fails to load takes no
traffic, and production keeps its share.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Gauge

log = logging.getLogger(__name__)

_ERROR_CHARS = 300  # of a load error, in a reason (the version's status has it whole)
_LOGGED_REASONS = 5  # per log line; the rest are counted


class ModelHealth(enum.Enum):
    """Whether a model answers requests that name no version."""

    SERVING = "serving"
    LOADING = "loading"  # its production version's first load is under way
    FAILED = "failed"  # its production version failed to load (retried with backoff)
    NO_PRODUCTION = "no_production"  # no version in production: nothing is expected to serve


@dataclass(frozen=True, slots=True)
class ModelReport:
    """One model's health, with the version it is about and the load error, if any."""

    name: str
    health: ModelHealth
    version: str | None = None
    error: str | None = None

    def describe(self) -> str:
        """One line for logs and readiness reasons."""
        name, version = self.name, self.version
        if self.health is ModelHealth.SERVING:
            return f"model {name!r} serves version {version}"
        if self.health is ModelHealth.LOADING:
            return f"model {name!r} version {version} is loading"
        if self.health is ModelHealth.FAILED:
            error = self.error or "unknown error"
            if len(error) > _ERROR_CHARS:
                error = error[:_ERROR_CHARS] + "..."
            return f"model {name!r} version {version} failed to load: {error}"
        return f"model {name!r} has no version in production"


@dataclass(frozen=True, slots=True)
class Readiness:
    """The server's readiness and the models behind it: why it is not ready, or, while it
    is, the models that serve nothing."""

    ready: bool
    started: bool  # startup has settled; once true it stays true
    reasons: tuple[str, ...] = ()


NOT_READ = Readiness(False, False, ("the model registry has not been read yet",))


def decide(
    models: Iterable[ModelReport], *, synced: bool, started: bool, strict: bool
) -> Readiness:
    """The readiness rule (see the module's docstring): `synced` once the registry was read,
    `started` once a previous decision said startup had settled."""
    if not synced:
        return NOT_READ
    troubled = [m for m in models if m.health in (ModelHealth.LOADING, ModelHealth.FAILED)]
    reasons = tuple(m.describe() for m in troubled)
    started = started or not any(m.health is ModelHealth.LOADING for m in troubled)
    ready = not troubled if strict else started
    return Readiness(ready, started, reasons)


class ServerReadiness:
    """Keeps the current `Readiness` as the models change; exports each model's health as
    a gauge and logs each change once."""

    def __init__(self, gauge: Gauge, *, strict: bool) -> None:
        self._gauge = gauge
        self._strict = strict
        self._models: dict[str, ModelReport] = {}
        self.current = NOT_READ  # replaced whole: any thread may read it

    def update(self, models: Iterable[ModelReport], *, synced: bool) -> Readiness:
        """Take the models' health now; returns (and keeps) the server's readiness."""
        reports = {m.name: m for m in models}
        for name in self._models.keys() - reports.keys():
            for health in ModelHealth:
                self._gauge.remove(name, health.value)
        for name, report in reports.items():
            before = self._models.get(name)
            if before is None or before.health is not report.health:
                for health in ModelHealth:
                    self._gauge.labels(name, health.value).set(float(health is report.health))
                _log_change(before, report)
        self._models = reports
        previous = self.current
        now = decide(reports.values(), synced=synced, started=previous.started, strict=self._strict)
        self.current = now
        if now.ready != previous.ready:
            _log_readiness(now, self._strict)
        return now


def _log_change(before: ModelReport | None, now: ModelReport) -> None:
    if now.health is ModelHealth.FAILED:
        log.warning("%s; requests for it get 503 until a production version loads", now.describe())
    elif (
        now.health is ModelHealth.SERVING
        and before is not None
        and before.health is ModelHealth.FAILED
    ):
        log.info("model %r recovered: it serves version %s", now.name, now.version)


def _log_readiness(now: Readiness, strict: bool) -> None:
    listed = "; ".join(now.reasons[:_LOGGED_REASONS])
    more = len(now.reasons) - _LOGGED_REASONS
    if more > 0:
        listed += f"; and {more} more"
    if now.ready:
        if now.reasons:
            log.warning("modelgate ready, but serving nothing for: %s", listed)
        else:
            log.info("modelgate ready: every model serves")
    else:
        mode = " (strict readiness)" if strict else ""
        log.warning("modelgate not ready%s: %s", mode, listed)
