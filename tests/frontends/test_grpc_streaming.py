"""ModelStreamInfer, Triton's bidirectional streaming RPC: tritonclient's stream API, raw
streams with a bad request in the middle, and a stream cancelled with requests pending."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from sync_clients import in_thread

from conftest import filled_store, loopback_settings, running, with_batching
from loadtest import perf
from loadtest.models import MODELS
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

Reference = Callable[[bytes, dict[str, np.ndarray]], list[np.ndarray]]


def _echo_request(x: np.ndarray, request_id: str, model: str = "echo_fp32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


async def test_tritonclient_stream_answers_every_request_with_its_id(
    gateway: Gateway, model_files: dict[str, bytes], reference: Reference, rng: np.random.Generator
) -> None:
    inputs = {f"r{i}": rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(40)}

    def stream() -> dict[str, tuple[np.ndarray | None, object]]:
        assert gateway.addresses is not None
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client = triton_grpc.InferenceServerClient(gateway.addresses.grpc)
        try:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for request_id, x in inputs.items():
                tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                client.async_stream_infer("classifier", [tensor], request_id=request_id)
            got = {}
            for _ in inputs:
                result, error = answers.get(timeout=60)
                assert error is None, error
                got[result.get_response().id] = (result.as_numpy("probabilities"), error)  # type: ignore[attr-defined]
            client.stop_stream()
            return got
        finally:
            client.close()

    got = await in_thread(stream)
    assert set(got) == set(inputs)
    for request_id, x in inputs.items():
        want = reference(model_files["classifier"], {"input": x})[1]
        np.testing.assert_allclose(got[request_id][0], want, rtol=1e-5)  # type: ignore[arg-type]


async def test_a_bad_request_on_a_stream_is_answered_and_the_stream_goes_on(
    grpc_stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator
) -> None:
    xs = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(4)]
    bad_shape = _echo_request(xs[0], "bad-shape")
    bad_shape.inputs[0].shape[:] = [5, 3]  # claims more data than it carries
    requests = [
        _echo_request(xs[0], "a"),
        _echo_request(xs[1], "ghost", model="no_such_model"),
        bad_shape,
        _echo_request(xs[2], "b"),
        _echo_request(xs[3], "c"),
    ]
    call = grpc_stub.ModelStreamInfer(iter(requests), timeout=60)
    answers = {a.infer_response.id: a async for a in call}
    assert await call.code() == grpc.StatusCode.OK
    assert set(answers) == {"a", "ghost", "bad-shape", "b", "c"}
    assert "no_such_model" in answers["ghost"].error_message
    assert answers["bad-shape"].error_message
    for request_id, x in zip("abc", (xs[0], xs[2], xs[3]), strict=True):
        answer = answers[request_id]
        assert answer.error_message == ""
        got = np.frombuffer(answer.infer_response.raw_output_contents[0], "<f4")
        np.testing.assert_array_equal(got.reshape(x.shape), x)


async def test_stream_and_unary_requests_are_served_side_by_side(
    grpc_stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator
) -> None:
    xs = [rng.normal(size=(1, 3)).astype(np.float32) for _ in range(64)]
    stream = grpc_stub.ModelStreamInfer(
        iter([_echo_request(x, str(i)) for i, x in enumerate(xs)]), timeout=60
    )
    unary = [grpc_stub.ModelInfer(_echo_request(x, f"u{i}"), timeout=60) for i, x in enumerate(xs)]
    streamed = {a.infer_response.id: a.infer_response async for a in stream}
    for i, x in enumerate(xs):
        got = np.frombuffer(streamed[str(i)].raw_output_contents[0], "<f4")
        np.testing.assert_array_equal(got, x.ravel())
        answer = await unary[i]
        np.testing.assert_array_equal(
            np.frombuffer(answer.raw_output_contents[0], "<f4"), x.ravel()
        )


async def test_a_cancelled_stream_drops_its_pending_requests(
    gateway: Gateway, grpc_stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator
) -> None:
    sent = asyncio.Event()
    x = rng.normal(size=(1, 3)).astype(np.float32)

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(200):
            yield _echo_request(x, str(i))
        sent.set()
        await asyncio.Event().wait()  # keep the stream open until it is cancelled

    call = grpc_stub.ModelStreamInfer(requests(), timeout=60)
    first = await call.read()
    assert first.infer_response.id
    await sent.wait()
    call.cancel()
    assert call.cancelled()
    # Nothing of the stream stays admitted, and the server goes on serving.
    admission = gateway.service.admission
    for _ in range(500):
        if admission.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert admission.inflight == 0
    answer = await grpc_stub.ModelInfer(_echo_request(x, "after"), timeout=30)
    assert answer.id == "after"


async def test_a_stopping_server_answers_a_streams_requests_then_ends_it_unavailable(
    settings: ServerSettings, store: RegistryStore, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(1, 3)).astype(np.float32)
    gw = Gateway(settings, store)
    await gw.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await gw.wait_loaded()
        assert gw.addresses is not None
        async with grpc.aio.insecure_channel(gw.addresses.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

            sent = asyncio.Event()

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(100):
                    yield _echo_request(x, str(i))
                sent.set()
                await asyncio.Event().wait()  # the client keeps the stream open

            call = stub.ModelStreamInfer(requests(), timeout=60)
            answers = [await call.read()]
            await sent.wait()
            stopping = asyncio.create_task(gw.stop())
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while (answer := await call.read()) is not grpc.aio.EOF:
                    answers.append(answer)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await (stopping if stopping is not None else gw.stop())
    # Every answer that came is a whole one: the request's own data, or its refusal.
    for answer in answers:
        if answer.error_message:
            assert "shutting down" in answer.error_message
        else:
            got = np.frombuffer(answer.infer_response.raw_output_contents[0], "<f4")
            np.testing.assert_array_equal(got, x.ravel())


async def test_perf_analyzer_streaming_runs_against_the_gateway(tmp_path: Path) -> None:
    """A short `perf_analyzer --streaming` point (skipped where perf_analyzer is missing)."""
    try:
        analyzer = perf.find_perf_analyzer()
    except perf.LoadGeneratorError as exc:
        pytest.skip(str(exc))
    store = filled_store(tmp_path / "store", {"light": MODELS["light"]()})
    # No queue budget: perf_analyzer stops at the first refusal, and a busy machine can hold
    # this test's event loop past 50 ms.
    settings = with_batching(loopback_settings(store), queue_budget_ms=0)
    async with running(settings, store) as gw:
        assert gw.addresses is not None
        spec = perf.LoadSpec("light", gw.addresses.grpc, "grpc", 8, 1000, 3, streaming=True)
        perf.write_input_data(tmp_path / "input.json")
        result = await asyncio.to_thread(
            perf.run, analyzer, spec, tmp_path, tmp_path / "input.json"
        )
    assert result.requests_per_second > 0
