"""Property-based tests of every request decoder against one real gateway: V2 JSON, the
binary tensor data extension, V1, gRPC raw and typed contents, generated from their grammar
and mutated byte by byte.

Whatever a request holds, the answer is 2xx, 4xx or a documented 503/504 (gRPC: OK or a
status the core maps client errors and overload to), never a 5xx nor INTERNAL; the gateway
logs no warning or error for it; and the next good request is served correctly.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import grpc
import httpx
import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import (
    BYTE_EDITS,
    DATATYPES,
    DEEP_VALUES,
    JSON_SCALARS,
    JSON_VALUES,
    TYPED_CONTENTS,
    Alarms,
    assert_serves_grpc,
    assert_serves_http,
    mutated,
    nested,
    production_recursion_limit,
)
from modelgate.gateway.core.datatypes import V2_TO_NUMPY
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc

# The answers a client may get: its own mistake (4xx), a model not ready or a full queue
# (503), its deadline passed (504). Anything else from 500 up is a gateway bug.
DOCUMENTED_5XX = frozenset({503, 504})
GRPC_ANSWERS = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RNG = np.random.default_rng(14)

MODELS = st.sampled_from(
    [f"echo_{d.lower()}" for d in DATATYPES] + ["pair", "classifier", "lookup", "fixed", "nope"]
)
NAMES = st.sampled_from(["x", "a", "b", "input", "idx", "y"]) | st.text(max_size=12)
DATATYPE_NAMES = st.sampled_from(DATATYPES) | st.text(max_size=6)

# --- JSON values and shapes -------------------------------------------------------------------


def rarely(draw: st.DrawFn) -> bool:
    """True about one time in ten: each part of a request is mostly right, so that many
    requests get all the way to the model and the rest go wrong in one place or a few.
    (Shrinking moves towards False: a failing example keeps only the faults it needs.)"""
    return draw(st.integers(0, 9)) == 9


EDGE_DIMS = st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 268_435_456])
DIMS = st.integers(0, 4) | st.integers(-3, 2**66) | EDGE_DIMS


@st.composite
def shapes(draw: st.DrawFn, protobuf: bool = False) -> Any:
    """Shapes a model takes ([rows, 3]), small ones, a zero beside huge dimensions, more
    dimensions than a tensor may have, any integers, or any JSON value (unless the shape
    goes in a `protobuf` field: 64-bit integers)."""
    kinds = ["rows"] * 5 + ["small", "zero-and-huge", "many-dims", "wild"]
    kind = draw(st.sampled_from(kinds if protobuf else [*kinds, "json"]))
    if kind == "rows":
        return [draw(st.integers(0, 4)), 3]
    if kind == "small":
        return draw(st.lists(st.integers(0, 4), max_size=4))
    if kind == "zero-and-huge":
        edge = EDGE_DIMS.filter(lambda d: not protobuf or d < 2**63)
        dims = draw(st.lists(edge, min_size=1, max_size=3))
        return draw(st.permutations([0, *dims]))
    if kind == "many-dims":
        return [1] * draw(st.integers(60, 70))
    if kind == "wild":
        dim = DIMS.filter(lambda d: not protobuf or -(2**63) <= d < 2**63)
        return draw(st.lists(dim, max_size=5))
    return draw(JSON_VALUES)


def values_for(datatype: str, typed: bool) -> st.SearchStrategy[Any]:
    """JSON values of `datatype` within its range (`typed`), or also at and beyond it and of
    other kinds."""
    if datatype in ("FP16", "FP32", "FP64"):
        bound = 3.4e38 if datatype != "FP64" else None
        inside = st.floats(
            min_value=None if bound is None else -bound,
            max_value=bound,
            allow_nan=False,
            allow_infinity=False,
        )
        edge = st.sampled_from([1e308, -1e308, 3.5e38, -3.5e38, 65504.0, 70000.0, 5e-324])
    elif datatype == "BOOL":
        inside = edge = st.booleans()
    elif datatype == "BYTES":
        inside = edge = st.text(max_size=6)
    elif datatype in V2_TO_NUMPY:
        info = np.iinfo(V2_TO_NUMPY[datatype])
        inside = st.integers(int(info.min), int(info.max))
        edge = st.sampled_from([int(info.min) - 1, int(info.max) + 1, 2**64, -(2**63) - 1])
    else:
        return JSON_SCALARS
    return inside if typed else inside | edge | JSON_SCALARS


def _count(shape: Any) -> int | None:
    """The element count of a shape of up to 64 elements (a zero dimension beside huge
    ones included); None for anything else."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return None
    count = math.prod(shape)
    return count if count <= 64 else None


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1 or not all(shape):
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def json_tensor_data(draw: st.DrawFn, datatype: str, shape: Any) -> Any:
    """Data for a tensor: mostly the right count of values near the type's range, flat or
    nested; sometimes one too many or too few, deeply nested, or any JSON at all."""
    count = _count(shape)
    how = "fit" if not rarely(draw) else draw(st.sampled_from(["off-by-one", "deep", "any"]))
    if how == "any" or count is None:
        return draw(JSON_VALUES)
    if how == "off-by-one":
        count = max(0, count + draw(st.sampled_from([-1, 1])))
    values = values_for(datatype, typed=not rarely(draw))
    flat = draw(st.lists(values, min_size=count, max_size=count))
    if how == "deep":  # up to orjson's own limit of 1024 levels
        return nested(draw(st.integers(2, 70) | st.integers(900, 1020)), value=flat)
    if draw(st.booleans()) and count == _count(shape):
        return _nest(flat, shape)
    return flat


