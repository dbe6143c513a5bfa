"""Deadlines, a full queue, admission control (max_inflight) and models that are not ready,
over both protocols.

The `slow` model takes about 0.2 s per batch, so a second request reliably waits in the
queue while the first one computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import modelzoo
from conftest import running, sample, scrape, with_batching
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage


@pytest.fixture(scope="module")
def slow_model() -> bytes:
    # ~0.35 s a batch here: wide enough that the tests' steps fit inside one computation
    return modelzoo.slow(iterations=500_000)


@pytest.fixture
def slow_store(tmp_path: Path, slow_model: bytes, model_files: dict[str, bytes]) -> RegistryStore:
    store = RegistryStore(tmp_path / "slow-store", create=True)
    store.register("slow", slow_model, stage=Stage.PRODUCTION)
    store.register("classifier", model_files["classifier"], stage=Stage.PRODUCTION)
    return store


def _settings(settings: ServerSettings, store: RegistryStore, **batch: int) -> ServerSettings:
    return with_batching(dataclasses.replace(settings, store=store.root), **batch)


@contextlib.asynccontextmanager
async def _clients(
    gateway: Gateway,
) -> AsyncIterator[tuple[httpx.AsyncClient, pb_grpc.GRPCInferenceServiceStub]]:
    assert gateway.addresses is not None
    async with (
        httpx.AsyncClient(base_url=f"http://{gateway.addresses.http}", timeout=30) as http,
        grpc.aio.insecure_channel(gateway.addresses.grpc) as channel,
    ):
        yield http, pb_grpc.GRPCInferenceServiceStub(channel)


def _body(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    return {"inputs": [tensor], "parameters": parameters}


def _grpc_request(x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


async def _queue_depth_reaches(gateway: Gateway, rows: int, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        metrics = await scrape(gateway)
        if sample(metrics, "modelgate_queue_depth_rows", model="slow", version="1") == rows:
            return
        assert asyncio.get_running_loop().time() < deadline, f"the queue never held {rows} rows"
        await asyncio.sleep(0.005)


async def _computing(gateway: Gateway, within: float = 10.0) -> None:
    """Until a batch has left the queue: its queue wait is recorded as it starts to run."""
    deadline = asyncio.get_running_loop().time() + within
    labels = {"model": "slow", "version": "1"}
    while True:
        metrics = await scrape(gateway)
        if sample(metrics, "modelgate_queue_wait_seconds_count", **labels) == 1:
            return
        assert asyncio.get_running_loop().time() < deadline, "no batch started"
        await asyncio.sleep(0.005)


async def _batches(gateway: Gateway) -> float:
    return sample(
        await scrape(gateway), "modelgate_batch_size_rows_count", model="slow", version="1"
    )


@pytest.mark.parametrize("how", ["header", "parameter", "grpc"])
async def test_a_request_whose_deadline_passes_in_the_queue_is_504_and_never_computed(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator, how: str
) -> None:
    async with (
        running(_settings(settings, slow_store), slow_store) as gateway,
        _clients(gateway) as (http, stub),
    ):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        first = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _computing(gateway)  # the first request is computing now
        late = rng.normal(size=(1, 4)).astype(np.float32)
        if how == "grpc":
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(_grpc_request(late), timeout=0.05)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            if how == "header":
                r = await http.post(
                    "/v2/models/slow/infer",
                    json=_body(late),
                    headers={"x-request-timeout-ms": "50"},
                )
            else:
                r = await http.post("/v2/models/slow/infer", json=_body(late, timeout=50_000))
            assert r.status_code == 504, r.text
            assert "deadline" in r.json()["error"]
        answer = await first
        assert answer.status_code == 200
        np.testing.assert_array_equal(
            np.array(answer.json()["outputs"][0]["data"], dtype=np.float32), x.ravel()
        )
        await asyncio.sleep(0.3)  # let a wrongly computed late request show in metrics
        assert await _batches(gateway) == 1


async def test_a_full_queue_is_refused_at_once(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator
) -> None:
    limited = _settings(settings, slow_store, max_batch_size=1, max_queue=1)
    async with running(limited, slow_store) as gateway, _clients(gateway) as (http, stub):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        computing = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _computing(gateway)  # the worker has taken it
        queued = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _queue_depth_reaches(gateway, 1)  # polled: a busy machine may take a while
        refused = await http.post("/v2/models/slow/infer", json=_body(x))
        assert refused.status_code == 503
        assert "queue full" in refused.json()["error"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_grpc_request(x))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await computing).status_code == 200
        assert (await queued).status_code == 200
        assert (await http.post("/v2/models/slow/infer", json=_body(x))).status_code == 200


async def test_a_model_still_loading_is_503_then_served(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator
) -> None:
    gateway = Gateway(_settings(settings, slow_store), slow_store)
    await gateway.start()
    try:
        async with _clients(gateway) as (http, stub):
            x = rng.normal(size=(1, 4)).astype(np.float32)
            early = await http.post("/v2/models/slow/infer", json=_body(x))
            assert early.status_code == 503, early.text
            assert (await http.get("/v2/health/ready")).status_code == 503
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(_grpc_request(x))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await gateway.wait_loaded()
            assert (await http.post("/v2/models/slow/infer", json=_body(x))).status_code == 200
            assert (await http.get("/v2/health/ready")).status_code == 200
    finally:
        await gateway.stop()


async def test_a_model_that_failed_to_load_is_503_and_the_others_serve(
    settings: ServerSettings, tmp_path: Path, model_files: dict[str, bytes], rng: Any
) -> None:
    store = RegistryStore(tmp_path / "broken-store", create=True)
    store.register("classifier", model_files["classifier"], stage=Stage.PRODUCTION)
    broken = store.register("broken", model_files["pair"], stage=Stage.PRODUCTION)
    (store.root / "artifacts" / "sha256" / broken.sha256).write_bytes(b"not the model")
    async with (
        running(_settings(settings, store), store) as gateway,
        _clients(gateway) as (http, stub),
    ):
        r = await http.post(
            "/v2/models/broken/infer",
            json={"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        )
        assert r.status_code == 503
        assert "not ready" in r.json()["error"]
        assert (await http.get("/v2/models/broken/ready")).status_code == 503
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="broken"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # One model's failure does not take the server out of rotation (tests/test_readiness.py)
        assert (await http.get("/v2/health/ready")).status_code == 200
        x = rng.normal(size=(1, 8)).astype(np.float32)
        body = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x.tolist()}]
        }
        assert (await http.post("/v2/models/classifier/infer", json=body)).status_code == 200
        metrics = await scrape(gateway)
        assert sample(metrics, "modelgate_model_load_failures_total", model="broken", version="1")


def _limited(settings: ServerSettings, store: RegistryStore) -> ServerSettings:
    """Two places, each HTTP refusal answered on a connection kept open (no shedding:
    tests/frontends/test_http_shedding.py)."""
    limited = _settings(settings, store, max_batch_size=1, max_queue=16)
    return dataclasses.replace(limited, max_inflight=2, shed_connections=False)


async def _refused(gateway: Gateway) -> float:
    return sample(await scrape(gateway), "modelgate_requests_refused_total", reason="inflight")


async def _status_without_body(gateway: Gateway) -> tuple[bytes, bytes]:
    """Send an inference request's headers but never its body; the status line and the
    rest of the head the server answers with (within a generous bound)."""
    assert gateway.addresses is not None
    host, port = gateway.addresses.http.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v2/models/slow/infer HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    finally:
        writer.close()
    status, _, rest = head.partition(b"\r\n")
    return status, rest.lower()


async def test_beyond_max_inflight_a_request_is_refused_unread_and_never_queued(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator
) -> None:
    async with (
        running(_limited(settings, slow_store), slow_store) as gateway,
        _clients(gateway) as (http, stub),
    ):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        computing = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _computing(gateway)
        queued = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _queue_depth_reaches(gateway, 1)  # two in flight: the limit

        refused = await http.post("/v2/models/slow/infer", json=_body(x))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "capacity" in refused.json()["error"]
        v1 = await http.post("/v1/models/slow:predict", json={"instances": x.tolist()})
        assert v1.status_code == 503
        assert v1.headers["retry-after"] == "1"
        # Refused before the body is read: the answer comes though the body never does.
        status, head = await _status_without_body(gateway)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert b"retry-after: 1" in head
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_grpc_request(x))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in (err.value.details() or "")
        # Control-plane calls are not inference: they still answer.
        assert (await http.get("/v2/health/ready")).status_code == 200
        assert (await http.get("/v2/models/slow")).status_code == 200

        assert (await computing).status_code == 200
        assert (await queued).status_code == 200
        assert await _refused(gateway) == 4
        # Once the load is gone, every request is served again: places were given back,
        # also by the refused and the malformed ones.
        bad = await http.post("/v2/models/slow/infer", content=b"{not json")
        assert bad.status_code == 400
        for _ in range(3):
            assert (await http.post("/v2/models/slow/infer", json=_body(x))).status_code == 200
        await stub.ModelInfer(_grpc_request(x))
        # Only the admitted requests ever reached the batcher.
        assert await _batches(gateway) == 6


async def test_a_request_that_would_wait_past_its_deadline_or_the_budget_is_refused_at_once(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator
) -> None:
    # One-row batches of ~0.35 s (learned at warm-up): one queued request ahead of a new
    # one means ~0.35 s of wait, over the default 50 ms budget and a 100 ms deadline.
    limited = _settings(settings, slow_store, max_batch_size=1, max_queue=16)
    async with running(limited, slow_store) as gateway, _clients(gateway) as (http, stub):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        computing = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _computing(gateway)
        queued = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _queue_depth_reaches(gateway, 1)

        over_budget = await http.post("/v2/models/slow/infer", json=_body(x))
        assert over_budget.status_code == 503, over_budget.text
        assert over_budget.headers["retry-after"] == "1"
        assert "queue budget" in over_budget.json()["error"]
        too_late = await http.post(
            "/v2/models/slow/infer", json=_body(x), headers={"x-request-timeout-ms": "100"}
        )
        assert too_late.status_code == 504, too_late.text
        assert "cannot be met" in too_late.json()["error"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_grpc_request(x), timeout=5)  # longer than the wait
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_grpc_request(x), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        assert (await computing).status_code == 200
        assert (await queued).status_code == 200
        metrics = await scrape(gateway)
        refused = "modelgate_requests_refused_total"
        assert sample(metrics, refused, reason="queue_budget") == 2
        assert sample(metrics, refused, reason="deadline") == 2
        assert (await http.post("/v2/models/slow/infer", json=_body(x))).status_code == 200
        # The refused requests were never computed.
        assert await _batches(gateway) == 3


def _infer_request(x: np.ndarray, model: str = "slow", close: bool = False) -> bytes:
    body = json.dumps(_body(x)).encode()
    connection = b"connection: close\r\n" if close else b""
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nhost: test\r\n".encode()
        + connection
        + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Status line, headers (lower-case names) and body of one answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        return status, headers, await asyncio.wait_for(reader.readexactly(length), 10)
    assert headers[b"transfer-encoding"] == b"chunked"
    body = b""
    while size := int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10), 16):
        body += (await asyncio.wait_for(reader.readexactly(size + 2), 10))[:-2]
    await reader.readexactly(2)
    return status, headers, body


async def test_at_capacity_keep_alive_and_pipelined_requests_are_refused_and_the_next_served(
    settings: ServerSettings, slow_store: RegistryStore, rng: np.random.Generator
) -> None:
    # Kept alive for as long as the slow model may take on a busy machine.
    limited = dataclasses.replace(_limited(settings, slow_store), keep_alive_timeout=120.0)
    async with running(limited, slow_store) as gateway, _clients(gateway) as (http, _):
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        x = rng.normal(size=(1, 4)).astype(np.float32)
        computing = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _computing(gateway)
        queued = asyncio.create_task(http.post("/v2/models/slow/infer", json=_body(x)))
        await _queue_depth_reaches(gateway, 1)  # two in flight: the limit

        reader, writer = await asyncio.open_connection(host, int(port))
        # Three requests in one write: two refused, then one that is not inference.
        writer.write(
            _infer_request(x)
            + _infer_request(x)
            + b"GET /v2/health/ready HTTP/1.1\r\nhost: test\r\n\r\n"
        )
        for _ in range(2):
            status, headers, body = await _read_answer(reader)
            assert status == b"HTTP/1.1 503 Service Unavailable"
            assert headers[b"retry-after"] == b"1"
            assert headers.get(b"connection") != b"close"
            assert "capacity" in json.loads(body)["error"]
        assert (await _read_answer(reader))[0] == b"HTTP/1.1 200 OK"
        # Refused on its head, the body still to come: answered, the body then dropped.
        request = _infer_request(x)
        split = request.index(b"\r\n\r\n") + 10
        writer.write(request[:split])
        status, headers, _ = await _read_answer(reader)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"retry-after"] == b"1"
        writer.write(request[split:])
        # A client that asks to close gets `connection: close`, and the connection closes.
        closing_reader, closing_writer = await asyncio.open_connection(host, int(port))
        closing_writer.write(_infer_request(x, close=True))
        status, headers, _ = await _read_answer(closing_reader)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"connection"] == b"close"
        assert await asyncio.wait_for(closing_reader.read(), 10) == b""
        closing_writer.close()

        assert (await computing).status_code == 200
        assert (await queued).status_code == 200
        assert await _refused(gateway) == 4
        # The same keep-alive connection is served once places are free, pipelined too.
        writer.write(_infer_request(x) + _infer_request(x, "classifier"))
        status, _, body = await _read_answer(reader)
        assert status == b"HTTP/1.1 200 OK", body
        assert json.loads(body)["outputs"]
        status, _, body = await _read_answer(reader)
        assert status == b"HTTP/1.1 400 Bad Request", body  # the classifier takes 8 columns
        writer.close()
        assert await _batches(gateway) == 3


async def _slow_body(
    address: str, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from `source` that sends an inference request's head and a first byte of
    its body, then nothing."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    writer.write(
        b"POST /v2/models/classifier/infer HTTP/1.1\r\nhost: test\r\n"
        b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
    )
    await writer.drain()
    return reader, writer


async def _slow_body_refusals(gateway: Gateway) -> float:
    return sample(await scrape(gateway), "modelgate_requests_refused_total", reason="slow_body")


def _assert_over_share(answered: list[tuple[bytes, dict[bytes, bytes], bytes]], count: int) -> None:
    """`count` answers, each the 503 for a client over its share of arriving bodies."""
    assert len(answered) == count
    for status, headers, body in answered:
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"retry-after"] == b"1"
        assert "body is still arriving" in json.loads(body)["error"]


def _classifier_request(x: np.ndarray) -> bytes:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}]}  # fmt: skip
    data = json.dumps(body).encode()
    return (
        b"POST /v2/models/classifier/infer HTTP/1.1\r\nhost: test\r\n"
        + f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
        + data
    )


async def test_one_client_with_slow_bodies_cannot_take_every_place(
    settings: ServerSettings, store: RegistryStore, rng: np.random.Generator
) -> None:
    # 8 places, so one client's bodies may hold 2 of them.
    limited = dataclasses.replace(settings, max_inflight=8, body_timeout=60.0)
    async with running(limited, store) as gateway:
        assert gateway.addresses is not None
        address = gateway.addresses.http
        slow = [await _slow_body(address, "127.0.0.1") for _ in range(8)]
        answered = []
        for reader, _ in slow:
            with contextlib.suppress(TimeoutError):
                answered.append(await asyncio.wait_for(_read_answer(reader), 1))
        # All but the client's share answered at once, 503 with Retry-After.
        _assert_over_share(answered, 6)
        assert await _slow_body_refusals(gateway) == 6  # a reason of their own

        # Another client (another address) is served, slow bodies of its own too.
        others = [await _slow_body(address, "127.0.0.2") for _ in range(2)]
        x = rng.normal(size=(1, 8)).astype(np.float32)
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.3", 0))
        writer.write(_classifier_request(x))
        status, _, answer = await _read_answer(reader)
        assert status == b"HTTP/1.1 200 OK", answer

        # Once the first client's bodies are gone, its new requests are served again.
        for _, slow_writer in slow + others:
            slow_writer.close()
        await asyncio.sleep(0.5)
        for _ in range(3):
            writer.write(_classifier_request(x))
            assert (await _read_answer(reader))[0] == b"HTTP/1.1 200 OK"
        writer.close()


async def test_pipelined_slow_bodies_count_in_the_client_share(
    settings: ServerSettings, store: RegistryStore, rng: np.random.Generator
) -> None:
    # 8 places, so one client's bodies may hold 2. Each connection pipelines an inference
    # request whose body never completes behind a quick one: its turn comes once the quick
    # one is answered, and from then on it holds a place like any slow body.
    limited = dataclasses.replace(settings, max_inflight=8, body_timeout=60.0)
    async with running(limited, store) as gateway:
        assert gateway.addresses is not None
        host, port = gateway.addresses.http.rsplit(":", 1)
        slow = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection(
                host, int(port), local_addr=("127.0.0.1", 0)
            )
            writer.write(
                b"GET /v2/health/ready HTTP/1.1\r\nhost: test\r\n\r\n"
                b"POST /v2/models/classifier/infer HTTP/1.1\r\nhost: test\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
            )
            slow.append((reader, writer))
        answered = []
        for reader, _ in slow:
            assert (await _read_answer(reader))[0] == b"HTTP/1.1 200 OK"  # the quick one
            with contextlib.suppress(TimeoutError):
                answered.append(await asyncio.wait_for(_read_answer(reader), 1))
        # All but the client's share answered at once, 503 with Retry-After.
        _assert_over_share(answered, 6)
        assert await _slow_body_refusals(gateway) == 6

        # Another client is served: the first one's bodies hold 2 places, not all 8.
        x = rng.normal(size=(1, 8)).astype(np.float32)
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.3", 0))
        writer.write(_classifier_request(x))
        status, _, answer = await _read_answer(reader)
        assert status == b"HTTP/1.1 200 OK", answer

        # Once the first client's bodies are gone, its requests are served again.
        for _, slow_writer in slow:
            slow_writer.close()
        await asyncio.sleep(0.5)
        again, again_writer = await asyncio.open_connection(
            host, int(port), local_addr=("127.0.0.1", 0)
        )
        for _ in range(3):
            again_writer.write(_classifier_request(x))
            assert (await _read_answer(again))[0] == b"HTTP/1.1 200 OK"
        again_writer.close()
        writer.close()
