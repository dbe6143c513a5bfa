"""Stage changes under continuous load, with real processes: a gateway subprocess on its
default poll interval, HTTP and gRPC clients, and `modelgate registry transition` run as a
script would — canary 20%, promotion, rollback, shadow (loadtest/rollout.py drives it).

With two workers, every worker must switch together (gateway/route_link.py): a routing key
is answered by one version whichever worker takes it, and changes version at most once per
stage change. Each worker's log line shows when it routed the new table."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from loadtest.procs import ServerProcess
from loadtest.rollout import LISTENING, default_steps, drive, prepare_store

KEYS = 50  # sticky routing keys: each is asked often enough to show a flap

# Each step's routing table, as a worker logs it when it switches to it.
TABLES = {
    "canary v2 at 20%": "v1 primary 80%, v2 canary 20%",
    "promote v2": "v2 primary 100%",
    "roll back to v1": "v1 primary 100%",
    "shadow v3 at 100%": "v1 primary 100%, v3 shadow 100%",
}
ROUTING = re.compile(r"^(\S+ \S+) INFO worker (\d+) \S+: model light routing: (.*)$", re.MULTILINE)


def _switches(log: str) -> list[tuple[float, int, str]]:
    """(when, worker, table) for each time a worker switched its routes for `light`."""
    return [
        (datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(worker), table)
        for at, worker, table in ROUTING.findall(log)
    ]


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
    report, answers = await drive(
        root, "light", addresses["http"], addresses["grpc"], modelzoo.FEATURES,
        default_steps(), http_clients=6, grpc_clients=2, baseline=2.0, step_timeout=120,
        keys=KEYS,
    )  # fmt: skip
    switches = _switches(server.log_path.read_text()) if workers > 1 else []
    by_label = {s.label: s for s in report.steps}

    assert report.errors == 0, report.error_samples
    assert {a.protocol for a in answers} == {"http", "grpc"}

    canary = by_label["canary v2 at 20%"]
    assert canary.unkeyed_after_swap >= 2000
    assert canary.canary_share is not None
    assert abs(canary.canary_share - 0.20) <= 0.05, canary.canary_share

    for step in report.steps:
        # A key changes version at most once per stage change, whichever worker answers.
        assert step.sticky_flaps == 0, step
        assert step.sticky_flips == 0, step
        assert step.swap_seconds is not None and step.swap_seconds < 2.0, step
        if workers > 1:  # each worker routed the new table within 2 s of the change
            switched = {
                worker: at - step.changed_at
                for at, worker, table in reversed(switches)
                if at >= step.changed_at and table == TABLES[step.label]
            }
            assert sorted(switched) == list(range(workers)), (step, switches)
            assert max(switched.values()) < 2.0, (step, switched)

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
