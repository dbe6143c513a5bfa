"""`modelgate serve --workers N`: the supervisor's decisions, the merged metrics view, and
real servers of several processes (SIGKILL under load, metrics totals, a crash loop)."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import LISTENING, Process, modelgate

import modelzoo
from modelgate.gateway.metrics_view import merge
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.settings import (
    ServerSettings,
    SettingsError,
    build_settings,
    usable_cores,
)
from modelgate.gateway.supervisor import RestartPolicy, exit_reason
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

STARTED = re.compile(r"supervisor: worker (\d+) started \(pid (\d+)\)")
WORKER_LISTENING = re.compile(r"worker (\d+) \S+: modelgate worker listening .* metrics=(\S+)")


def test_restarts_back_off_and_give_up_on_a_worker_that_keeps_dying() -> None:
    policy = RestartPolicy(window=60, max_deaths=3, first_delay=0.5, max_delay=1.5)
    assert policy.delay([100.0], 100.0) == 0.5
    assert policy.delay([99.0, 100.0], 100.0) == 1.0
    assert policy.delay([98.0, 99.0, 100.0], 100.0) == 1.5  # at most max_delay
    assert policy.delay([97.0, 98.0, 99.0, 100.0], 100.0) is None
    # Deaths longer ago than the window are forgiven.
    assert policy.delay([0.0, 1.0, 2.0, 100.0], 100.0) == 0.5


def test_exit_reasons_are_words() -> None:
    assert exit_reason(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_reason(1) == "exited with status 1"


def test_merged_metrics_sum_counters_and_histograms_and_keep_labels() -> None:
    one = """# TYPE r counter
r_total{model="a",version="1"} 3
r_total{model="a",version="2"} 1
# TYPE d histogram
d_bucket{le="0.1"} 1
d_bucket{le="+Inf"} 2
d_count 2
d_sum 0.5
# TYPE q gauge
modelgate_queue_depth_rows 4
# TYPE loaded gauge
loaded{version="1"} 1
"""
    two = """# TYPE r counter
r_total{model="a",version="1"} 5
# TYPE d histogram
d_bucket{le="0.1"} 0
d_bucket{le="+Inf"} 3
d_count 3
d_sum 1.5
# TYPE q gauge
modelgate_queue_depth_rows 2
# TYPE loaded gauge
loaded{version="1"} 1
"""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in merge([one, two])
        for s in family.samples
    }
    assert samples == {
        ("r_total", (("model", "a"), ("version", "1"))): 8,
        ("r_total", (("model", "a"), ("version", "2"))): 1,
        ("d_bucket", (("le", "0.1"),)): 1,
        ("d_bucket", (("le", "+Inf"),)): 5,
        ("d_count", ()): 5,
        ("d_sum", ()): 2.0,
        ("modelgate_queue_depth_rows", ()): 6,  # rows waiting add up
        ("loaded", (("version", "1"),)): 1,  # a state every worker sees: not doubled
    }


@pytest.mark.parametrize("value", ["0", "-1", "many", "257"])
def test_a_wrong_worker_count_is_one_line(tmp_path: Path, value: str) -> None:
    result = modelgate("serve", "--store", str(tmp_path / "s"), "--workers", value)
    assert (result.returncode, result.stderr) == (
        2,
        f"modelgate: setting workers from the flag --workers: must be a number from 1 to 256 "
        f"or auto, got {value!r}\n",
    )


def test_auto_is_one_worker_per_usable_core() -> None:
    settings = build_settings({"workers": "auto"}, environ={})
    assert settings.worker_count() == usable_cores()
    assert ServerSettings().worker_count() == 1
    with pytest.raises(SettingsError):
        build_settings({"workers": "two"}, environ={})


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, a limit of 1.5 CPUs
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_auto_follows_the_containers_cpu_limit(
    tmp_path: Path, files: dict[str, str], limit: int | None
) -> None:
    """A Kubernetes CPU limit caps `auto`: a pod limited to 2 CPUs on a 64-core node runs
    2 workers, not 64."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (cores if limit is None else min(cores, limit))


@pytest.fixture
def store_dir(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    """A store with `clf` in production."""
    model = tmp_path / "model.onnx"
    model.write_bytes(model_files["classifier"])
    store = tmp_path / "store"
    assert modelgate("registry", "--store", str(store), "register", "clf", str(model),
                     "--stage", "production").returncode == 0  # fmt: skip
    return store


@pytest.fixture
def two_workers(tmp_path: Path, store_dir: Path) -> Iterator[tuple[Process, re.Match[str]]]:
    """`modelgate serve --workers 2` and its listening line (http, grpc, metrics)."""
    process = Process(
        ["serve", "--store", str(store_dir), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--workers", "2", "--drain-delay", "0"], tmp_path,
    )  # fmt: skip
    try:
        yield process, process.wait_for(LISTENING)
    finally:
        process.close()


def _body(rng: np.random.Generator) -> dict[str, object]:
    x = rng.normal(size=(1, 8)).astype(np.float32)
    return {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x.tolist()}]}


