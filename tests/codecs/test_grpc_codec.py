"""The gRPC codec: protobuf messages <-> domain types, for every datatype, raw and typed."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_pb
from tritonclient.utils import serialize_byte_tensor

from conftest import TYPED_CONTENTS
from modelgate.gateway.codecs.grpc import (
    InferResponseSerializer,
    decode_infer_request,
    encode_infer_response,
    encode_model_config,
    encode_model_metadata,
)
from modelgate.gateway.core.datatypes import V2_TO_NUMPY
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.limits import ElementBudget
from modelgate.gateway.core.types import (
    InferResponse,
    ModelConfig,
    ModelMetadata,
    Tensor,
    TensorSpec,
)
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.settings import ServerSettings


def budget() -> ElementBudget:
    """As much as the default settings allow one request."""
    s = ServerSettings()
    return ElementBudget(s.max_request_elements, s.max_request_strings)


DATATYPES = tuple(V2_TO_NUMPY)
TYPED = tuple(d for d in DATATYPES if d != "FP16")


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values over the datatype's whole range (BYTES: arbitrary, not only UTF-8)."""
    if datatype == "BYTES":
        flat = [rng.bytes(int(n)) for n in rng.integers(0, 12, size=int(np.prod(shape)))]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(size=shape) * 1e3).astype(dtype)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(x)) + x for x in array.ravel())
    return array.astype(V2_TO_NUMPY[datatype].newbyteorder("<")).tobytes()


def raw_request(arrays: dict[str, tuple[str, np.ndarray]], **fields: Any) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", **fields)
    for name, (datatype, array) in arrays.items():
        msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
        msg.raw_input_contents.append(to_raw(array, datatype))
    return msg


def typed_request(name: str, datatype: str, array: np.ndarray) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
    getattr(tensor.contents, TYPED_CONTENTS[datatype]).extend(array.ravel().tolist())
    return msg


def assert_invalid(msg: pb.ModelInferRequest, *words: str) -> None:
    with pytest.raises(InferenceError) as info:
        decode_infer_request(msg, budget())
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    for word in words:
        assert word in info.value.message, info.value.message


def assert_same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert got.shape == want.shape
    assert got.dtype == V2_TO_NUMPY[datatype]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(3, 5), (1,), (0, 4), ()])
def test_raw_round_trip(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    x = random_array(datatype, shape, rng)
    request, raw = decode_infer_request(raw_request({"x": (datatype, x)}), budget())
    assert raw
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype) == ("x", datatype)
    assert_same(tensor.data, x, datatype)

    answer = encode_infer_response(InferResponse("m", "3", [tensor]), raw=True)
    assert not answer.outputs[0].HasField("contents")
    assert tuple(answer.outputs[0].shape) == shape
    assert answer.raw_output_contents[0] == to_raw(x, datatype)


