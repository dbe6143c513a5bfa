"""Server readiness with a model that cannot load, over HTTP, gRPC, the metrics and the log,
in the default rule and in strict readiness; and a registry unreachable at startup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc

import modelzoo
from conftest import running, sample, scrape
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.remote import RemoteRegistry
from modelgate.registry.server import build_app
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import ModelVersion, Stage

FEATURES = modelzoo.FEATURES


def _damage(store: RegistryStore, record: ModelVersion) -> None:
    """Make a registered version unloadable: its artifact changes on disk after registration
    (as a bad MLflow upload would), so loading it fails."""
    (store.root / "artifacts" / "sha256" / record.sha256).write_bytes(b"not the model")


@pytest.fixture
def store(tmp_path: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """`good` serves; `broken` has one version, in production, that cannot load."""
    registry = RegistryStore(tmp_path / "store", create=True)
    registry.register("good", model_files["classifier"], stage=Stage.PRODUCTION)
    _damage(registry, registry.register("broken", model_files["pair"], stage=Stage.PRODUCTION))
    return registry


@pytest.fixture
def settings(settings: ServerSettings, store: RegistryStore) -> ServerSettings:
    # Registry changes are applied by the tests themselves (`_follow`), never by a poll.
    return dataclasses.replace(settings, store=store.root, poll_interval=3600.0)


@contextlib.asynccontextmanager
async def _clients(
    gw: Gateway,
) -> AsyncIterator[tuple[httpx.AsyncClient, pb_grpc.GRPCInferenceServiceStub, grpc.aio.Channel]]:
    assert gw.addresses is not None
    async with (
        httpx.AsyncClient(base_url=f"http://{gw.addresses.http}", timeout=30) as http,
        grpc.aio.insecure_channel(gw.addresses.grpc) as channel,
    ):
        yield http, pb_grpc.GRPCInferenceServiceStub(channel), channel


async def _follow(gw: Gateway) -> None:
    """Apply the registry's current state and wait for the loads it starts."""
    await gw.deployments.refresh()
    await gw.deployments.wait_idle()


async def _server_ready(
    http: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, channel: grpc.aio.Channel
) -> bool:
    """The server's readiness, asserting that every way of asking agrees."""
    over_http = (await http.get("/v2/health/ready")).status_code
    assert over_http in (200, 503)
    over_grpc = (await stub.ServerReady(pb.ServerReadyRequest())).ready
    check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    serving = check.status == health_pb2.HealthCheckResponse.SERVING
    assert over_grpc is serving is (over_http == 200)
    return over_grpc


async def _model_ready(
    http: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, name: str, version: str = ""
) -> bool:
    path = f"/v2/models/{name}/versions/{version}/ready" if version else f"/v2/models/{name}/ready"
    over_http = (await http.get(path)).status_code
    assert over_http in (200, 503)
    over_grpc = (await stub.ModelReady(pb.ModelReadyRequest(name=name, version=version))).ready
    assert over_grpc is (over_http == 200)
    return over_grpc


async def _infer(http: httpx.AsyncClient, name: str = "good") -> httpx.Response:
    x = np.random.default_rng().normal(size=(1, FEATURES)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return await http.post(f"/v2/models/{name}/infer", json=body)


async def test_a_model_that_cannot_load_leaves_the_server_ready(
    settings: ServerSettings, store: RegistryStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="modelgate"):
        async with running(settings, store) as gw, _clients(gw) as (http, stub, channel):
            assert await _server_ready(http, stub, channel)
            assert await _model_ready(http, stub, "good")
            assert (await _infer(http)).status_code == 200
            assert not await _model_ready(http, stub, "broken")
            assert not await _model_ready(http, stub, "broken", "1")
            pair = [{"name": n, "datatype": "FP32", "shape": [1, 2], "data": [1, 2]} for n in "ab"]
            refused = await http.post("/v2/models/broken/infer", json={"inputs": pair})
            assert refused.status_code == 503
            assert "not ready" in refused.json()["error"]
            samples = await scrape(gw)
            assert sample(samples, "modelgate_model_state", model="broken", state="failed") == 1
            assert sample(samples, "modelgate_model_state", model="broken", state="serving") == 0
            assert sample(samples, "modelgate_model_state", model="good", state="serving") == 1

            # After startup, a new model that cannot load does not take the server out either.
            _damage(store, store.register("late", modelzoo.lookup(), stage=Stage.PRODUCTION))
            await _follow(gw)
            assert await _server_ready(http, stub, channel)
            assert not await _model_ready(http, stub, "late")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("modelgate")]
    said = [line for line in lines if line.startswith("model 'broken' version 1 failed to load")]
    assert len(said) == 1, lines
    assert "requests for it get 503" in said[0]
    assert any(line.startswith("modelgate ready, but serving nothing for: model 'broken'")
               for line in lines)  # fmt: skip


