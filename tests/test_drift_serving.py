"""Drift monitoring end to end: a model registered with a reference profile, served; shifted
live traffic shows in the drift report and metrics and fires a signed retraining webhook to a
real receiver; normal traffic resolves it. A gateway killed with SIGKILL and restarted still
delivers what its outbox holds."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from conftest import running, sample, scrape
from loadtest.procs import ServerProcess
from modelgate.gateway.settings import ModelServingSettings, MonitorSettings, ServerSettings
from modelgate.monitor.drift import DriftSettings
from modelgate.monitor.outbox import Outbox
from modelgate.monitor.webhook import verify
from modelgate.registry.reference import reference_profile
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage
from webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
FEATURES = modelzoo.FEATURES


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def store(tmp_path: Path) -> RegistryStore:
    """The classifier in production, registered with the profile of a N(0, 1) sample."""
    model = modelzoo.classifier()
    sample_file = tmp_path / "reference.npy"
    np.save(sample_file, np.random.default_rng(3).normal(size=(4000, FEATURES)).astype("f4"))
    registry = RegistryStore(tmp_path / "store", create=True)
    registry.register(
        "clf", model, stage=Stage.PRODUCTION, reference=reference_profile(model, sample_file)
    )
    return registry


def _settings(store: RegistryStore, webhook: str, outbox: Path) -> ServerSettings:
    models = ModelServingSettings(
        monitor=MonitorSettings(retrain_webhook=webhook),
        drift=DriftSettings(window_rows=500, min_window_rows=100, consecutive_windows=2),
    )
    return ServerSettings(
        store=store.root, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
        drain_delay=0.0, poll_interval=0.1, models=models, webhook_secret=SECRET,
        webhook_outbox=outbox,
    )  # fmt: skip


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, object]:
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    x[:, 2] += shift
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, FEATURES],
                        "data": x.ravel().tolist()}]}  # fmt: skip


async def _send(
    http: httpx.AsyncClient, rng: np.random.Generator, shift: float = 0.0, batches: int = 20
) -> list[int]:
    """`batches` requests of 64 rows (feature 2 shifted by `shift` sd); their statuses."""
    statuses = []
    for _ in range(batches):
        response = await http.post("/v2/models/clf/infer", json=_rows(rng, 64, shift))
        statuses.append(response.status_code)
    return statuses


async def _send_until(
    http: httpx.AsyncClient, rng: np.random.Generator, check: Callable[[], object]
) -> None:
    """Requests of 64 clean rows until `check()` holds: how many rows close the windows
    that settle a drift depends on how the monitor stacked the batches it was given."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        assert (await http.post("/v2/models/clf/infer", json=_rows(rng, 64))).is_success
        await asyncio.sleep(0.01)