def _requests_counted(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelgate_requests_total"
    )


async def _wait_ready(address: str) -> None:
    """Until every worker answers ready (each fresh connection may reach another)."""
    ready = 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=f"http://{address}", limits=limits) as client:
        for _ in range(600):
            ready = ready + 1 if (await client.get("/v2/health/ready")).status_code == 200 else 0
            if ready >= 20:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("never ready")


def _worker_metrics(process: Process) -> dict[str, str]:
    """Each worker's own metrics endpoint, from its latest listening line."""
    return {m.group(1): m.group(2) for m in map(WORKER_LISTENING.search, process.output) if m}


async def test_metrics_and_statistics_totals_equal_the_requests_sent(
    two_workers: tuple[Process, re.Match[str]], rng: np.random.Generator
) -> None:
    process, listening = two_workers
    http_address, grpc_address, metrics_address = listening.groups()
    await _wait_ready(http_address)
    sent = 0
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection, maybe a new worker
    async with httpx.AsyncClient(base_url=f"http://{http_address}", limits=limits) as client:
        for _ in range(120):
            reply = await client.post("/v2/models/clf/infer", json=_body(rng))
            assert reply.status_code == 200, reply.text
            sent += 1
    request = pb.ModelInferRequest(model_name="clf")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(rng.normal(size=8).astype(np.float32).tobytes())
    for _ in range(6):  # a channel is one connection: one worker each
        async with grpc.aio.insecure_channel(grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            for _ in range(10):
                await stub.ModelInfer(request, timeout=30)
                sent += 1
    async with httpx.AsyncClient() as client:
        total = _requests_counted((await client.get(f"http://{metrics_address}/metrics")).text)
        workers = _worker_metrics(process)
        assert len(workers) == 2, process.output
        each = [
            _requests_counted((await client.get(f"http://{address}/metrics")).text)
            for address in workers.values()
        ]
    assert total == sent == sum(each)
    assert all(count > 0 for count in each), each  # both served: the view is really a sum

    # The statistics extension answers for every worker, whichever takes the call.
    async with httpx.AsyncClient(base_url=f"http://{http_address}", limits=limits) as client:
        for _ in range(6):
            [stats] = (await client.get("/v2/models/clf/stats")).json()["model_stats"]
            assert stats["inference_stats"]["success"]["count"] == sent, stats
            assert stats["inference_count"] == sent
    for _ in range(4):
        async with grpc.aio.insecure_channel(grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="clf"), timeout=30)
            [model] = reply.model_stats
            assert model.inference_stats.success.count == sent, model


async def test_a_killed_worker_is_replaced_while_the_others_serve(
    two_workers: tuple[Process, re.Match[str]], rng: np.random.Generator
) -> None:
    process, listening = two_workers
    http_address, _, metrics_address = listening.groups()
    await _wait_ready(http_address)
    pids = {m.group(1): int(m.group(2)) for m in map(STARTED.search, process.output) if m}
    outcomes: list[tuple[str, str]] = []  # (phase, outcome)
    phase = "before"
    stop = asyncio.Event()
    tasks = 16

    async def load() -> None:
        async with httpx.AsyncClient(base_url=f"http://{http_address}") as client:
            while not stop.is_set():
                try:
                    reply = await client.post("/v2/models/clf/infer", json=_body(rng))
                    outcomes.append((phase, str(reply.status_code)))
                except httpx.TransportError as exc:
                    outcomes.append((phase, type(exc).__name__))

    running = [asyncio.create_task(load()) for _ in range(tasks)]
    await asyncio.sleep(0.5)
    phase = "while one is down"
    os.kill(pids["0"], signal.SIGKILL)
    replaced = await asyncio.to_thread(process.wait_for, STARTED)
    assert replaced.group(1) == "0" and int(replaced.group(2)) != pids["0"]
    await asyncio.to_thread(process.wait_for, WORKER_LISTENING)
    phase = "after"
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*running)
    counts = collections.Counter(outcomes)
    # Only requests in flight on the killed worker fail: at most one per connection.
    failed = sum(n for (_, outcome), n in counts.items() if outcome != "200")
    assert failed <= tasks, counts
    assert counts[("while one is down", "200")] > 0, counts  # the other worker kept serving
    assert counts[("after", "200")] > 0, counts
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{metrics_address}/metrics")).text
    restarts = {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelgate_worker_restarts_total"
    }
    assert restarts == {"0": 1.0}
    # The replacement serves: its own metrics count requests once load reaches it.
    new_metrics = _worker_metrics(process)["0"]
    limits = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=f"http://{http_address}", limits=limits) as client,
        httpx.AsyncClient() as scraper,
    ):
        for _ in range(200):
            assert (await client.post("/v2/models/clf/infer", json=_body(rng))).status_code == 200
            if _requests_counted((await scraper.get(f"http://{new_metrics}/metrics")).text):
                break
        else:
            raise AssertionError("the replacement worker never answered")
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.proc.wait, 60) == 0