@pytest.mark.parametrize("datatype", TYPED)
@pytest.mark.parametrize("shape", [(4, 3), (0,)])
def test_typed_round_trip(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    x = random_array(datatype, shape, rng)
    request, raw = decode_infer_request(typed_request("x", datatype, x), budget())
    assert not raw
    assert_same(request.inputs[0].data, x, datatype)

    answer = encode_infer_response(InferResponse("m", "3", request.inputs), raw=False)
    assert len(answer.raw_output_contents) == 0
    [out] = answer.outputs
    assert (out.datatype, tuple(out.shape)) == (datatype, shape)
    assert [f.name for f, _ in out.contents.ListFields()] in ([], [TYPED_CONTENTS[datatype]])
    assert list(getattr(out.contents, TYPED_CONTENTS[datatype])) == x.ravel().tolist()


def test_request_fields_and_parameters(rng: np.random.Generator) -> None:
    msg = raw_request(
        {"a": ("FP32", random_array("FP32", (2, 3), rng)), "b": ("INT64", np.arange(2))},
        model_version="",
        id="req-7",
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
    )
    msg.parameters["timeout"].int64_param = 1_500_000
    msg.parameters["flag"].bool_param = True
    msg.parameters["tag"].string_param = "blue"
    msg.parameters["ratio"].double_param = 0.25
    request, _ = decode_infer_request(msg, budget())
    assert (request.model, request.version, request.id, request.protocol) == (
        "m",
        None,
        "req-7",
        "grpc",
    )
    assert [t.name for t in request.inputs] == ["a", "b"]
    assert request.outputs == ["y"]
    assert request.timeout == pytest.approx(1.5)  # the other parameters are accepted, unused

    bare, _ = decode_infer_request(
        raw_request({"a": ("FP32", np.zeros((1, 1), np.float32))}), budget()
    )
    assert (bare.version, bare.id, bare.outputs, bare.timeout) == (None, None, None, None)

    unset = raw_request({"a": ("FP32", np.zeros((1, 1), np.float32))})
    unset.parameters["timeout"].SetInParent()  # present, with no value: as if not given
    assert decode_infer_request(unset, budget())[0].timeout is None


def test_bad_timeout_is_invalid() -> None:
    msg = raw_request({"a": ("FP32", np.zeros((1, 1), np.float32))})
    msg.parameters["timeout"].string_param = "soon"
    assert_invalid(msg, "timeout")


def test_raw_count_must_match_inputs(rng: np.random.Generator) -> None:
    msg = raw_request({"a": ("FP32", random_array("FP32", (2,), rng))})
    msg.inputs.add(name="b", datatype="FP32", shape=[2])
    assert_invalid(msg, "'a'", "'b'", "raw_input_contents")


def test_raw_and_typed_contents_do_not_mix(rng: np.random.Generator) -> None:
    msg = raw_request({"a": ("FP32", random_array("FP32", (2,), rng))})
    msg.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    assert_invalid(msg, "'a'", "raw")


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_raw_size_must_match_shape(datatype: str, delta: int, rng: np.random.Generator) -> None:
    x = random_array(datatype, (2, 3), rng)
    msg = raw_request({"x": (datatype, x)})
    good = msg.raw_input_contents[0]
    msg.raw_input_contents[0] = good[:-1] if delta < 0 else good + b"\0"
    assert_invalid(msg, "'x'", "bytes")


@pytest.mark.parametrize(
    ("count", "payload"),
    [(1, b"\x05\0\0\0ab"), (2, b"\x01\0\0\0a\x01\0\0\0b\xff"), (1, b"\x01\0"), (2, b"\0\0\0\0")],
    ids=["element-too-long", "trailing-bytes", "short-length", "too-few-elements"],
)
def test_raw_bytes_must_parse(count: int, payload: bytes) -> None:
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[payload])
    msg.inputs.add(name="s", datatype="BYTES", shape=[count])
    assert_invalid(msg, "'s'")


def test_typed_contents_use_the_datatypes_field(rng: np.random.Generator) -> None:
    msg = typed_request("x", "FP32", random_array("FP32", (3,), rng))
    msg.inputs[0].contents.fp32_contents[:] = []
    msg.inputs[0].contents.int_contents.extend([1, 2, 3])
    assert_invalid(msg, "'x'", "fp32_contents", "int_contents")

    msg = typed_request("x", "INT64", np.arange(3))
    msg.inputs[0].contents.fp64_contents.extend([1.0, 2.0, 3.0])
    assert_invalid(msg, "'x'", "int64_contents")


@pytest.mark.parametrize("count", [5, 7])
def test_typed_count_must_match_shape(count: int) -> None:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype="INT32", shape=[2, 3])
    tensor.contents.int_contents.extend(range(count))
    assert_invalid(msg, "'x'", "6")


def test_fp16_needs_raw_contents() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert_invalid(msg, "'h'", "raw")


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT16", -40000), ("UINT8", 256),
                                                 ("UINT16", 65536)])  # fmt: skip
def test_narrow_ints_out_of_range(datatype: str, value: int) -> None:
    msg = typed_request("n", datatype, np.zeros(2, dtype=np.int64))
    getattr(msg.inputs[0].contents, TYPED_CONTENTS[datatype])[1] = value
    assert_invalid(msg, "'n'", "range")


def test_negative_dims_and_unknown_datatypes() -> None:
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[b""])
    msg.inputs.add(name="neg", datatype="FP32", shape=[2, -1])
    assert_invalid(msg, "'neg'", "negative")

    for contents in ([b"\0\0"], []):
        msg = pb.ModelInferRequest(model_name="m", raw_input_contents=contents)
        msg.inputs.add(name="odd", datatype="BF16", shape=[1])
        assert_invalid(msg, "'odd'", "BF16")


def test_fp16_output_is_raw_even_for_a_typed_request(rng: np.random.Generator) -> None:
    half = random_array("FP16", (2, 2), rng)
    ints = random_array("INT32", (2,), rng)
    outputs = [Tensor("h", "FP16", half), Tensor("i", "INT32", ints)]
    answer = encode_infer_response(InferResponse("m", "1", outputs, id="r"), raw=False)
    assert list(answer.raw_output_contents) == [to_raw(half, "FP16"), to_raw(ints, "INT32")]
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "1", "r")


@pytest.mark.parametrize("raw", [True, False])
def test_string_outputs_from_onnx_runtime_are_utf8(raw: bool) -> None:
    words = np.array([["héllo", ""], ["wörld", "x"]], dtype=object)
    answer = encode_infer_response(InferResponse("m", "1", [Tensor("s", "BYTES", words)]), raw)
    encoded = [w.encode("utf-8") for w in words.ravel()]
    if raw:
        assert answer.raw_output_contents[0] == b"".join(
            struct.pack("<I", len(w)) + w for w in encoded
        )
    else:
        assert list(answer.outputs[0].contents.bytes_contents) == encoded


