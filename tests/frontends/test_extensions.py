"""Triton's statistics and model-repository extensions through tritonclient, over both
protocols, and the answers both front ends must agree on (model readiness, methods)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from sync_clients import client_module, connect, in_thread
from tritonclient.utils import InferenceServerException

from conftest import running
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

PROTOCOLS = ["grpc", "http"]


def _as_json(answer: Any) -> Any:
    """tritonclient's gRPC answers as the HTTP client's JSON (uint64 figures as ints)."""
    if isinstance(answer, (dict, list)):
        return answer
    doc = MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(doc)


_UINT64 = {"count", "ns", "last_inference", "inference_count", "execution_count", "batch_size"}


def _ints(doc: Any) -> Any:
    """protobuf's JSON gives uint64 fields as strings."""
    if isinstance(doc, dict):
        return {k: int(v) if k in _UINT64 else _ints(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(v) for v in doc]
    return doc


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_statistics_count_what_was_served(
    gateway: Gateway, model_files: dict[str, bytes], rng: np.random.Generator, protocol: str
) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    before_ms = int(time.time() * 1000)

    def call() -> tuple[Any, Any, Any, str]:
        client = connect(gateway, protocol)
        module = client_module(protocol)
        try:
            for _ in range(5):  # one after the other: five runs of three rows
                tensor = module.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                client.infer("classifier", [tensor])
            wrong = module.InferInput("input", [1, 3], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
            with pytest.raises(InferenceServerException):
                client.infer("classifier", [wrong])
            one = client.get_inference_statistics("classifier")
            versioned = client.get_inference_statistics("classifier", "1")
            every = client.get_inference_statistics()
            with pytest.raises(InferenceServerException) as err:
                client.get_inference_statistics("no_such_model")
            return one, versioned, every, str(err.value)
        finally:
            client.close()

    one, versioned, every, error = await in_thread(call)
    after_ms = int(time.time() * 1000)
    one, versioned, every = _as_json(one), _as_json(versioned), _as_json(every)
    assert one == versioned
    [stats] = one["model_stats"]
    assert (stats["name"], stats["version"]) == ("classifier", "1")
    assert before_ms <= stats["last_inference"] <= after_ms
    assert stats["inference_count"] == 15
    assert stats["execution_count"] == 5
    infer = stats["inference_stats"]
    assert infer["success"]["count"] == 5 and infer["success"]["ns"] > 0
    assert infer["fail"]["count"] == 1
    assert infer["queue"]["count"] == 5
    assert infer["compute_infer"]["count"] == 5 and infer["compute_infer"]["ns"] > 0
    assert infer["compute_infer"]["ns"] <= infer["success"]["ns"]
    # Not timed apart, but counted as compute_infer is: perf_analyzer requires the three alike.
    for untimed in ("compute_input", "compute_output"):
        assert infer[untimed] == {"count": 5, "ns": 0}
    for unmeasured in ("cache_hit", "cache_miss"):
        assert infer[unmeasured] == {"count": 0, "ns": 0}
    [batches] = stats["batch_stats"]
    assert batches["batch_size"] == 3
    assert batches["compute_infer"]["count"] == 5
    assert batches["compute_input"] == batches["compute_output"] == {"count": 5, "ns": 0}
    assert batches["compute_infer"]["ns"] == infer["compute_infer"]["ns"]

    assert {s["name"] for s in every["model_stats"]} == set(model_files)
    untouched = next(s for s in every["model_stats"] if s["name"] == "lookup")
    assert untouched["inference_count"] == 0 and untouched["last_inference"] == 0
    assert "no_such_model" in error


async def test_http_statistics_paths(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/models/stats")).json()["model_stats"]
    r = await http.get("/v2/models/classifier/versions/9/stats")
    assert r.status_code == 404 and "version" in r.json()["error"]
    assert (await http.get("/v2/models/nope/stats")).status_code == 404


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_repository_index_lists_the_served_versions(
    settings: ServerSettings,
    tmp_path: Path,
    model_files: dict[str, bytes],
    protocol: str,
) -> None:
    store = RegistryStore(tmp_path / "index-store", create=True)
    store.register("classifier", model_files["classifier"], stage=Stage.PRODUCTION)
    store.register("classifier", model_files["classifier"], stage=Stage.CANARY, traffic=10)
    broken = store.register("broken", model_files["pair"], stage=Stage.PRODUCTION)
    (store.root / "artifacts" / "sha256" / broken.sha256).write_bytes(b"not the model")

    async with running(settings, store) as gateway:

        def call() -> tuple[Any, str, str]:
            client = connect(gateway, protocol)
            try:
                index = client.get_model_repository_index()
                with pytest.raises(InferenceServerException) as load:
                    client.load_model("classifier")
                with pytest.raises(InferenceServerException) as unload:
                    client.unload_model("classifier")
                return index, str(load.value), str(unload.value)
            finally:
                client.close()

        index, load, unload = await in_thread(call)
    entries = _as_json(index)
    entries = entries["models"] if isinstance(entries, dict) else entries
    by_key = {(e["name"], e["version"]): e for e in entries}
    assert by_key[("classifier", "1")]["state"] == "READY"
    assert by_key[("classifier", "2")]["state"] == "READY"
    assert by_key[("broken", "1")]["state"] == "UNAVAILABLE"
    assert by_key[("broken", "1")]["reason"]  # the load error
    for message in (load, unload):
        assert "registry" in message and "classifier" in message


async def test_repository_index_of_ready_versions_and_load_status(
    settings: ServerSettings, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path / "ready-store", create=True)
    store.register("classifier", model_files["classifier"], stage=Stage.PRODUCTION)
    broken = store.register("broken", model_files["pair"], stage=Stage.PRODUCTION)
    (store.root / "artifacts" / "sha256" / broken.sha256).write_bytes(b"not the model")
    async with running(settings, store) as gateway:
        assert gateway.addresses is not None
        async with (
            httpx.AsyncClient(base_url=f"http://{gateway.addresses.http}") as http,
            grpc.aio.insecure_channel(gateway.addresses.grpc) as channel,
        ):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            everything = (await http.post("/v2/repository/index")).json()
            assert {e["name"] for e in everything} == {"classifier", "broken"}
            ready = (await http.post("/v2/repository/index", json={"ready": True})).json()
            assert ready == [{"name": "classifier", "version": "1", "state": "READY", "reason": ""}]
            answer = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
            assert [(m.name, m.version, m.state) for m in answer.models] == [
                ("classifier", "1", "READY")
            ]
            r = await http.post("/v2/repository/index", json={"ready": "yes"})
            assert r.status_code == 400
            r = await http.post("/v2/repository/models/classifier/load")
            assert r.status_code == 501 and "registry" in r.json()["error"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="classifier")
                )
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "registry" in (err.value.details() or "")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_server_metadata_advertises_the_extensions(gateway: Gateway, protocol: str) -> None:
    def call() -> Any:
        client = connect(gateway, protocol)
        try:
            return _as_json(client.get_server_metadata())
        finally:
            client.close()

    extensions = set((await in_thread(call))["extensions"])
    assert {"statistics", "model_repository", "binary_tensor_data"} <= extensions


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_unknown_model_or_version_is_not_ready_on_both_protocols(
    gateway: Gateway, protocol: str
) -> None:
    """Triton's answer on both: ModelReady is a yes/no question, not an error."""

    def call() -> list[bool]:
        client = connect(gateway, protocol)
        try:
            return [
                client.is_model_ready("classifier"),
                client.is_model_ready("no_such_model"),
                client.is_model_ready("classifier", "9"),
            ]
        finally:
            client.close()

    assert await in_thread(call) == [True, False, False]


async def test_model_ready_answers_agree(gateway: Gateway, http: httpx.AsyncClient) -> None:
    assert gateway.addresses is not None
    async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, version, ready in (("classifier", "", True), ("nope", "", False),
                                     ("classifier", "9", False)):  # fmt: skip
            answer = await stub.ModelReady(pb.ModelReadyRequest(name=name, version=version))
            assert answer.ready is ready
            path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
            assert (await http.get(path)).status_code == (200 if ready else 503)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v2/models/classifier/infer", 405, "POST"),
        ("GET", "/v2/models/classifier/versions/1/infer", 405, "POST"),
        ("POST", "/v2/models/classifier/ready", 405, "GET"),
        ("POST", "/v2/health/live", 405, "GET"),
        ("DELETE", "/v2", 405, "GET"),
        ("PUT", "/v2/models/classifier", 405, "GET"),
        ("GET", "/v2/repository/index", 405, "POST"),
        ("GET", "/v1/models/classifier:predict", 405, "POST"),
        ("PUT", "/v2/no/such/thing", 404, None),
        ("GET", "/v2/models/classifier/explain", 404, None),
        ("POST", "/v3/models/classifier/infer", 404, None),
    ],
)
async def test_wrong_methods_are_405_and_unknown_paths_404(
    http: httpx.AsyncClient, method: str, path: str, status: int, allow: str | None
) -> None:
    r = await http.request(method, path)
    assert r.status_code == status, r.text
    assert r.headers.get("allow") == allow
    assert path in r.json()["error"]