def test_a_worker_that_keeps_dying_stops_the_server(tmp_path: Path, store_dir: Path) -> None:
    process = Process(
        ["serve", "--store", str(store_dir), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--workers", "2"], tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while process.proc.poll() is None and time.monotonic() < deadline:
            try:
                started = process.wait_for(STARTED, timeout=30)
            except AssertionError:
                break  # the output ended: the supervisor has given up
            if started.group(1) == "0":
                os.kill(int(started.group(2)), signal.SIGKILL)
        assert process.proc.wait(60) == 1
        rest = process.rest()
        assert "modelgate: worker 0 keeps dying (6 times" in rest, rest
        assert "it was killed by SIGKILL); stopping" in rest
    finally:
        process.close()


def _total(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def test_the_guard_judges_all_workers_traffic_together_and_acts_once(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A shadow that disagrees with production: neither worker alone compares the 50 rows
    the guard needs, both together do; it is archived once, by the supervisor's guard."""
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION, actor="t")
    store.register("clf", modelzoo.classifier(first=4), actor="t")
    store.transition("clf", 2, Stage.SHADOW, traffic=100, actor="t")
    config = tmp_path / "modelgate.toml"
    config.write_text("[models.clf]\nguard_enabled = true\nguard_min_requests = 50\n")
    process = Process(
        ["serve", "--store", str(store.root), "--config", str(config), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--workers", "2"], tmp_path,
    )  # fmt: skip
    try:
        http_address, _, metrics_address = process.wait_for(LISTENING).groups()
        await _wait_ready(http_address)
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=f"http://{http_address}", limits=limits) as http:
            for _ in range(28):  # 56 rows, on fresh connections: spread over both workers
                x = rng.normal(size=(2, 8)).astype(np.float32)
                body = {"inputs": [{"name": "input", "shape": [2, 8], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}  # fmt: skip
                assert (await http.post("/v2/models/clf/infer", json=body)).status_code == 200
        deadline = time.monotonic() + 60
        while store.get("clf", 2).stage is not Stage.ARCHIVED:
            assert time.monotonic() < deadline, "".join(process.output)
            await asyncio.sleep(0.2)
        archived = [t for t in store.history("clf") if t.to_stage is Stage.ARCHIVED]
        assert [(t.version, t.actor) for t in archived] == [(2, "modelgate-guard")]
        assert "disagree" in archived[0].reason
        async with httpx.AsyncClient() as client:
            merged = (await client.get(f"http://{metrics_address}/metrics")).text
            texts = [
                (await client.get(f"http://{address}/metrics")).text
                for address in _worker_metrics(process).values()
            ]
        name = "modelgate_shadow_agreement_rows_total"
        compared = [_total(text, name, model="clf", version="2") for text in texts]
        assert all(rows < 50 for rows in compared) and sum(compared) >= 50, compared
        assert _total(merged, "modelgate_guard_rollbacks_total", model="clf", version="2") == 1
    finally:
        process.close()


async def test_the_supervisor_metrics_port_closes_slow_connections_and_serves_the_view(
    tmp_path: Path, store_dir: Path
) -> None:
    process = Process(
        ["serve", "--store", str(store_dir), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--workers", "2", "--drain-delay", "0",
         "--header-timeout", "0.5"], tmp_path,
    )  # fmt: skip
    try:
        metrics_address = process.wait_for(LISTENING).group(3)
        host, port = metrics_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n")  # never ends its head
        async with httpx.AsyncClient() as client:  # others are served meanwhile
            text = (await client.get(f"http://{metrics_address}/metrics")).text
        assert "modelgate_workers" in text
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408")
        await asyncio.wait_for(reader.read(), 10)
        assert reader.at_eof()
        writer.close()
    finally:
        process.close()