@st.composite
def v2_input(draw: st.DrawFn, datatype: str) -> dict[str, Any]:
    """An input of `datatype` (or another type at times) for the echo models' `x`, with
    a field missing or replaced at times."""
    if rarely(draw):
        datatype = draw(DATATYPE_NAMES)
    shape = draw(shapes())
    name = draw(NAMES) if rarely(draw) else "x"
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    tensor["data"] = draw(json_tensor_data(datatype, shape))
    if rarely(draw):
        key = draw(st.sampled_from(["name", "datatype", "shape", "data"]))
        if draw(st.booleans()):
            del tensor[key]
        else:
            tensor[key] = draw(JSON_VALUES)
    return tensor


@st.composite
def model_and_datatype(draw: st.DrawFn) -> tuple[str, str]:
    """Mostly an echo model and its own datatype, so that many requests get all the way."""
    datatype = draw(st.sampled_from(DATATYPES))
    model = draw(MODELS) if rarely(draw) else f"echo_{datatype.lower()}"
    return model, datatype


GOOD_TIMEOUTS = st.integers(10**6, 10**8)  # microseconds: 1 to 100 s
TIMEOUTS = st.integers(-5, 2**70) | st.integers(1, 10**4) | st.integers(2**63, 2**65) | JSON_SCALARS


@st.composite
def v2_document(draw: st.DrawFn, inputs: list[Any]) -> Any:
    """A V2 request object around `inputs`, with parameters, outputs and an id at times."""
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["parameters"] = (
            draw(JSON_VALUES)
            if rarely(draw)
            else {
                "timeout": draw(TIMEOUTS if rarely(draw) else GOOD_TIMEOUTS),
                "binary_data_output": draw(JSON_SCALARS if rarely(draw) else st.booleans()),
            }
        )
    if draw(st.booleans()):
        output: dict[str, Any] = {"name": draw(NAMES) if rarely(draw) else "y"}
        if draw(st.booleans()):
            output["parameters"] = {"binary_data": draw(JSON_SCALARS)}
        doc["outputs"] = [output] if not rarely(draw) else draw(JSON_VALUES)
    if draw(st.booleans()):
        doc["id"] = draw(JSON_SCALARS if rarely(draw) else st.text(max_size=8))
    if rarely(draw) and rarely(draw):
        return draw(JSON_VALUES)  # not an object at all, or one without inputs
    return doc


