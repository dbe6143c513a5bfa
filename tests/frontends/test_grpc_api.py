"""The gRPC front end over a real gateway: generated stubs, health, reflection and errors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import running
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("gateway")

Stub = pb_grpc.GRPCInferenceServiceStub


def raw_request(
    model: str, x: np.ndarray, name: str = "input", datatype: str = "FP32", **fields: Any
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name=name, datatype=datatype, shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


async def _ok(stub: Stub, rng: np.random.Generator) -> None:
    """The server still answers a good call."""
    x = rng.normal(size=(2, 8)).astype(np.float32)
    reply = await stub.ModelInfer(raw_request("classifier", x))
    assert list(reply.outputs[0].shape) == [2]


async def test_health_and_metadata(grpc_stub: Stub) -> None:
    assert (await grpc_stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await grpc_stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await grpc_stub.ModelReady(pb.ModelReadyRequest(name="classifier"))).ready
    ready = await grpc_stub.ModelReady(pb.ModelReadyRequest(name="classifier", version="1"))
    assert ready.ready
    server = await grpc_stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "modelgate"
    assert "binary_tensor_data" in server.extensions
    meta = await grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name="classifier"))
    assert (meta.name, list(meta.versions), meta.platform) == (
        "classifier",
        ["1"],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 8])
    ]
    assert [t.name for t in meta.outputs] == ["label", "probabilities"]
    config = (await grpc_stub.ModelConfig(pb.ModelConfigRequest(name="classifier"))).config
    assert (config.platform, config.max_batch_size, list(config.input[0].dims)) == (
        "onnxruntime_onnx",
        64,
        [8],
    )


async def test_raw_infer_matches_in_process_onnx_runtime(
    grpc_stub: Stub, model_files: dict[str, bytes], reference: Callable[..., Any], rng: Any
) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    reply = await grpc_stub.ModelInfer(raw_request("classifier", x, id="call-3"))
    assert (reply.model_name, reply.model_version, reply.id) == ("classifier", "1", "call-3")
    labels, probabilities = reference(model_files["classifier"], {"input": x})
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("label", "INT64", [5]),
        ("probabilities", "FP32", [5, 3]),
    ]
    got_labels = np.frombuffer(reply.raw_output_contents[0], dtype="<i8")
    got_probabilities = np.frombuffer(reply.raw_output_contents[1], dtype="<f4").reshape(5, 3)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_probabilities, probabilities)


async def test_typed_contents_are_answered_typed(
    grpc_stub: Stub, model_files: dict[str, bytes], reference: Callable[..., Any], rng: Any
) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="classifier", model_version="1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="label")
    reply = await grpc_stub.ModelInfer(request)
    assert not reply.raw_output_contents
    (label,) = reply.outputs
    labels, _ = reference(model_files["classifier"], {"input": x})
    assert list(label.contents.int64_contents) == labels.tolist()


async def test_every_request_in_a_concurrent_burst_gets_its_own_rows(
    grpc_stub: Stub, rng: np.random.Generator
) -> None:
    """Random rows through the identity model: a batcher that mixed rows up would fail."""
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 3)) for _ in range(60)]
    replies = await asyncio.gather(
        *(grpc_stub.ModelInfer(raw_request("echo_fp64", x, "x", "FP64")) for x in inputs)
    )
    for x, reply in zip(inputs, replies, strict=True):
        got = np.frombuffer(reply.raw_output_contents[0], dtype="<f8").reshape(x.shape)
        np.testing.assert_array_equal(got, x)


def _f32(rows: int = 1, width: int = 8) -> np.ndarray:
    return np.zeros((rows, width), dtype=np.float32)


BAD_CALLS: list[tuple[str, Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]] = [
    ("unknown model", lambda: raw_request("nope", _f32()), grpc.StatusCode.NOT_FOUND, "nope"),
    (
        "unknown version",
        lambda: raw_request("classifier", _f32(), model_version="7"),
        grpc.StatusCode.NOT_FOUND,
        "version",
    ),
    (
        "wrong datatype",
        lambda: raw_request("classifier", _f32().astype(np.float64), datatype="FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype",
    ),
    (
        "unknown input",
        lambda: raw_request("classifier", _f32(), name="wrong"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input",
    ),
    (
        "missing input",
        lambda: raw_request("pair", _f32(1, 2), name="a"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing input",
    ),
    (
        "shape against the model",
        lambda: raw_request("classifier", _f32(1, 7)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape",
    ),
    (
        "empty batch",
        lambda: raw_request("classifier", _f32(0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty batch",
    ),
    (
        "unknown output",
        lambda: _with_output(raw_request("classifier", _f32()), "nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output",
    ),
    (
        "raw size disagrees with the shape",
        lambda: _truncated(raw_request("classifier", _f32())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes",
    ),
    (
        "index the model cannot take",
        lambda: raw_request("lookup", np.array([99], dtype=np.int64), "idx", "INT64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model run failed",
    ),
]


def _with_output(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def _truncated(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    return request


@pytest.mark.parametrize(
    ("case", "build", "code", "words"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
async def test_bad_calls_get_their_status_and_the_server_keeps_serving(
    grpc_stub: Stub,
    rng: np.random.Generator,
    case: str,
    build: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    words: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.ModelInfer(build())
    assert err.value.code() == code, err.value.details()
    assert words in (err.value.details() or "")
    await _ok(grpc_stub, rng)


async def test_metadata_of_an_unknown_model_is_not_found(grpc_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_malformed_protobuf_is_invalid_argument(gateway: Gateway, rng: Any) -> None:
    assert gateway.addresses is not None
    async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(b"\xff\xff\xff\xff")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in (err.value.details() or "")
        await _ok(pb_grpc.GRPCInferenceServiceStub(channel), rng)


async def test_standard_health_service(gateway: Gateway) -> None:
    assert gateway.addresses is not None
    async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_server_reflection_describes_the_services(gateway: Gateway) -> None:
    assert gateway.addresses is not None

    def describe(address: str) -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = descriptor_pool.DescriptorPool(database)
            service = pool.FindServiceByName("inference.GRPCInferenceService")
            return list(database.get_services()), [m.name for m in service.methods]

    services, methods = await asyncio.to_thread(describe, gateway.addresses.grpc)
    assert "inference.GRPCInferenceService" in services
    assert "grpc.health.v1.Health" in services
    assert {"ModelInfer", "ModelMetadata", "ServerReady", "ModelConfig"} <= set(methods)


async def test_a_message_over_the_size_limit_is_resource_exhausted(
    settings: ServerSettings, store: RegistryStore, rng: np.random.Generator
) -> None:
    small = dataclasses.replace(settings, max_body_bytes=64 * 1024)
    async with running(small, store) as gateway:
        assert gateway.addresses is not None
        async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            big = rng.normal(size=(4096, 8)).astype(np.float32)  # 128 KiB of raw contents
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(raw_request("classifier", big))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await _ok(stub, rng)


async def test_grpc_on_its_own_loop_in_a_thread_serves_and_stops(
    settings: ServerSettings, store: RegistryStore, rng: np.random.Generator
) -> None:
    threaded = dataclasses.replace(settings, grpc_workers="thread")
    async with running(threaded, store) as gateway:
        assert gateway.addresses is not None
        async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            inputs = [rng.normal(size=(1, 3)) for _ in range(20)]
            replies = await asyncio.gather(
                *(stub.ModelInfer(raw_request("echo_fp64", x, "x", "FP64")) for x in inputs)
            )
            for x, reply in zip(inputs, replies, strict=True):
                got = np.frombuffer(reply.raw_output_contents[0], dtype="<f8").reshape(x.shape)
                np.testing.assert_array_equal(got, x)
    # Leaving `running` stopped the gateway: reaching this line means the stop returned.