async def _until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_shifted_traffic_is_reported_and_fires_a_signed_webhook(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    settings = _settings(store, receiver.url, tmp_path / "outbox.db")
    rng = np.random.default_rng(0)
    async with running(settings, store) as gw:
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            # 1,280 rows with feature 2 shifted by 1.5 sd; drift never changes an answer
            assert await _send(http, rng, shift=1.5) == [200] * 20
            await _until(lambda: receiver.accepted())

            [event] = receiver.accepted()
            headers = event.headers
            assert verify(SECRET, headers["webhook-id"], headers["webhook-timestamp"],
                          event.body, headers["webhook-signature"])  # fmt: skip
            body = orjson.loads(event.body)
            assert body["type"] == "model.drift_detected"
            assert (body["data"]["model"], str(body["data"]["version"])) == ("clf", "1")
            assert body["data"]["window"]["rows"] >= 500
            assert [f["name"] for f in body["data"]["features"]] == ["input[2]"]
            scores = body["data"]["features"][0]["scores"]
            assert scores["psi"] > 0.2

            report = (await http.get("/v2/models/clf/drift")).json()
            versioned = (await http.get("/v2/models/clf/versions/1/drift")).json()
            assert (report["model"], report["version"]) == (versioned["model"], "1")
            assert report["drifting"] is True
            assert report["reference"]["source"] == "registered"
            last = report["windows"][-1]
            drifted = [f["name"] for f in last["inputs"] if f["drifted"]]
            assert drifted == ["input[2]"]
            samples = await scrape(gw)
            assert sample(samples, "modelgate_drift_drifting", model="clf", version="1") == 1
            assert sample(samples, "modelgate_drift_psi", model="clf", version="1",
                          feature="input[2]") > 0.2  # fmt: skip
            assert sample(samples, "modelgate_drift_psi", model="clf", version="1",
                          feature="input[0]") < 0.2  # fmt: skip

            # back to normal: two clean windows resolve it
            await _send_until(http, rng, lambda: len(receiver.accepted()) == 2)
            resolved = orjson.loads(receiver.accepted()[1].body)
            assert resolved["type"] == "model.drift_resolved"
            assert resolved["data"]["detected_event"] == body["id"]
            assert (await http.get("/v2/models/clf/drift")).json()["drifting"] is False

            missing = await http.get("/v2/models/nope/drift")
            assert missing.status_code == 404


async def test_bad_values_are_counted_and_monitoring_can_be_off(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    settings = _settings(store, receiver.url, tmp_path / "outbox.db")
    async with running(settings, store) as gw:
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            x = np.zeros((4, FEATURES), np.float32)
            x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, 1e6
            raw = x.tobytes()  # binary tensors: JSON cannot carry NaN or Inf
            tensor = {"name": "input", "datatype": "FP32", "shape": [4, FEATURES],
                      "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
            header = orjson.dumps({"inputs": [tensor]})
            response = await http.post(
                "/v2/models/clf/infer",
                content=header + raw,
                headers={"inference-header-content-length": str(len(header))},
            )
            assert response.status_code == 200
            # JSON has no NaN: a null in a floating-point input is the missing value.
            data: list[float | None] = [0.0] * (2 * FEATURES)
            data[FEATURES + 3] = None
            nulls = {"name": "input", "datatype": "FP32", "shape": [2, FEATURES], "data": data}
            response = await http.post("/v2/models/clf/infer", json={"inputs": [nulls]})
            assert response.status_code == 200, response.text

            deadline = time.monotonic() + 20
            while (await gw.service.drift_report("clf", None))["rows_seen"] < 6:
                assert time.monotonic() < deadline, "rows not counted in time"
                await asyncio.sleep(0.05)
            samples = await scrape(gw)
            for feature, kind in (("input[0]", "missing"), ("input[1]", "pos_inf"),
                                  ("input[2]", "above_max"), ("input[3]", "missing")):  # fmt: skip
                assert sample(samples, "modelgate_drift_invalid_values_total", model="clf",
                              version="1", feature=feature, kind=kind) == 1  # fmt: skip

    off = dataclasses.replace(
        settings,
        models=dataclasses.replace(settings.models, monitor=MonitorSettings(monitoring=False)),
    )
    async with running(off, store) as gw:
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            answer = await http.get("/v2/models/clf/drift")
            assert answer.status_code == 404
            assert "not monitored" in answer.json()["error"]


@pytest.mark.parametrize("on_the_list", [False, True])
async def test_a_tagged_webhook_url_is_used_only_on_the_allow_list(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture, on_the_list: bool
) -> None:
    """A registry writer tags the version with their own receiver: it gets the events only
    if the operator allowed its URL; otherwise they go to the configured URL."""
    tagged = Receiver()
    tagged.start()
    try:
        model = modelzoo.classifier()
        sample_file = tmp_path / "reference.npy"
        rng = np.random.default_rng(3)
        np.save(sample_file, rng.normal(size=(4000, FEATURES)).astype("f4"))
        store = RegistryStore(tmp_path / "store", create=True)
        store.register(
            "clf", model, stage=Stage.PRODUCTION, reference=reference_profile(model, sample_file),
            tags={"retrain_webhook": tagged.url + "/mine"},
        )  # fmt: skip
        allowed = f"{receiver.url}, {tagged.url}" if on_the_list else receiver.url
        settings = dataclasses.replace(
            _settings(store, receiver.url, tmp_path / "outbox.db"), webhook_allowed_urls=allowed
        )
        async with running(settings, store) as gw:
            assert gw.addresses is not None
            async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
                assert await _send(http, rng, shift=1.5, batches=40) == [200] * 40
                chosen, other = (tagged, receiver) if on_the_list else (receiver, tagged)
                await _until(lambda: chosen.accepted())
                refused = sample(await scrape(gw), "modelgate_webhook_urls_refused_total",
                                 model="clf")  # fmt: skip
        assert other.requests == []
        assert chosen.accepted()[0].path == ("/hooks/mine" if on_the_list else "/hooks")
        lines = [r for r in caplog.records if "not on the webhook allow-list" in r.getMessage()]
        if on_the_list:
            assert (refused, lines) == (0, [])
        else:
            assert refused >= 1 and len(lines) == 1
    finally:
        tagged.stop()


def test_a_gateway_killed_with_sigkill_delivers_its_pending_events_after_restart(
    store: RegistryStore, tmp_path: Path
) -> None:
    receiver = Receiver()  # not started: the receiver is down at first
    outbox = tmp_path / "outbox.db"
    config = tmp_path / "modelgate.toml"
    config.write_text(
        f'retrain_webhook = "{receiver.url}"\nwindow_rows = 500\nmin_window_rows = 100\n'
    )
    argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(store.root),
            "--config", str(config), "--webhook-outbox", str(outbox),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]  # fmt: skip
    environment = {"MODELGATE_WEBHOOK_SECRET": SECRET}

    def start(log: str) -> tuple[ServerProcess, str]:
        server = ServerProcess(argv, tmp_path / log, env=environment)
        found = server.wait_for_line(r"modelgate listening http=(\S+)", timeout=60)
        http = f"http://{found.group(1)}"
        server.wait_http_ok(f"{http}/v2/health/ready", timeout=60)
        return server, http

    first, http = start("first.log")
    try:
        rng = np.random.default_rng(1)
        for _ in range(20):
            assert httpx.post(f"{http}/v2/models/clf/infer", json=_rows(rng, 64, 1.5)).is_success
        deadline = time.monotonic() + 30
        while not Outbox(outbox).pending_count():
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
        time.sleep(1.5)  # a few failed delivery attempts against the closed port
    finally:
        first.kill()
    [pending] = Outbox(outbox).events()
    assert pending.attempts >= 1 and pending.delivered_at is None

    receiver.start()
    second, _ = start("second.log")
    try:
        deadline = time.monotonic() + 60
        while not receiver.accepted():
            assert time.monotonic() < deadline, second.log_tail()
            time.sleep(0.1)
        time.sleep(1.0)  # nothing else should follow
        [delivered] = receiver.accepted()
        assert delivered.id == pending.id
        assert delivered.body == pending.payload
    finally:
        assert second.stop() == 0
        receiver.stop()


class _TwoWorkers:
    """`modelgate serve --workers 2` over `store`, drift settings from `config` (TOML lines),
    webhooks to `receiver`; `report_when` reads the drift report on fresh connections (each
    may reach either worker)."""

    def __init__(self, tmp_path: Path, store: RegistryStore, receiver: Receiver, config: str):
        path = tmp_path / "modelgate.toml"
        path.write_text(f'retrain_webhook = "{receiver.url}"\n{config}')
        argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(store.root),
                "--config", str(path), "--webhook-outbox", str(tmp_path / "outbox.db"),
                "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                "--workers", "2"]  # fmt: skip
        self.server = ServerProcess(
            argv, tmp_path / "gateway.log", env={"MODELGATE_WEBHOOK_SECRET": SECRET}
        )
        found = self.server.wait_for_line(
            r"modelgate listening http=(\S+) grpc=\S+ metrics=(\S+)", 60
        )
        self.http, self.metrics = f"http://{found.group(1)}", f"http://{found.group(2)}/metrics"
        self.wait_ready()
        self.drift = f"{self.http}/v2/models/clf/versions/1/drift"

    def wait_ready(self) -> None:
        for _ in range(20):
            self.server.wait_http_ok(f"{self.http}/v2/health/ready", timeout=60)

    def log(self) -> str:
        return self.server.log_path.read_text()

    def report_when(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            with httpx.Client(limits=FRESH) as client:
                doc: dict[str, Any] = client.get(self.drift).json()
            if check(doc):
                return doc
            assert time.monotonic() < deadline, (doc, self.server.log_tail())
            time.sleep(0.05)

    def send(self, rng: np.random.Generator, rows: int, shift: float = 0.0) -> None:
        """`rows` rows in requests of 64, spread over both workers."""
        with httpx.Client(limits=FRESH) as client:
            for _ in range(rows // 64):
                reply = client.post(f"{self.http}/v2/models/clf/infer", json=_rows(rng, 64, shift))
                assert reply.is_success, reply.text

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The supervisor's /metrics."""
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(httpx.get(self.metrics).text)
            for s in family.samples
        }

    def wait_webhooks(self, receiver: Receiver) -> list[Any]:
        """The events received, once one came and a second would have followed."""
        deadline = time.monotonic() + 30
        while not receiver.accepted():
            assert time.monotonic() < deadline, self.server.log_tail()
            time.sleep(0.1)
        time.sleep(1.0)  # a second event would follow within its first attempt
        return receiver.accepted()


FRESH = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker
WORKER_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def test_two_workers_feed_one_monitor_that_sends_one_webhook_and_one_report(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    """Every worker's sketches go to the supervisor's one monitor: a window of W rows closes
    after W rows spread over both workers, a drift is one webhook, the drift report is the
    same whichever worker answers, and /metrics counts each row once."""
    window = 1000
    config = f"window_rows = {window}\nmin_window_rows = 100\nwindow_seconds = 3600\n"
    gateway = _TwoWorkers(tmp_path, store, receiver, config + "consecutive_windows = 1\n")
    try:
        workers = re.findall(r"worker listening .* metrics=(\S+)", gateway.log())
        assert len(workers) == 2, gateway.server.log_tail()
        rng = np.random.default_rng(2)
        sent = 1024  # clean rows, just over a window, spread over both workers
        gateway.send(rng, sent)
        served = [_served_rows(w) for w in workers]
        assert sum(served) == sent and all(0 < rows < window for rows in served), served
        doc = gateway.report_when(lambda d: d["rows_seen"] == sent)
        assert len(doc["windows"]) == 1 and doc["windows"][0]["rows"] >= window, doc
        assert not doc["drifting"] and doc["workers"] == 2

        gateway.send(rng, 1984, shift=1.5)  # shifted rows: the next windows drift
        sent += 1984
        doc = gateway.report_when(lambda d: d["rows_seen"] == sent)
        assert doc["drifting"] and len(doc["windows"]) >= 2, doc
        [event] = gateway.wait_webhooks(receiver)
        assert orjson.loads(event.body)["type"] == "model.drift_detected"

        with httpx.Client(limits=FRESH) as client:  # whichever worker answers
            answers = [client.get(gateway.drift).json() for _ in range(20)]
        assert all(answer == doc for answer in answers)
        samples = gateway.samples()
        assert sample(samples, "modelgate_drift_rows_total", model="clf", version="1") == sent
        assert sample(samples, "modelgate_drift_drifting", model="clf", version="1") == 1
    finally:
        assert gateway.server.stop() == 0


def test_a_killed_worker_leaves_the_version_to_the_survivor_and_its_replacement(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    """SIGKILL one of two workers during a drift: the survivor keeps the version's windows
    and history (one watcher left), the replacement joins the same windows, and the drift
    stays one webhook."""
    config = "window_rows = 500\nmin_window_rows = 100\nwindow_seconds = 3600\n"
    gateway = _TwoWorkers(tmp_path, store, receiver, config + "consecutive_windows = 1\n")
    try:
        rng = np.random.default_rng(4)
        gateway.report_when(lambda d: d.get("workers") == 2)  # both watch it, traffic or not
        gateway.send(rng, 1280, shift=1.5)
        before = gateway.report_when(lambda d: d["rows_seen"] == 1280 and d["drifting"])
        [detected] = gateway.wait_webhooks(receiver)

        pids = dict(WORKER_STARTED.findall(gateway.log()))
        os.kill(int(pids["0"]), signal.SIGKILL)
        survivor = gateway.report_when(lambda d: d.get("workers") == 1)
        assert survivor["rows_seen"] == 1280 and survivor["drifting"]
        assert survivor["windows"] == before["windows"]  # the same windows, not new ones

        gateway.server.wait_for_line(r"worker 0 started \(pid (?!" + pids["0"] + r"\b)\d+", 60)
        gateway.wait_ready()
        gateway.report_when(lambda d: d.get("workers") == 2)
        gateway.send(rng, 1280, shift=1.5)  # spread over the survivor and the replacement
        after = gateway.report_when(lambda d: d["rows_seen"] == 2560)
        assert after["drifting"] and len(after["windows"]) > len(before["windows"]), after
        assert gateway.wait_webhooks(receiver) == [detected]  # the same drift: no new event
    finally:
        assert gateway.server.stop() == 0


def test_a_retired_version_stops_being_monitored_even_after_its_workers_died(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    """Both workers killed (and replaced), then the version archived: the supervisor stops
    monitoring it (its drift series leave /metrics)."""
    gateway = _TwoWorkers(tmp_path, store, receiver, "window_rows = 500\npoll_interval = 0.2\n")
    try:
        rng = np.random.default_rng(6)
        gateway.send(rng, 640)
        gateway.report_when(lambda d: d["rows_seen"] == 640)
        monitored = "modelgate_drift_rows_total", frozenset({("model", "clf"), ("version", "1")})
        assert monitored in gateway.samples()

        for _, pid in WORKER_STARTED.findall(gateway.log()):
            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(WORKER_STARTED.findall(gateway.log())) < 4:
            assert time.monotonic() < deadline, gateway.server.log_tail()
            time.sleep(0.1)
        gateway.wait_ready()

        store.transition("clf", 1, Stage.ARCHIVED)
        deadline = time.monotonic() + 30
        while monitored in gateway.samples():
            assert time.monotonic() < deadline, gateway.server.log_tail()
            time.sleep(0.1)
        with httpx.Client(limits=FRESH) as client:
            assert client.get(gateway.drift).status_code == 404
    finally:
        assert gateway.server.stop() == 0


def test_two_workers_learn_one_reference_from_learn_rows_of_their_traffic(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A version without a reference: learn_rows rows in all, spread over two workers, make
    the reference (not learn_rows on each), and every row counts in the report."""
    registry = RegistryStore(tmp_path / "store", create=True)
    registry.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION)
    learn = 1024
    gateway = _TwoWorkers(tmp_path, registry, receiver, f"learn_rows = {learn}\n")
    try:
        workers = re.findall(r"worker listening .* metrics=(\S+)", gateway.log())
        rng = np.random.default_rng(7)
        gateway.send(rng, learn)
        served = [_served_rows(w) for w in workers]
        assert sum(served) == learn and all(0 < rows < learn for rows in served), served
        doc = gateway.report_when(lambda d: d["reference"]["source"] == "learned")
        assert doc["reference"]["rows"] == learn and doc["rows_seen"] == learn, doc

        gateway.send(rng, 640)  # sketched against it, whichever worker serves them
        gateway.report_when(lambda d: d["rows_seen"] == learn + 640 and d["sketches"] > 0)
    finally:
        assert gateway.server.stop() == 0


def _served_rows(metrics: str) -> float:
    """The rows one worker served (requests of 64), by its own metrics."""
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(httpx.get(f"http://{metrics}/metrics").text)
        for s in family.samples
    }
    requests = sample(
        samples, "modelgate_requests_total", model="clf", version="1", protocol="http", outcome="OK"
    )
    return 64 * requests


async def test_a_persisting_drift_fires_again_after_the_cooldown(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        _settings(store, receiver.url, tmp_path / "outbox.db"), webhook_cooldown=1.0
    )
    rng = np.random.default_rng(5)
    async with running(settings, store) as gw:
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            deadline = time.monotonic() + 30
            while len(receiver.accepted()) < 2:
                assert time.monotonic() < deadline, "no second drift_detected"
                await http.post("/v2/models/clf/infer", json=_rows(rng, 64, 1.5))
                await asyncio.sleep(0.02)
    detected = [orjson.loads(r.body) for r in receiver.accepted()]
    assert [d["type"] for d in detected[:2]] == ["model.drift_detected"] * 2
    assert detected[0]["id"] != detected[1]["id"]
    # Not before the cooldown, which counts from when each event was decided (delivery
    # times would add the first delivery's own delay).
    events = Outbox(tmp_path / "outbox.db").events()
    first, second = [e.created for e in events if e.type == "model.drift_detected"][:2]
    assert second - first >= 1.0


async def test_a_restarted_gateway_announces_the_end_of_a_drift_it_inherited(
    store: RegistryStore, receiver: Receiver, tmp_path: Path
) -> None:
    settings = _settings(store, receiver.url, tmp_path / "outbox.db")
    rng = np.random.default_rng(8)
    async with running(settings, store) as gw:
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            await _send(http, rng, shift=1.5)
            await _until(lambda: receiver.accepted())
    async with running(settings, store) as gw:  # a new process: the outbox remembers
        assert gw.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
            assert (await http.get("/v2/models/clf/drift")).json()["drifting"] is True
            await _send_until(http, rng, lambda: len(receiver.accepted()) == 2)
    detected, resolved = (orjson.loads(r.body) for r in receiver.accepted())
    assert resolved["type"] == "model.drift_resolved"
    assert resolved["data"]["detected_event"] == detected["id"]
