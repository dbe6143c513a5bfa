"""The gateway follows the registry: canaries, promotion, rollback, shadows, staging, failed
loads, an unreachable registry and the rollout guard — on a real gateway and real store."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

import modelzoo
from conftest import running, sample, scrape
from modelgate.gateway.core.guard import RolloutGuard, ServedTraffic
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import GuardSettings, ModelServingSettings, ServerSettings
from modelgate.registry.errors import UnavailableError
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

FEATURES = modelzoo.FEATURES


@pytest.fixture
def store(tmp_path: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """One classifier: v1 in production, v2 registered (same kind of model), v3 a model
    that disagrees with v1 on most rows."""
    registry = RegistryStore(tmp_path / "store", create=True)
    registry.register("clf", model_files["classifier"], stage=Stage.PRODUCTION, actor="t")
    registry.register("clf", model_files["classifier"], actor="t")
    registry.register("clf", modelzoo.classifier(first=4), actor="t")
    return registry


@pytest.fixture
def settings(store: RegistryStore) -> ServerSettings:
    return ServerSettings(
        store=store.root, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
        drain_delay=0.0, drain_seconds=5.0, poll_interval=0.05,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    assert gw.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{gw.addresses.http}") as http:
        yield http


def _body(rows: int = 1, seed: int = 0) -> dict[str, object]:
    x = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, FEATURES],
                        "data": x.ravel().tolist()}]}  # fmt: skip


async def _infer(
    http: httpx.AsyncClient, key: str | None = None, version: str | None = None, seed: int = 0
) -> httpx.Response:
    path = "/v2/models/clf" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {"x-routing-key": key} if key is not None else {}
    return await http.post(path, json=_body(seed=seed), headers=headers)


async def _answered_by(http: httpx.AsyncClient, key: str | None = None) -> str:
    response = await _infer(http, key)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


async def _eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


async def _stage_of(http: httpx.AsyncClient, version: str) -> dict[str, object]:
    status = (await http.get("/v2/models/clf")).json()["status"]
    return next((s for s in status if s["version"] == version), {})


async def test_canary_takes_its_share_and_keys_stay_put(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with running(settings, store) as gw, client(gw) as http:
        assert await _answered_by(http) == "1"
        store.transition("clf", 2, Stage.CANARY, traffic=30, actor="t")

        async def canary_serving() -> bool:
            return (await _stage_of(http, "2")).get("traffic") == 30.0

        await _eventually(canary_serving)
        counts = collections.Counter([await _answered_by(http) for _ in range(600)])
        assert set(counts) == {"1", "2"}
        assert counts["2"] / 600 == pytest.approx(0.30, abs=0.10)  # 5 sd of 600 draws

        pinned = {f"user-{i}": await _answered_by(http, f"user-{i}") for i in range(60)}
        assert {await _answered_by(http, k) for k in pinned for _ in range(2)} <= {"1", "2"}
        for key, version in pinned.items():
            assert await _answered_by(http, key) == version

        store.transition("clf", 2, Stage.CANARY, traffic=80, actor="t")

        async def raised() -> bool:
            return (await _stage_of(http, "2")).get("traffic") == 80.0

        await _eventually(raised)
        for key, version in pinned.items():
            moved_to = await _answered_by(http, key)
            assert moved_to == version or (version, moved_to) == ("1", "2")

        samples = await scrape(gw)
        assert sample(samples, "modelgate_traffic_share_percent", model="clf", version="2",
                      role="canary") == 80.0  # fmt: skip
        assert sample(samples, "modelgate_traffic_share_percent", model="clf", version="1",
                      role="primary") == 20.0  # fmt: skip


async def test_grpc_routing_keys_pick_a_version_only_while_traffic_is_split(
    settings: ServerSettings, store: RegistryStore
) -> None:
    x = np.zeros((1, FEATURES), np.float32)
    request = pb.ModelInferRequest(
        model_name="clf",
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, FEATURES])],
        raw_input_contents=[x.tobytes()],
    )  # fmt: skip
    async with running(settings, store) as gw, client(gw) as http:
        assert gw.addresses is not None
        async with grpc.aio.insecure_channel(gw.addresses.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def version_for(key: str) -> str:
                reply = await stub.ModelInfer(request, metadata=(("x-routing-key", key),))
                return str(reply.model_version)

            keys = [f"user-{i}" for i in range(40)]
            assert {await version_for(k) for k in keys} == {"1"}
            store.transition("clf", 2, Stage.CANARY, traffic=50, actor="t")

            async def canary_serving() -> bool:
                return (await _stage_of(http, "2")).get("traffic") == 50.0

            await _eventually(canary_serving)
            pinned = {k: await version_for(k) for k in keys}
            assert set(pinned.values()) == {"1", "2"}
            for _ in range(3):
                assert {k: await version_for(k) for k in keys} == pinned


async def test_promotion_and_rollback_swap_without_failures(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with running(settings, store) as gw, client(gw) as http:
        failures: list[str] = []
        seen: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                response = await _infer(http)
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    seen.append(str(response.json()["model_version"]))

        workers = [asyncio.create_task(load()) for _ in range(8)]
        try:
            store.transition("clf", 2, Stage.PRODUCTION, actor="t")
            await _eventually(lambda: seen and seen[-1] == "2")
            # v1 was archived: it drains, unloads and is gone from the model's versions.
            await _eventually(
                lambda: "1" not in [d.version for d in gw.deployments.versions_of("clf")]
            )
            store.transition("clf", 1, Stage.PRODUCTION, actor="t")  # rollback: reload v1
            await _eventually(lambda: seen[-1] == "1")
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert failures == []
        assert {"1", "2"} <= set(seen)
        assert (await _infer(http, version="2")).status_code == 404
        samples = await scrape(gw)
        assert sample(samples, "modelgate_model_loaded", model="clf", version="2") == 0


async def test_keep_leaves_the_old_version_in_staging_for_explicit_requests(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 2, Stage.PRODUCTION, keep=True, actor="t")

        async def promoted() -> bool:
            return await _answered_by(http) == "2"

        await _eventually(promoted)
        assert {await _answered_by(http) for _ in range(50)} == {"2"}
        response = await _infer(http, version="1")
        assert response.status_code == 200
        assert response.json()["model_version"] == "1"
        assert (await _stage_of(http, "1"))["stage"] == "staging"
        assert gw.service.ready()


async def test_shadow_is_compared_but_never_answers(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 3, Stage.SHADOW, traffic=100, actor="t")

        async def shadowing() -> bool:
            return (await _stage_of(http, "3")).get("state") == "READY" and bool(
                gw.deployments.shadows("clf")
            )

        await _eventually(shadowing)
        versions = {
            str(
                (await http.post("/v2/models/clf/infer", json=_body(rows=4, seed=i))).json()[
                    "model_version"
                ]
            )
            for i in range(100)
        }
        assert versions == {"1"}

        async def compared() -> bool:
            samples = await scrape(gw)
            return sample(samples, "modelgate_shadow_requests_total", model="clf", version="3",
                          outcome="compared") == 100  # fmt: skip

        await _eventually(compared)
        samples = await scrape(gw)
        agree = sample(samples, "modelgate_shadow_agreement_rows_total", model="clf",
                       version="3", output="label", result="agree")  # fmt: skip
        disagree = sample(samples, "modelgate_shadow_agreement_rows_total", model="clf",
                          version="3", output="label", result="disagree")  # fmt: skip
        assert agree + disagree == 400
        assert disagree > 100  # v3 decides on other features
        assert sample(samples, "modelgate_shadow_abs_diff_count", model="clf", version="3",
                      output="probabilities") == 400  # fmt: skip
        assert sample(samples, "modelgate_shadow_duration_seconds_count", model="clf",
                      version="3") == 100  # fmt: skip
        # A request addressed to the shadow version is still answered by it.
        assert (await _infer(http, version="3")).json()["model_version"] == "3"


async def test_staging_is_loaded_but_takes_no_live_traffic(
    settings: ServerSettings, store: RegistryStore
) -> None:
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 2, Stage.STAGING, actor="t")

        async def loaded() -> bool:
            return (await _infer(http, version="2")).status_code == 200

        await _eventually(loaded)
        assert {await _answered_by(http) for _ in range(100)} == {"1"}


async def test_a_version_that_fails_to_load_leaves_routing_alone(
    settings: ServerSettings, store: RegistryStore
) -> None:
    record = store.get("clf", 3)
    artifact = store.root / "artifacts" / "sha256" / record.sha256
    artifact.write_bytes(artifact.read_bytes()[:-10])  # damaged on disk after registration
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 3, Stage.PRODUCTION, actor="t")

        async def failed() -> bool:
            return (await _stage_of(http, "3")).get("state") == "FAILED"

        await _eventually(failed)
        status = await _stage_of(http, "3")
        assert "sha256" in str(status["error"])
        assert {await _answered_by(http) for _ in range(50)} == {"1"}
        assert (await _stage_of(http, "1"))["stage"].startswith("production")
        response = await _infer(http, version="3")
        assert response.status_code == 503
        samples = await scrape(gw)
        assert sample(samples, "modelgate_model_load_failures_total", model="clf",
                      version="3") >= 1  # fmt: skip


class _FlakyRegistry:
    """The real store behind a switch that makes every read fail as a network error would."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.store, name)
        if not callable(attribute):
            return attribute

        def call(*args: object, **kwargs: object) -> object:
            if self.down:
                raise UnavailableError("registry unreachable (test)")
            return attribute(*args, **kwargs)

        return call


