"""Prometheus metrics as the metrics endpoint exports them after real traffic."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from conftest import sample, scrape
from modelgate.gateway.metrics import Executions, Observations
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway


async def test_requests_latency_batches_and_loaded_models_are_exported(
    gateway: Gateway,
    http: httpx.AsyncClient,
    grpc_stub: pb_grpc.GRPCInferenceServiceStub,
    rng: np.random.Generator,
) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [3, 8], "datatype": "FP32", "data": x.tolist()}]}
    replies = await asyncio.gather(
        *(http.post("/v2/models/classifier/infer", json=body) for _ in range(5))
    )
    assert all(r.status_code == 200 for r in replies)
    wrong = {"inputs": [{**body["inputs"][0], "datatype": "FP64"}]}  # type: ignore[dict-item]
    assert (await http.post("/v2/models/classifier/infer", json=wrong)).status_code == 400
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    await grpc_stub.ModelInfer(request)

    m = await scrape(gateway)
    version = {"model": "classifier", "version": "1"}
    requests = "modelgate_requests_total"
    assert sample(m, requests, **version, protocol="http", outcome="OK") == 5
    assert sample(m, requests, **version, protocol="http", outcome="INVALID_ARGUMENT") == 1
    assert sample(m, requests, **version, protocol="grpc", outcome="OK") == 1
    latency = "modelgate_request_duration_seconds_count"
    assert sample(m, latency, **version, protocol="http") == 6
    assert sample(m, latency, **version, protocol="grpc") == 1
    buckets = "modelgate_request_duration_seconds_bucket"
    assert sample(m, buckets, **version, protocol="grpc", le="+Inf") == 1
    # Six valid requests of three rows each ran, in however many batches.
    assert sample(m, "modelgate_batch_size_rows_sum", **version) == 18
    batches = sample(m, "modelgate_batch_size_rows_count", **version)
    assert 1 <= batches <= 6
    assert sample(m, "modelgate_compute_seconds_count", **version) == batches
    assert sample(m, "modelgate_queue_wait_seconds_count", **version) == 6
    assert sample(m, "modelgate_queue_depth_rows", **version) == 0
    assert sample(m, "modelgate_model_loaded", **version) == 1
    assert sample(m, "modelgate_model_loaded", model="echo_bytes", version="1") == 1


def test_observations_fold_into_le_buckets_exactly_from_many_threads() -> None:
    observations = Observations((0.1, 1.0), fold_every=100)
    values = [0.05, 0.1, 0.5, 1.0, 3.0]  # a value equal to a bound belongs to its bucket

    def record() -> None:
        for _ in range(1000):
            for value in values:
                observations.observe(value)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts, total = observations.snapshot()
    assert counts.tolist() == [8000, 8000, 4000]
    assert total == pytest.approx(4000 * sum(values))


def test_executions_count_runs_per_batch_size_within_a_bound_from_many_threads() -> None:
    executions = Executions(fold_every=7, max_sizes=3)

    def record() -> None:
        for _ in range(500):
            executions.observe(4, 2, 0.5)
            executions.observe(1, 1, 0.25)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rows in range(5, 105):  # ever new sizes: only the first one is itemised
        executions.observe(rows, 1, 1.0)
    totals = executions.snapshot()
    assert totals.runs == 4000 + 100
    assert totals.rows == 4 * 2000 + 2000 + sum(range(5, 105))
    assert totals.requests == 2 * 2000 + 2000 + 100
    assert totals.request_seconds == pytest.approx(2000 * (2 * 0.5 + 0.25) + 100)
    assert totals.by_size == {4: (2000, pytest.approx(1000.0)), 1: (2000, pytest.approx(500.0)),
                              5: (1, 1.0)}  # fmt: skip
