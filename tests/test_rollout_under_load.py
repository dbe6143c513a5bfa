"""Stage changes under continuous load, with real processes: a gateway subprocess on its
default poll interval, HTTP and gRPC clients, and `modelgate registry transition` run as a
script would — canary 20%, promotion, rollback, shadow (loadtest/rollout.py drives it)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from loadtest.procs import ServerProcess
from loadtest.rollout import LISTENING, default_steps, drive, prepare_store


@pytest.fixture(params=["1", "2"], ids=["1 worker", "2 workers"])
def gateway(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[ServerProcess, Path, dict[str, str], int]:
    root = prepare_store(
        tmp_path / "store", modelzoo.classifier(), shadow_model=modelzoo.classifier(first=4)
    )
    argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(root),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
            "--workers", request.param]  # fmt: skip
    server = ServerProcess(argv, tmp_path / "gateway.log")
    found = server.wait_for_line(LISTENING, timeout=60)
    addresses = {"http": f"http://{found.group(1)}", "grpc": found.group(2),
                 "metrics": f"http://{found.group(3)}"}  # fmt: skip
    for _ in range(20):  # each new connection may reach another worker
        server.wait_http_ok(f"{addresses['http']}/v2/health/ready", timeout=60)
    yield server, root, addresses, int(request.param)  # type: ignore[misc]
    server.stop()


async def test_stage_changes_under_load_fail_nothing(
    gateway: tuple[ServerProcess, Path, dict[str, str], int],
) -> None:
    server, root, addresses, workers = gateway
    steps = default_steps()
    report, answers = await drive(
        root, "light", addresses["http"], addresses["grpc"], modelzoo.FEATURES, steps,
        http_clients=6, grpc_clients=2, baseline=2.0, step_timeout=120,
        # Workers follow the registry each on its own: a key is judged once every worker
        # must have (the 2 s a stage change may take to reach them all).
        sticky_from=0.0 if workers == 1 else 2.0,
    )  # fmt: skip
    by_label = {s.label: s for s in report.steps}

    assert report.errors == 0, report.error_samples
    assert {a.protocol for a in answers} == {"http", "grpc"}

    canary = by_label["canary v2 at 20%"]
    assert canary.unkeyed_after_swap >= 2000
    assert canary.canary_share is not None
    assert abs(canary.canary_share - 0.20) <= 0.05, canary.canary_share

    for step in report.steps:
        assert step.sticky_flips == 0, step
        assert step.swap_seconds is not None and step.swap_seconds < 2.0, step

    shadow = by_label["shadow v3 at 100%"]
    assert shadow.shadow_answers == 0
    assert all(a.version in ("1", "2") for a in answers if a.version is not None)

    text = httpx.get(f"{addresses['metrics']}/metrics").text
    compared = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "modelgate_shadow_requests_total"
        and s.labels == {"model": "light", "version": "3", "outcome": "compared"}
    )
    assert compared > 0
    assert server.stop() == 0
