"""What a registered model may compute with, seen from a client: a request asking a model
for more memory, or more time, than its limits fails on its own, the process does not grow,
and the next request is served; a model whose warm-up exceeds them does not load."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

import modelzoo
from conftest import peak_growth, running
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ModelServingSettings, RuntimeSettings, ServerSettings
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

MiB = 1024 * 1024


@pytest.fixture
async def limited(tmp_path: Path, settings: ServerSettings) -> AsyncIterator[Gateway]:
    """Hostile models beside a good one, every model capped at 64 MiB and half a second."""
    store = RegistryStore(tmp_path / "limited-store", create=True)
    store.register("filler", modelzoo.filler(), stage=Stage.PRODUCTION)
    store.register("spinner", modelzoo.spinner(), stage=Stage.PRODUCTION)
    store.register("folding", modelzoo.folding_filler(2 * 10**8), stage=Stage.PRODUCTION)
    store.register("classifier", modelzoo.classifier(), stage=Stage.PRODUCTION)
    runtime = RuntimeSettings(max_run_memory_bytes=64 * MiB, max_run_seconds=0.5)
    models = ModelServingSettings(settings.models.batch, runtime)
    limited = dataclasses.replace(settings, store=store.root, models=models)
    with peak_growth() as grown:
        async with running(limited, store) as gateway:
            yield gateway
        assert grown() < 500 * MiB  # the folding model's 800 MB of ones were never built


def _filler_body(elements: int) -> dict[str, object]:
    return {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [elements]}]}


async def test_a_request_needing_too_much_memory_fails_alone(limited: Gateway) -> None:
    assert limited.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{limited.addresses.http}") as http:
        with peak_growth() as grown:
            for elements in (2 * 10**8, 10**10):  # 800 MB the system could give; 40 GB
                r = await http.post("/v2/models/filler/infer", json=_filler_body(elements))
                assert r.status_code == 400, r.text
                assert "max_run_memory_bytes" in r.json()["error"]
            assert grown() < 500 * MiB
        r = await http.post("/v2/models/filler/infer", json=_filler_body(1000))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [1000.0]


async def test_a_run_past_max_run_seconds_is_stopped(limited: Gateway) -> None:
    assert limited.addresses is not None

    def request(turns: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="spinner")
        request.inputs.add(name="turns", datatype="INT64", shape=[1])
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.raw_input_contents.extend(
            [np.array([turns], np.int64).tobytes(), np.array([2.5], np.float32).tobytes()]
        )
        return request

    async with grpc.aio.insecure_channel(limited.addresses.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request(10**12), timeout=60)  # days of loop turns
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "max_run_seconds" in (caught.value.details() or "")
        reply = await stub.ModelInfer(request(10), timeout=60)
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.5]


async def test_a_model_whose_load_would_build_a_huge_constant_does_not_load(
    limited: Gateway,
) -> None:
    assert limited.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{limited.addresses.http}") as http:
        assert (await http.get("/v2/models/folding/ready")).status_code != 200
        x = {"name": "input", "shape": [1, modelzoo.FEATURES], "datatype": "FP32"}
        body = {"inputs": [{**x, "data": [0.0] * modelzoo.FEATURES}]}
        assert (await http.post("/v2/models/classifier/infer", json=body)).status_code == 200