def _json(doc: Any) -> bytes:
    """JSON text as a client might write it: integers of any size, NaN and Infinity too."""
    return json.dumps(doc).encode()


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-request-timeout-ms": st.integers(-5, 2**80).map(str)
        | st.integers(10**300, 10**500).map(str)
        | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
    },
)


# --- the gateway and what every example must leave behind ---------------------------------------


def assert_http_handled(
    http: httpx.Client,
    alarms: Alarms,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    finite: bool = False,
) -> None:
    """The request is answered as documented, nothing is logged, the next is served; with
    `finite` (JSON in, which has no NaN nor infinity, only null for a missing float), an
    echo answer holds no null unless the request had one."""
    alarms.clear()
    with production_recursion_limit():
        r = http.post(path, content=body, headers=headers)
    event(f"HTTP {r.status_code}")  # --hypothesis-show-statistics: how far requests got
    assert r.status_code < 500 or r.status_code in DOCUMENTED_5XX, (r.status_code, r.text[:300])
    if finite and r.status_code == 200 and "/echo_" in path and b"null" not in body:
        assert b"null" not in r.content, r.text[:300]
    alarms.assert_none()
    assert_serves_http(http, RNG)


def assert_grpc_handled(channel: grpc.Channel, alarms: Alarms, message: bytes) -> None:
    infer = channel.unary_unary(MODEL_INFER)  # bytes in and out: any message at all
    alarms.clear()
    try:
        with production_recursion_limit():
            answer = infer(message, timeout=30)
        assert isinstance(answer, bytes)
        event("OK")
    except grpc.RpcError as exc:
        event(exc.code().name)
        assert exc.code() in GRPC_ANSWERS, (exc.code(), exc.details())
    alarms.assert_none()
    assert_serves_grpc(pb_grpc.GRPCInferenceServiceStub(channel), RNG)


# --- V2 JSON ---------------------------------------------------------------------------------


@given(target=model_and_datatype(), data=st.data(), headers=HEADERS)
def test_v2_json(
    module_http: httpx.Client,
    alarms: Alarms,
    target: tuple[str, str],
    data: st.DataObject,
    headers: dict[str, str],
) -> None:
    model, datatype = target
    inputs = data.draw(
        st.lists(v2_input(datatype), min_size=1, max_size=2 if rarely(data.draw) else 1)
        if not rarely(data.draw)
        else JSON_VALUES
    )
    body = _json(data.draw(v2_document(inputs)))
    path = f"/v2/models/{model}/infer"
    assert_http_handled(module_http, alarms, path, body, headers, finite=True)


def _good_v2_body() -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1.5] * 6}
    return _json({"inputs": [tensor], "parameters": {"timeout": 10**7}})


@given(edits=BYTE_EDITS)
def test_v2_jsonmutated(
    module_http: httpx.Client, alarms: Alarms, edits: list[tuple[int, bytes]]
) -> None:
    body = mutated(_good_v2_body(), edits)
    assert_http_handled(module_http, alarms, "/v2/models/echo_fp32/infer", body, {})


# --- the binary tensor data extension ---------------------------------------------------------


def raw_values(datatype: str, count: int) -> st.SearchStrategy[bytes]:
    """`count` elements of `datatype` as the binary extension carries them."""
    if datatype == "BYTES":
        return st.lists(st.binary(max_size=5), min_size=count, max_size=count).map(
            lambda items: b"".join(struct.pack("<I", len(i)) + i for i in items)
        )
    itemsize = V2_TO_NUMPY[datatype].itemsize if datatype in V2_TO_NUMPY else 4
    return st.binary(min_size=count * itemsize, max_size=count * itemsize)