async def test_strict_readiness_needs_every_model_serving(
    settings: ServerSettings, store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    strict = dataclasses.replace(settings, strict_readiness=True)
    async with running(strict, store) as gw, _clients(gw) as (http, stub, channel):
        assert not await _server_ready(http, stub, channel)
        assert (await _infer(http)).status_code == 200  # not ready, yet it serves what it can
        assert await _model_ready(http, stub, "good")
        assert not await _model_ready(http, stub, "broken")

        # A loadable version in production (its bytes repair the shared artifact, too).
        store.register("broken", model_files["pair"], stage=Stage.PRODUCTION)
        await _follow(gw)
        assert await _model_ready(http, stub, "broken")
        assert await _server_ready(http, stub, channel)
        samples = await scrape(gw)
        assert sample(samples, "modelgate_model_state", model="broken", state="serving") == 1
        assert sample(samples, "modelgate_model_state", model="broken", state="failed") == 0


@pytest.mark.parametrize("strict", [False, True])
async def test_a_canary_that_cannot_load_changes_neither_readiness_nor_answers(
    settings: ServerSettings, store: RegistryStore, strict: bool
) -> None:
    store.transition("broken", 1, Stage.ARCHIVED)
    canary = store.register("good", modelzoo.classifier(first=4), stage=Stage.CANARY, traffic=50)
    _damage(store, canary)
    async with (
        running(dataclasses.replace(settings, strict_readiness=strict), store) as gw,
        _clients(gw) as (http, stub, channel),
    ):
        assert await _server_ready(http, stub, channel)
        assert await _model_ready(http, stub, "good")
        assert not await _model_ready(http, stub, "good", "2")
        answers = [await _infer(http) for _ in range(20)]
        assert {(a.status_code, a.json()["model_version"]) for a in answers} == {(200, "1")}
        samples = await scrape(gw)
        assert sample(samples, "modelgate_model_state", model="good", state="serving") == 1
        assert sample(samples, "modelgate_model_load_failures_total", model="good", version="2")


async def test_the_server_is_not_ready_until_the_registry_was_read(
    settings: ServerSettings, store: RegistryStore, tmp_path: Path
) -> None:
    store.transition("broken", 1, Stage.ARCHIVED)
    # The registry's address is reserved but nothing listens yet: connections are refused.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    registry = RemoteRegistry(url, timeout=5)
    gw = Gateway(dataclasses.replace(settings, poll_interval=0.05), registry)
    await gw.start()
    server = uvicorn.Server(
        uvicorn.Config(build_app(store, tmp_path / "incoming"), lifespan="off", log_level="warning")
    )
    serving: asyncio.Task[None] | None = None
    try:
        async with _clients(gw) as (http, stub, channel):
            assert not await _server_ready(http, stub, channel)
            assert (await _infer(http)).status_code == 503  # starting: nothing is known yet
            sock.listen()
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            await gw.wait_loaded()
            assert await _server_ready(http, stub, channel)
            assert (await _infer(http)).status_code == 200
    finally:
        await gw.stop()
        registry.close()
        server.should_exit = True
        if serving is not None:
            await serving
        sock.close()
