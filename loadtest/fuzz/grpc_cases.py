"""Fuzz cases for the gateway's gRPC decoders: ModelInfer with raw contents, with typed
contents, and raw bytes (malformed protobuf) to every method of the V2 service.

Message-level mutations change fields the decoder reads (shapes, datatypes, contents and
their counts, raw lengths, parameters); wire-level ones splice fields with lying lengths,
invalid UTF-8 or unknown numbers into the serialized bytes; byte-level ones flip and cut.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

from loadtest.fuzz import mutate, values
from loadtest.fuzz.http_cases import Check
from loadtest.fuzz.seeds import GOOD_MODELS, INPUTS, Oracle, from_raw, inputs_for, mismatch, to_raw
from loadtest.fuzz.wire import GRPC_SERVICE, Case, Reply
from modelgate.gateway.codecs.grpc import CONTENTS as CODEC_CONTENTS
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb

INFER = GRPC_SERVICE + "ModelInfer"
Message = Any  # a generated protobuf message (the stubs are untyped)

# The typed contents field of each datatype (the gateway's own table), and values that
# field can hold but the datatype cannot (or that are otherwise hostile).
CONTENTS = {datatype: field for datatype, (field, _) in CODEC_CONTENTS.items()}
_EXTREMES: dict[str, tuple[Any, ...]] = {
    "bool_contents": (True, False),
    "int_contents": (2**31 - 1, -(2**31), 128, -129, 32768, 255),
    "int64_contents": (2**63 - 1, -(2**63), 10, -1),
    "uint_contents": (2**32 - 1, 256, 65536),
    "uint64_contents": (2**64 - 1, 2**63),
    "fp32_contents": (float("nan"), float("inf"), -float("inf"), 3.4e38, 1e-45),
    "fp64_contents": (float("nan"), float("inf"), 1.7976931348623157e308, 5e-324),
    "bytes_contents": (b"\xff\xfe", b"\xed\xa0\x80", b"", b"\x00", b"x" * 100_000),
}
_NAMES = ("", "nosuch", "light" * 1000, "\u00e9", "\u0000", "light/../words", "LIGHT", " light")
_VERSIONS = ("0", "1", "2", "-1", "99999999999999999999", "abc", "\u00b2", "1.0", "\u0000")
_INT64 = (-1, 0, 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), 3, 33)


def infer_message(model: str, rng: random.Random, raw: bool) -> Message:
    """A valid ModelInfer request for `model`, tensors raw or typed."""
    arrays = inputs_for(model, rng)
    msg = pb.ModelInferRequest(model_name=model)
    if rng.random() < 0.1:
        msg.model_version = "1"
    if rng.random() < 0.3:
        msg.id = f"req-{rng.randrange(1000)}"
    for spec in INPUTS[model]:
        array = arrays[spec.name]
        tensor = msg.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if raw or spec.datatype == "FP16":
            msg.raw_input_contents.append(to_raw(array, spec.datatype))
        else:
            values = array.reshape(-1).tolist()
            if spec.datatype == "BYTES":
                values = [v.encode() for v in values]
            getattr(tensor.contents, CONTENTS[spec.datatype]).extend(values)
    if rng.random() < 0.2:
        msg.parameters["timeout"].int64_param = rng.choice((1_000_000, 5_000_000))
    if rng.random() < 0.2:
        names = {"light": ["label", "probabilities"], "lookup": ["out"], "pair": ["sum"]}
        for name in names.get(model, ["y"]):
            msg.outputs.add(name=name)
    return msg


def _mutate_message(msg: Message, rng: random.Random, ops: list[str]) -> None:
    """1-3 message-level mutations; one the protobuf runtime refuses is skipped."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        name, op = rng.choice(_MESSAGE_OPS)
        try:
            op(msg, rng)
        except (ValueError, TypeError, IndexError, OverflowError):
            continue
        ops.append(name)


def _tensor(msg: Message, rng: random.Random) -> Message:
    return rng.choice(msg.inputs) if msg.inputs else msg.inputs.add(name="x", datatype="FP32")


def _op_model(msg: Message, rng: random.Random) -> None:
    msg.model_name = rng.choice((*_NAMES, *INPUTS))


def _op_version(msg: Message, rng: random.Random) -> None:
    msg.model_version = rng.choice(_VERSIONS)


def _op_id(msg: Message, rng: random.Random) -> None:
    msg.id = rng.choice(("", "\u00e9" * 10_000, "x" * 100_000, "\u0000", "id"))


def _op_name(msg: Message, rng: random.Random) -> None:
    others = [t.name for t in msg.inputs]
    _tensor(msg, rng).name = rng.choice(("", "nosuch", "\u00e9", *others, "x", "input"))