async def test_an_unreachable_registry_leaves_serving_alone(
    settings: ServerSettings, store: RegistryStore
) -> None:
    flaky = _FlakyRegistry(store)
    gw = Gateway(settings, flaky)  # type: ignore[arg-type]
    await gw.start()
    try:
        await gw.wait_loaded()
        async with client(gw) as http:
            flaky.down = True
            store.transition("clf", 2, Stage.PRODUCTION, actor="t")
            await _eventually(lambda: _polls(gw, "error") >= 2)
            assert {await _answered_by(http) for _ in range(20)} == {"1"}
            flaky.down = False

            async def caught_up() -> bool:
                return await _answered_by(http) == "2"

            await _eventually(caught_up, timeout=15)
    finally:
        await gw.stop()


async def test_an_outage_is_logged_once_and_so_is_the_recovery(
    settings: ServerSettings, store: RegistryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Not one line per failed poll: a registry down for an hour would write thousands."""
    flaky = _FlakyRegistry(store)
    settings = dataclasses.replace(settings, poll_interval=0.01)
    gw = Gateway(settings, flaky)  # type: ignore[arg-type]
    await gw.start()
    try:
        await gw.wait_loaded()
        caplog.set_level(logging.INFO, logger="modelgate")
        flaky.down = True
        await _eventually(lambda: _polls(gw, "error") >= 5)
        failed = [r for r in caplog.records if "registry poll failed" in r.getMessage()]
        assert [r.levelno for r in failed] == [logging.WARNING]
        assert "registry unreachable (test)" in failed[0].getMessage()
        flaky.down = False
        await _eventually(lambda: any("readable again" in r.getMessage() for r in caplog.records))
        await _eventually(lambda: _polls(gw, "ok") >= 3)
        recovered = [r.getMessage() for r in caplog.records if "readable again" in r.getMessage()]
        assert len(recovered) == 1
        assert f"after {int(_polls(gw, 'error'))} failed attempt(s)" in recovered[0]
    finally:
        await gw.stop()


async def test_the_guard_archives_a_disagreeing_shadow(
    settings: ServerSettings, store: RegistryStore
) -> None:
    guard = GuardSettings(guard_enabled=True, guard_min_requests=50, guard_window_seconds=30)
    settings = dataclasses.replace(
        settings, model_overrides={"clf": ModelServingSettings(guard=guard)}
    )
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 3, Stage.SHADOW, traffic=100, actor="t")
        await _eventually(lambda: bool(gw.deployments.shadows("clf")))

        def archived() -> bool:
            return store.get("clf", 3).stage is Stage.ARCHIVED

        # Steady traffic until the guard acts: it judges from its first look at a version
        # (once a second), so a burst served entirely before that look is not counted.
        for i in range(1500):
            await http.post("/v2/models/clf/infer", json=_body(rows=4, seed=i))
            if archived():
                break
            await asyncio.sleep(0.01)
        await _eventually(archived, timeout=15)
        last = store.history("clf")[-1]
        assert (last.version, last.to_stage, last.actor) == (3, Stage.ARCHIVED, "modelgate-guard")
        assert "disagree" in last.reason
        await _eventually(lambda: not gw.deployments.shadows("clf"))
        assert (
            gw.metrics.registry.get_sample_value(
                "modelgate_guard_rollbacks_total",
                {"model": "clf", "version": "3", "rule": "disagreement"},
            )
            == 1
        )


async def test_the_guard_archives_a_canary_that_times_out(
    settings: ServerSettings, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path / "slow", create=True)
    store.register("clf", modelzoo.echo("FP32", width=4), stage=Stage.PRODUCTION, actor="t")
    store.register("clf", modelzoo.slow(width=4), actor="t")
    guard = GuardSettings(guard_enabled=True, guard_min_requests=20, guard_max_error_rate=0.2)
    settings = dataclasses.replace(
        settings, store=store.root, model_overrides={"clf": ModelServingSettings(guard=guard)}
    )
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 2, Stage.CANARY, traffic=50, actor="t")
        await _eventually(lambda: len(gw.deployments.routes("clf").split.arms) == 2)  # type: ignore[union-attr]
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
        }
        headers = {"x-request-timeout-ms": "20"}
        for _ in range(120):
            await http.post("/v2/models/clf/infer", json=body, headers=headers)
            if store.get("clf", 2).stage is Stage.ARCHIVED:
                break
        await _eventually(lambda: store.get("clf", 2).stage is Stage.ARCHIVED, timeout=15)
        reason = store.history("clf")[-1].reason
        assert "error rate" in reason


def _polls(gw: Gateway, outcome: str) -> float:
    value = gw.metrics.registry.get_sample_value(
        "modelgate_registry_polls_total", {"outcome": outcome}
    )
    return value or 0.0


def _loaded_versions(gw: Gateway) -> list[str]:
    return [d.version for d in gw.deployments.versions_of("clf")]


def _share(gw: Gateway, version: str) -> float | None:
    return next((s.traffic for s in gw.deployments.status("clf") if s.version == version), None)


async def test_a_changed_artifact_reloads_the_version_and_retires_the_old_copy(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """(MLflow can attach a sha256 to a version that is already served.) The new copy
    loads, then the old one is drained and unloaded; nothing is left running."""
    async with running(settings, store) as gw, client(gw) as http:
        old = gw.deployments.get("clf", "1")
        assert old.batcher is not None
        thread = old.batcher._thread
        records = store.list_versions("clf")
        changed = dataclasses.replace(records[0], sha256=records[2].sha256)  # v3's bytes
        gw.deployments.apply([changed, *records[1:]])
        await gw.deployments.wait_idle()
        new = gw.deployments.get("clf", "1")
        assert new is not old and new.ready
        assert old.state.value == "UNLOADED" and old.model is None
        assert not thread.is_alive()
        assert await _answered_by(http) == "1"
        assert [d.version for d in gw.deployments.all()] == ["1"]


async def test_the_guard_never_archives_a_version_promoted_meanwhile(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """Its routes can be a poll behind the registry: a canary a person has just promoted
    must stay in production even if its last window looked bad."""
    async with running(settings, store) as gw:
        store.transition("clf", 2, Stage.CANARY, traffic=10, actor="t")
        await _eventually(lambda: _share(gw, "2") == 10)
        canary = gw.deployments.get("clf", "2")
        store.transition("clf", 2, Stage.PRODUCTION, actor="t")
        await gw.guard._archive(canary, "error_rate", "a stale verdict")
        assert store.get("clf", 2).stage is Stage.PRODUCTION
        assert store.history("clf")[-1].actor == "t"


def _bypass(store: RegistryStore, version: int, **columns: object) -> None:
    """Change `clf` v`version` in the store's database directly, as a writer that skips the
    registry's checks would (or a registry that makes none, like MLflow)."""
    sets = ", ".join(f"{column} = ?" for column in columns)
    db = sqlite3.connect(store.root / "registry.db", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            f"UPDATE model_versions SET {sets} WHERE name = 'clf' AND version = ?",
            (*columns.values(), version),
        )
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        db.execute("COMMIT")
    finally:
        db.close()


def _mismatch(gw: Gateway, version: str) -> float | None:
    return gw.metrics.registry.get_sample_value(
        "modelgate_signature_mismatch", {"model": "clf", "version": version}
    )


async def test_a_canary_or_shadow_that_does_not_fit_production_gets_no_traffic(
    settings: ServerSettings,
    store: RegistryStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway's own check, for stage changes the registry did not check: v4 takes `x`
    where production takes `input`. It stays out of the routes (a log line, a gauge) and
    still answers requests that name it, until a tag allows the difference."""
    echo = modelzoo.echo("FP32", width=FEATURES)
    store.register("clf", echo, actor="t")  # v4
    store.register("clf", echo, actor="t")  # v5
    async with running(settings, store) as gw, client(gw) as http:
        _bypass(store, 4, stage="canary", traffic=50.0)
        _bypass(store, 5, stage="shadow", traffic=100.0)

        def loaded() -> bool:
            versions = {d.version: d.ready for d in gw.deployments.versions_of("clf")}
            return versions.get("4", False) and versions.get("5", False)

        await _eventually(loaded)
        routes = gw.deployments.routes("clf")
        assert routes is not None
        assert [arm.target.version for arm in routes.split.arms] == ["1"]
        assert routes.shadows == ()
        assert {await _answered_by(http, f"user-{i}") for i in range(40)} == {"1"}
        x = {"name": "x", "datatype": "FP32", "shape": [1, FEATURES], "data": [0.5] * FEATURES}
        named = await http.post("/v2/models/clf/versions/4/infer", json={"inputs": [x]})
        assert named.status_code == 200, named.text
        assert (_mismatch(gw, "4"), _mismatch(gw, "5")) == (1.0, 1.0)
        held = [r.getMessage() for r in caplog.records if "takes no traffic" in r.getMessage()]
        assert len(held) == 2, held  # once each, however often the routes were rebuilt
        held.sort()  # v4 and v5 load side by side: either may be held first
        assert held[0].startswith(
            "model clf v4 (canary) takes no traffic: its signature differs from production v1 "
            "(production != version 4): input 'input' is missing (version 4 has 'x'); "
        )

        _bypass(store, 4, tags='{"modelgate.signature_change": "x clients"}')
        await _eventually(lambda: _share(gw, "4") == 50.0)
        assert _mismatch(gw, "4") is None
        assert _mismatch(gw, "5") == 1.0
        _bypass(store, 5, stage="archived", traffic=None)
        await _eventually(lambda: _mismatch(gw, "5") is None)


def _bad_body() -> dict[str, object]:
    """A request no version of `clf` can take: an input none of them has."""
    return {"inputs": [{"name": "wrong", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": [0.0] * FEATURES}]}  # fmt: skip


async def test_the_guard_compares_a_canarys_client_errors_with_productions(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """Judged by hand at chosen instants (the server's own guard is off for `clf`): requests
    that every version refuses are nobody's fault; a canary that refuses what production
    answers is."""
    store.register("clf", modelzoo.echo("FP32", width=FEATURES), actor="t")  # v4 takes `x`
    guard = GuardSettings(guard_enabled=True, guard_min_requests=20, guard_max_p99_ratio=1e6)
    guarded = dataclasses.replace(
        settings, model_overrides={"clf": ModelServingSettings(guard=guard)}
    )
    async with running(settings, store) as gw, client(gw) as http:
        traffic = ServedTraffic(gw.deployments, gw.mirror)
        judge = RolloutGuard(traffic, store, guarded, gw.metrics.guard_rollbacks)
        store.transition("clf", 2, Stage.CANARY, traffic=50, actor="t")
        await _eventually(lambda: _share(gw, "2") == 50.0)
        judge.check(0.0)
        for i in range(100):  # each key sends one bad and one good request to its version
            key = {"x-routing-key": f"u{i}"}
            bad = await http.post("/v2/models/clf/infer", json=_bad_body(), headers=key)
            assert bad.status_code == 400
            await _answered_by(http, f"u{i}")
        assert judge.check(1.0) == []

        store.transition("clf", 2, Stage.ARCHIVED, actor="t")
        store.transition("clf", 4, Stage.CANARY, traffic=50, actor="t", reason="x",
                         allow_signature_change=True)  # fmt: skip
        await _eventually(lambda: _share(gw, "4") == 50.0)
        judge.check(1000.0)
        statuses = collections.Counter(
            [(await _infer(http, f"u{i}")).status_code for i in range(100)]
        )
        assert set(statuses) == {200, 400}
        verdicts = judge.check(1001.0)
        assert [(d.version, rule) for d, rule, _ in verdicts] == [("4", "client_error_rate")]
        assert verdicts[0][2].startswith(f"client-error rate 100.0% (invalid requests) over "
                                         f"{statuses[400]} requests")  # fmt: skip
        assert "exceeds production's 0.0% on the same traffic by more than 5.0%" in verdicts[0][2]


async def test_the_guard_archives_a_canary_that_refuses_what_clients_send(
    settings: ServerSettings, store: RegistryStore
) -> None:
    """The incident: a canary whose input is named `x` instead of `input`, let in on purpose,
    answers 400 to its share of the traffic while production answers it; the guard archives
    it with the reason in the audit trail."""
    store.register("clf", modelzoo.echo("FP32", width=FEATURES), actor="t")  # v4 takes `x`
    guard = GuardSettings(guard_enabled=True, guard_min_requests=20, guard_max_p99_ratio=1e6)
    settings = dataclasses.replace(
        settings, model_overrides={"clf": ModelServingSettings(guard=guard)}
    )
    async with running(settings, store) as gw, client(gw) as http:
        store.transition("clf", 4, Stage.CANARY, traffic=20, actor="t",
                         reason="clients move to x", allow_signature_change=True)  # fmt: skip
        await _eventually(lambda: _share(gw, "4") == 20.0)
        statuses: collections.Counter[int] = collections.Counter()
        deadline = time.monotonic() + 60  # bounds the run; the guard judges once a second
        i = 0
        while store.get("clf", 4).stage is Stage.CANARY and time.monotonic() < deadline:
            for _ in range(20):
                statuses[(await _infer(http, f"user-{i}")).status_code] += 1
                i += 1
            await asyncio.sleep(0.02)
        assert store.get("clf", 4).stage is Stage.ARCHIVED
        assert set(statuses) == {200, 400}
        last = store.history("clf")[-1]
        assert (last.version, last.to_stage, last.actor) == (4, Stage.ARCHIVED, "modelgate-guard")
        assert last.reason.startswith("rollout guard (client_error_rate): client-error rate 100.0%")
        assert last.reason.endswith("its inputs or outputs may differ from what clients send")
        allowed = store.history("clf")[-2]
        assert allowed.reason.startswith("signature change allowed (input 'input' is missing")
        await _eventually(lambda: _share(gw, "4") is None)
        assert (
            gw.metrics.registry.get_sample_value(
                "modelgate_guard_rollbacks_total",
                {"model": "clf", "version": "4", "rule": "client_error_rate"},
            )
            == 1
        )
