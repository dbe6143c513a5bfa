"""Stage changes under continuous load, with real processes: a gateway subprocess on its
default poll interval, HTTP and gRPC clients, and `modelgate registry transition` run as a
script would — canary 20%, promotion, rollback, shadow (loadtest/rollout.py drives it).

With two workers, every worker must switch together (gateway/route_link.py): a routing key
is answered by one version whichever worker takes it, and changes version at most once per
stage change. Each worker's own metrics show when it routed the new table."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from loadtest.procs import ServerProcess
from loadtest.rollout import LISTENING, Step, default_steps, drive, prepare_store

WORKER_LISTENING = re.compile(r"worker (\d+) \S+: modelgate worker listening .* metrics=(\S+)")
KEYS = 50  # sticky routing keys: each is asked often enough to show a flap

# What each step's routing table is, as the traffic-share gauge shows it.
TABLES = {
    "canary v2 at 20%": {("1", "primary"): 80.0, ("2", "canary"): 20.0},
    "promote v2": {("2", "primary"): 100.0},
    "roll back to v1": {("1", "primary"): 100.0},
    "shadow v3 at 100%": {("1", "primary"): 100.0, ("3", "shadow"): 100.0},
}

Table = dict[tuple[str, str], float]


@pytest.fixture(params=["1", "2"], ids=["1 worker", "2 workers"])
def gateway(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[ServerProcess, Path, dict[str, str], list[str]]:
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
    workers = WORKER_LISTENING.findall(server.log_path.read_text())
    worker_metrics = [f"http://{m}/metrics" for _, m in sorted(workers)]
    assert len(worker_metrics) == (0 if request.param == "1" else int(request.param))
    yield server, root, addresses, worker_metrics  # type: ignore[misc]
    server.stop()


def _table(text: str) -> Table:
    return {
        (s.labels["version"], s.labels["role"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "modelgate_traffic_share_percent" and s.labels.get("model") == "light"
    }


async def _watch_tables(
    urls: Sequence[str], seen: list[tuple[float, int, Table]], stop: asyncio.Event
) -> None:
    """Each worker's routing table (from its own metrics), every 0.1 s until `stop`."""
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            for worker, url in enumerate(urls):
                with_time = time.time()
                with contextlib.suppress(httpx.HTTPError):
                    seen.append((with_time, worker, _table((await client.get(url)).text)))
            await asyncio.sleep(0.1)


def _switched(
    seen: Sequence[tuple[float, int, Table]], worker: int, since: float, table: Table
) -> float | None:
    """When `worker` was first seen routing `table` after `since`."""
    return next((t for t, w, got in seen if w == worker and t >= since and got == table), None)


async def test_stage_changes_under_load_fail_nothing(
    gateway: tuple[ServerProcess, Path, dict[str, str], list[str]],
) -> None:
    server, root, addresses, worker_metrics = gateway
    steps: list[Step] = default_steps()
    seen: list[tuple[float, int, Table]] = []
    stop = asyncio.Event()
    watching = asyncio.create_task(_watch_tables(worker_metrics, seen, stop))
    try:
        report, answers = await drive(
            root, "light", addresses["http"], addresses["grpc"], modelzoo.FEATURES, steps,
            http_clients=6, grpc_clients=2, baseline=2.0, step_timeout=120, keys=KEYS,
        )  # fmt: skip
    finally:
        stop.set()
        await watching
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
        for worker in range(len(worker_metrics)):
            switched = _switched(seen, worker, step.changed_at, TABLES[step.label])
            assert switched is not None, (step, worker)
            assert switched - step.changed_at < 2.0, (step, worker)

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