def _op_datatype(msg: Message, rng: random.Random) -> None:
    _tensor(msg, rng).datatype = values.datatype(rng)


def _op_shape(msg: Message, rng: random.Random) -> None:
    tensor = _tensor(msg, rng)
    shape = [d for d in values.dims(rng) if isinstance(d, int) and -(2**63) <= d < 2**63]
    if rng.random() < 0.3:
        shape = [rng.choice(_INT64) for _ in range(rng.randrange(1, 4))]
    del tensor.shape[:]
    tensor.shape.extend(shape)


def _op_raw(msg: Message, rng: random.Random) -> None:
    contents = msg.raw_input_contents
    if not contents:
        contents.append(rng.randbytes(rng.choice((0, 4, 128))))
        return
    at = rng.randrange(len(contents))
    how = rng.randrange(4)
    if how == 0:
        contents[at] = mutate.mutate_bytes(contents[at], rng, [])
    elif how == 1:
        contents[at] = contents[at][: rng.randrange(len(contents[at]) + 1)]
    elif how == 2:
        contents[at] = contents[at] + rng.randbytes(rng.choice((1, 2, 4, 8, 4096)))
    else:  # a BYTES element's length prefix that lies
        data = bytearray(contents[at])
        if len(data) >= 4:
            value = rng.choice((0, 0x7FFFFFFF, 0xFFFFFFFF, len(data), len(data) - 3))
            data[:4] = value.to_bytes(4, "little")
        contents[at] = bytes(data)


def _op_raw_count(msg: Message, rng: random.Random) -> None:
    contents = msg.raw_input_contents
    if contents and rng.random() < 0.5:
        del contents[rng.randrange(len(contents))]
    else:
        contents.append(contents[0] if contents else b"\x00" * 4)


def _op_inputs(msg: Message, rng: random.Random) -> None:
    how = rng.randrange(3)
    if how == 0 and msg.inputs:
        del msg.inputs[rng.randrange(len(msg.inputs))]
    elif how == 1 and msg.inputs:
        msg.inputs.add().CopyFrom(rng.choice(msg.inputs))
    else:
        msg.inputs.add(name=rng.choice(("", "extra", "x")), datatype=values.datatype(rng))


def _op_contents(msg: Message, rng: random.Random) -> None:
    """Typed contents: the wrong field, hostile values, a wrong count, or a huge one."""
    tensor = _tensor(msg, rng)
    field = CONTENTS.get(tensor.datatype, "fp32_contents")
    how = rng.randrange(4)
    if how == 0:
        field = rng.choice(tuple(_EXTREMES))
    values = getattr(tensor.contents, field)
    if how == 1 and len(values):
        del values[rng.randrange(len(values)) :]
    elif how == 2:
        values.extend([values[0] if len(values) else _EXTREMES[field][0]] * rng.choice((1, 1000)))
    else:
        extremes = _EXTREMES[field]
        values.extend(rng.choice(extremes) for _ in range(rng.choice((1, 3, 32))))


def _op_parameter(msg: Message, rng: random.Random) -> None:
    holder = msg if rng.random() < 0.6 or not msg.inputs else _tensor(msg, rng)
    key = rng.choice(("timeout", "timeout", "binary_data_size", "binary_data_output", "", "x"))
    param = holder.parameters[key]
    choice = rng.randrange(5)
    if choice == 0:
        param.int64_param = rng.choice(_INT64)
    elif choice == 1:
        param.uint64_param = rng.choice((0, 2**64 - 1, 1))
    elif choice == 2:
        param.double_param = rng.choice((1.5, float("nan"), float("inf"), -1.0))
    elif choice == 3:
        param.string_param = rng.choice(("", "10", "\u00e9", "x" * 10_000))
    else:
        param.bool_param = rng.random() < 0.5


def _op_outputs(msg: Message, rng: random.Random) -> None:
    out = msg.outputs.add(name=rng.choice(("", "nosuch", "y", "label", "\u00e9" * 1000)))
    if rng.random() < 0.3:
        out.parameters["binary_data"].bool_param = True


_MESSAGE_OPS: tuple[tuple[str, Callable[[Message, random.Random], None]], ...] = (
    ("model", _op_model),
    ("version", _op_version),
    ("id", _op_id),
    ("name", _op_name),
    ("datatype", _op_datatype),
    ("datatype", _op_datatype),
    ("shape", _op_shape),
    ("shape", _op_shape),
    ("raw", _op_raw),
    ("raw", _op_raw),
    ("raw-count", _op_raw_count),
    ("inputs", _op_inputs),
    ("contents", _op_contents),
    ("contents", _op_contents),
    ("parameter", _op_parameter),
    ("outputs", _op_outputs),
)