@st.composite
def binary_input(draw: st.DrawFn, datatype: str) -> tuple[dict[str, Any], bytes]:
    """An input whose data follows the JSON: the right bytes for its shape, or not, under
    a `binary_data_size` that is right, or not."""
    if rarely(draw):
        datatype = draw(DATATYPE_NAMES)
    shape = draw(shapes())
    count = _count(shape)
    if count is None or rarely(draw):
        raw = draw(st.binary(max_size=40))
    else:
        raw = draw(raw_values(datatype, count))
    size: Any = len(raw)
    if rarely(draw):
        size = draw(st.integers(-2, 2**66) | JSON_SCALARS | DEEP_VALUES)
    tensor = {
        "name": draw(NAMES) if rarely(draw) else "x",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }
    return tensor, raw


@given(target=model_and_datatype(), data=st.data())
def test_v2_binary(
    module_http: httpx.Client,
    alarms: Alarms,
    target: tuple[str, str],
    data: st.DataObject,
) -> None:
    model, datatype = target
    two = rarely(data.draw)
    parts = data.draw(st.lists(binary_input(datatype), min_size=1, max_size=2 if two else 1))
    header = _json(data.draw(v2_document([tensor for tensor, _ in parts])))
    body = header + b"".join(raw for _, raw in parts)
    if rarely(data.draw):
        body += data.draw(st.binary(min_size=1, max_size=2))
    length = str(len(header))
    if rarely(data.draw):
        length = data.draw(
            st.integers(-2, len(body) + 2).map(str)
            | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8)
        )
    headers = {"inference-header-content-length": length, **data.draw(HEADERS)}
    assert_http_handled(module_http, alarms, f"/v2/models/{model}/infer", body, headers)


@given(
    where=st.sampled_from(["request", "input", "output"]),
    key=st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "timeout"]),
    value=JSON_VALUES | DEEP_VALUES,
)
def test_v2_parameter_values(
    module_http: httpx.Client, alarms: Alarms, where: str, key: str, value: Any
) -> None:
    """Any value in a parameter of a binary request, nested 1,000 deep too: an error message
    names the parameter, never formats the value (unbounded, or recursing past the limit)."""
    tensor: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [1, 3]}
    tensor["parameters"] = {"binary_data_size": 12}
    doc: dict[str, Any] = {"inputs": [tensor], "outputs": [{"name": "y"}]}
    place = {"request": doc, "input": tensor, "output": doc["outputs"][0]}[where]
    place.setdefault("parameters", {})[key] = value
    header = _json(doc)
    body = header + np.arange(3, dtype="<f4").tobytes()
    headers = {"inference-header-content-length": str(len(header))}
    assert_http_handled(module_http, alarms, "/v2/models/echo_fp32/infer", body, headers)


# --- V1 ----------------------------------------------------------------------------------------


@st.composite
def v1_body(draw: st.DrawFn, datatype: str) -> Any:
    """Rows of three values (the echo models), objects keyed by input (`pair`), the
    columnar form, nested deep, or any JSON."""
    row = st.lists(values_for(datatype, typed=not rarely(draw)), min_size=3, max_size=3)
    if rarely(draw):
        row = st.lists(values_for(datatype, typed=False), min_size=2, max_size=4)
    keyed = st.fixed_dictionaries({"a": row, "b": row}, optional={"c": JSON_VALUES})
    deep = st.integers(60, 70) | st.integers(900, 1020)
    deep_row = st.tuples(row, deep).map(lambda rd: nested(rd[1], value=rd[0]))
    if not rarely(draw):
        instances = draw(st.lists(row, min_size=1, max_size=4))
        return {"instances": instances} if draw(st.booleans()) else {"inputs": instances}
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(JSON_VALUES)
    if choice == 1:
        return {"inputs": draw(st.dictionaries(NAMES, JSON_VALUES, max_size=2) | JSON_VALUES)}
    if choice == 2:
        return {"instances": draw(st.lists(row, max_size=2)), "inputs": draw(JSON_VALUES)}
    return {"instances": draw(st.lists(row | keyed | deep_row | JSON_VALUES, max_size=4))}