@pytest.mark.parametrize("raw", [True, False])
def test_serialized_answers_are_the_encoded_messages(raw: bool, rng: np.random.Generator) -> None:
    """Answers of one version share a serialized head per output shapes; each must still
    parse to exactly the message `encode_infer_response` builds, whatever came before."""
    serialize = InferResponseSerializer()
    answers = []
    for rows in (1, 3, 1, 2, 3):
        for request_id in (None, f"r{rows}"):
            label = random_array("INT64", (rows,), rng)
            scores = random_array("FP32", (rows, 2), rng)
            outputs = [Tensor("label", "INT64", label), Tensor("scores", "FP32", scores)]
            answers.append(InferResponse("m", "1", outputs, request_id))
            answers.append(InferResponse("m", "2", outputs[1:], request_id))  # a subset
            half = random_array("FP16", (rows,), rng)
            answers.append(InferResponse("m", "1", [Tensor("h", "FP16", half)], request_id))
    for answer in answers:
        got = pb.ModelInferResponse.FromString(serialize(answer, raw))
        assert got == encode_infer_response(answer, raw)


def test_serializer_keeps_a_bounded_number_of_heads(rng: np.random.Generator) -> None:
    serialize = InferResponseSerializer()
    for rows in range(1, InferResponseSerializer.MAX_HEADS + 20):
        answer = InferResponse("m", "1", [Tensor("y", "FP32", random_array("FP32", (rows,), rng))])
        got = pb.ModelInferResponse.FromString(serialize(answer, raw=True))
        assert got == encode_infer_response(answer, raw=True)
    assert 0 < len(serialize._heads) <= InferResponseSerializer.MAX_HEADS


@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_interop(datatype: str, rng: np.random.Generator) -> None:
    """Triton's own messages and BYTES encoding decode here; our answers decode there."""
    x = random_array(datatype, (2, 3), rng)
    content = serialize_byte_tensor(x).item() if datatype == "BYTES" else x.tobytes()
    theirs = triton_pb.ModelInferRequest(
        model_name="m", model_version="2", id="t", raw_input_contents=[content]
    )
    theirs.inputs.add(name="x", datatype=datatype, shape=x.shape)
    theirs.parameters["timeout"].int64_param = 2_000
    request, raw = decode_infer_request(
        pb.ModelInferRequest.FromString(theirs.SerializeToString()), budget()
    )
    assert raw and request.version == "2" and request.timeout == pytest.approx(0.002)
    assert_same(request.inputs[0].data, x, datatype)

    answer = InferResponseSerializer()(InferResponse("m", "2", request.inputs, id="t"), raw=True)
    result = triton.InferResult(triton_pb.ModelInferResponse.FromString(answer))
    np.testing.assert_array_equal(result.as_numpy("x"), x)
    assert result.get_response().id == "t"


def test_model_metadata() -> None:
    meta = ModelMetadata(
        name="clf", versions=("1", "2"), platform="onnxruntime_onnx",
        inputs=(TensorSpec("input", "FP32", (-1, 32)),),
        outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("names", "BYTES", (-1, 2))),
    )  # fmt: skip
    msg = encode_model_metadata(meta)
    assert (msg.name, list(msg.versions), msg.platform) == ("clf", ["1", "2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.outputs] == [
        ("label", "INT64", [-1]), ("names", "BYTES", [-1, 2]),
    ]  # fmt: skip
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [
        ("input", "FP32", [-1, 32])
    ]


def test_model_config_parses_as_tritons() -> None:
    specs = tuple(TensorSpec(f"t_{d.lower()}", d, (-1, 3)) for d in DATATYPES)
    cfg = ModelConfig("clf", "onnxruntime_onnx", 8, inputs=specs, outputs=specs[:1])
    msg = encode_model_config(cfg)
    theirs = triton_pb.ModelConfigResponse.FromString(msg.SerializeToString()).config
    assert (theirs.name, theirs.platform, theirs.backend, theirs.max_batch_size) == (
        "clf", "onnxruntime_onnx", "onnxruntime", 8,
    )  # fmt: skip
    got = [(i.name, triton_config.DataType.Name(i.data_type), list(i.dims)) for i in theirs.input]
    want = [
        (s.name, "TYPE_STRING" if s.datatype == "BYTES" else f"TYPE_{s.datatype}", [-1, 3])
        for s in specs
    ]
    assert got == want
    assert [o.name for o in theirs.output] == ["t_bool"]