class GrpcInfer:
    """ModelInfer requests, tensors in raw_input_contents (`raw`) or typed contents."""

    server = "grpc"

    def __init__(self, oracle: Oracle, raw: bool) -> None:
        self._oracle = oracle
        self._raw = raw
        self.name = "grpc-raw" if raw else "grpc-typed"

    def case(self, rng: random.Random) -> Case:
        models = tuple(INPUTS) if self._raw else tuple(m for m in INPUTS if m != "echo_fp16")
        model = rng.choice(models)
        ops: list[str] = [model]
        msg = infer_message(model, rng, self._raw)
        _mutate_message(msg, rng, ops)
        data = msg.SerializeToString()
        roll = rng.random()
        if roll < 0.05:
            data = mutate.mutate_bytes(data, rng, ops)
        elif roll < 0.1:
            data = mutate.mutate_wire(data, rng, ops)
        return Case("grpc", INFER, data, ops=tuple(ops))

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        return good_infer(self._oracle, rng, self._raw)


def good_infer(oracle: Oracle, rng: random.Random, raw: bool) -> tuple[Case, Check]:
    """A valid ModelInfer request and the check of its answer against the oracle."""
    model = rng.choice(GOOD_MODELS)
    msg = pb.ModelInferRequest(model_name=model)
    inputs = inputs_for(model, rng)
    for spec in INPUTS[model]:
        array = inputs[spec.name]
        tensor = msg.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        values = array.reshape(-1).tolist()
        if raw:
            msg.raw_input_contents.append(to_raw(array, spec.datatype))
        else:
            values = [v.encode() for v in values] if spec.datatype == "BYTES" else values
            getattr(tensor.contents, CONTENTS[spec.datatype]).extend(values)
    expected = oracle.outputs(model, inputs)
    return Case("grpc", INFER, msg.SerializeToString()), lambda r: _check(r, expected)


def _check(reply: Reply, expected: dict[str, np.ndarray]) -> str | None:
    if reply.code != "OK":
        return f"{reply.code} {reply.transport or ''}: {reply.detail[:200]}"
    answer = pb.ModelInferResponse.FromString(reply.body)
    got = {}
    for i, out in enumerate(answer.outputs):
        shape = list(out.shape)
        if answer.raw_output_contents:
            got[out.name] = from_raw(answer.raw_output_contents[i], out.datatype, shape)
        else:
            values = list(getattr(out.contents, CONTENTS[out.datatype]))
            if out.datatype == "BYTES":
                values = [v.decode() for v in values]
            got[out.name] = np.array(values).reshape(shape)
    return mismatch(expected, got)


# --- raw bytes ---------------------------------------------------------------------------


def _other_requests(rng: random.Random) -> tuple[str, Message]:
    """A valid request to one of the service's other methods: (method, message)."""
    model = rng.choice(tuple(INPUTS))
    version = rng.choice(("", "1"))
    options: tuple[tuple[str, Message], ...] = (
        ("ServerLive", pb.ServerLiveRequest()),
        ("ServerReady", pb.ServerReadyRequest()),
        ("ServerMetadata", pb.ServerMetadataRequest()),
        ("ModelReady", pb.ModelReadyRequest(name=model, version=version)),
        ("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version)),
        ("ModelConfig", pb.ModelConfigRequest(name=model, version=version)),
        ("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version)),
        ("RepositoryIndex", pb.RepositoryIndexRequest(ready=rng.random() < 0.5)),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model)),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model)),
    )
    return rng.choice(options)


class GrpcBytes:
    """Malformed protobuf: serialized valid requests (ModelInfer raw and typed, and every
    other method's) mutated as bytes, spliced with hostile fields, or random bytes."""

    name = "grpc-bytes"
    server = "grpc"

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    def case(self, rng: random.Random) -> Case:
        ops: list[str] = []
        if rng.random() < 0.6:
            model = rng.choice(tuple(INPUTS))
            method, msg = "ModelInfer", infer_message(model, rng, raw=rng.random() < 0.5)
            ops.append(model)
        else:
            method, msg = _other_requests(rng)
            ops.append(method)
        data = msg.SerializeToString()
        roll = rng.random()
        if roll < 0.55:
            data = mutate.mutate_bytes(data, rng, ops)
        elif roll < 0.9:
            data = mutate.mutate_wire(data, rng, ops)
        else:
            data = rng.randbytes(rng.choice((1, 2, 5, 64, 4096)))
            ops.append("random")
        return Case("grpc", GRPC_SERVICE + method, data, ops=tuple(ops))

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        return good_infer(self._oracle, rng, raw=True)