@given(target=model_and_datatype(), data=st.data(), headers=HEADERS)
def test_v1(
    module_http: httpx.Client,
    alarms: Alarms,
    target: tuple[str, str],
    data: st.DataObject,
    headers: dict[str, str],
) -> None:
    model, datatype = target
    body = _json(data.draw(v1_body(datatype)))
    path = f"/v1/models/{model}:predict"
    assert_http_handled(module_http, alarms, path, body, headers, finite=True)


# --- gRPC ------------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
CONTENTS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": INT64,
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}


@st.composite
def grpc_parameters(draw: st.DrawFn, parameters: Any) -> None:
    """A `timeout` (or another parameter) of any of InferParameter's kinds."""
    for name in draw(st.sets(st.sampled_from(["timeout", "priority", "other"]), max_size=2)):
        kind = draw(
            st.sampled_from(
                ["int64_param", "uint64_param", "bool_param", "string_param", "double_param"]
            )
        )
        value = {
            "int64_param": INT64,
            "uint64_param": st.integers(0, 2**64 - 1),
            "bool_param": st.booleans(),
            "string_param": st.text(max_size=6),
            "double_param": st.floats(),
        }[kind]
        setattr(parameters[name], kind, draw(value))


@st.composite
def grpc_request(draw: st.DrawFn, raw: bool) -> bytes:
    model, main_datatype = draw(model_and_datatype())
    msg = pb.ModelInferRequest(
        model_name=model,
        model_version=draw(st.sampled_from(["1", "2", "x"])) if rarely(draw) else "",
        id=draw(st.text(max_size=8)),
    )
    inputs = draw(st.integers(0, 2)) if rarely(draw) else 1
    for _ in range(inputs):
        datatype = draw(DATATYPE_NAMES) if rarely(draw) else main_datatype
        shape = draw(shapes(protobuf=True))
        name = draw(NAMES) if rarely(draw) else "x"
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        count = _count(shape)
        if raw:
            if count is None or rarely(draw):
                msg.raw_input_contents.append(draw(st.binary(max_size=40)))
            else:
                msg.raw_input_contents.append(draw(raw_values(datatype, count)))
            continue
        field = TYPED_CONTENTS.get(datatype, "int_contents")
        if rarely(draw):
            field = draw(st.sampled_from(sorted(CONTENTS)))
        size = count if count is not None and not rarely(draw) else None
        values = draw(st.lists(CONTENTS[field], min_size=size or 0, max_size=size or 6))
        getattr(tensor.contents, field).extend(values)
    if raw and rarely(draw):
        msg.raw_input_contents.append(b"")  # one more than there are inputs
    if rarely(draw):
        for name in draw(st.lists(NAMES, max_size=2)):
            msg.outputs.add(name=name)
    if rarely(draw):
        draw(grpc_parameters(msg.parameters))
    else:
        msg.parameters["timeout"].int64_param = draw(GOOD_TIMEOUTS)
    return msg.SerializeToString()


@given(message=grpc_request(raw=True))
def test_grpc_raw(module_channel: grpc.Channel, alarms: Alarms, message: bytes) -> None:
    assert_grpc_handled(module_channel, alarms, message)


@given(message=grpc_request(raw=False))
def test_grpc_typed(module_channel: grpc.Channel, alarms: Alarms, message: bytes) -> None:
    assert_grpc_handled(module_channel, alarms, message)


def _good_grpc_message() -> bytes:
    msg = pb.ModelInferRequest(model_name="echo_bytes", id="good")
    msg.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    msg.raw_input_contents.append(b"".join(struct.pack("<I", 2) + b"ab" for _ in range(3)))
    msg.parameters["timeout"].int64_param = 10**7
    return msg.SerializeToString()


@given(edits=BYTE_EDITS)
def test_grpcmutated(
    module_channel: grpc.Channel, alarms: Alarms, edits: list[tuple[int, bytes]]
) -> None:
    assert_grpc_handled(module_channel, alarms, mutated(_good_grpc_message(), edits))
