"""The readiness rule, decided from the models' health alone, and its gauge and log lines."""

from __future__ import annotations

import logging

import pytest

from modelgate.gateway.core.readiness import (
    ModelHealth,
    ModelReport,
    ServerReadiness,
    decide,
)
from modelgate.gateway.metrics import Metrics

SERVING = ModelReport("good", ModelHealth.SERVING, "1")
LOADING = ModelReport("slow", ModelHealth.LOADING, "1")
FAILED = ModelReport("broken", ModelHealth.FAILED, "3", "no .onnx file")
UNASSIGNED = ModelReport("staged", ModelHealth.NO_PRODUCTION)


@pytest.mark.parametrize("strict", [False, True])
def test_not_ready_until_the_registry_was_read(strict: bool) -> None:
    readiness = decide([], synced=False, started=False, strict=strict)
    assert not readiness.ready and not readiness.started
    assert readiness.reasons == ("the model registry has not been read yet",)


@pytest.mark.parametrize("strict", [False, True])
def test_ready_when_every_model_in_production_serves(strict: bool) -> None:
    readiness = decide([SERVING, UNASSIGNED], synced=True, started=False, strict=strict)
    assert readiness.ready and readiness.started
    assert readiness.reasons == ()


@pytest.mark.parametrize("strict", [False, True])
def test_a_first_load_under_way_keeps_the_server_starting(strict: bool) -> None:
    readiness = decide([SERVING, LOADING, FAILED], synced=True, started=False, strict=strict)
    assert not readiness.ready and not readiness.started
    assert "model 'slow' version 1 is loading" in readiness.reasons


def test_a_model_that_failed_to_load_leaves_the_server_ready() -> None:
    readiness = decide([SERVING, FAILED], synced=True, started=False, strict=False)
    assert readiness.ready and readiness.started
    assert readiness.reasons == ("model 'broken' version 3 failed to load: no .onnx file",)


def test_strict_readiness_needs_every_model_in_production_serving() -> None:
    readiness = decide([SERVING, FAILED], synced=True, started=False, strict=True)
    assert not readiness.ready and readiness.started
    assert readiness.reasons == ("model 'broken' version 3 failed to load: no .onnx file",)


def test_once_started_a_model_loading_later_leaves_the_server_ready() -> None:
    assert decide([SERVING, LOADING], synced=True, started=True, strict=False).ready
    assert not decide([SERVING, LOADING], synced=True, started=True, strict=True).ready


def test_a_long_load_error_is_cut_in_the_reason() -> None:
    report = ModelReport("broken", ModelHealth.FAILED, "1", "x" * 10_000)
    assert len(report.describe()) < 400
    assert report.describe().endswith("...")


def _gauge(metrics: Metrics, model: str) -> dict[str, float]:
    """The state gauge's samples for one model: state -> value."""
    return {
        s.labels["state"]: s.value
        for family in metrics.registry.collect()
        if family.name == "modelgate_model_state"
        for s in family.samples
        if s.labels["model"] == model
    }


def test_the_gauge_shows_each_models_state_and_forgets_models_that_left() -> None:
    metrics = Metrics()
    readiness = ServerReadiness(metrics.model_state, strict=False)
    readiness.update([SERVING, FAILED], synced=True)
    assert _gauge(metrics, "broken") == {
        "serving": 0.0, "loading": 0.0, "failed": 1.0, "no_production": 0.0
    }  # fmt: skip
    assert _gauge(metrics, "good")["serving"] == 1.0
    readiness.update([SERVING], synced=True)
    assert _gauge(metrics, "broken") == {}
    assert readiness.current.ready


def test_a_failure_is_logged_once_however_often_it_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    readiness = ServerReadiness(Metrics().model_state, strict=False)
    with caplog.at_level(logging.INFO, logger="modelgate.gateway.core.readiness"):
        readiness.update([SERVING, LOADING], synced=True)
        for _ in range(3):  # a failed production version is retried: still failed
            readiness.update([SERVING, FAILED], synced=True)
        readiness.update([SERVING, ModelReport("broken", ModelHealth.SERVING, "4")], synced=True)
    lines = [r.getMessage() for r in caplog.records]
    failed = [line for line in lines if "failed to load" in line and "broken" in line]
    assert len(failed) == 2, lines  # the model's line, and the server's becoming ready
    assert any(line.startswith("modelgate ready, but serving nothing for:") for line in lines)
    assert "model 'broken' recovered: it serves version 4" in lines
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("requests for it get 503" in r.getMessage() for r in warnings)
