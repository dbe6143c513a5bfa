"""Requests that once cost the gateway gigabytes, a frozen event loop or a 500 with a
traceback (issue 14): each is refused with 400 / INVALID_ARGUMENT and one short log line,
memory stays flat, and the next good request is served."""

from __future__ import annotations

import logging
import struct
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest

from conftest import assert_serves_grpc, assert_serves_http, peak_growth
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway

# 2**28 BYTES elements declared, 4 bytes of data: a reference array for them would be 2 GiB.
BOMB_ELEMENTS = 268_435_456
BOMB_HEADER = orjson.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "datatype": "BYTES",
                "shape": [BOMB_ELEMENTS],
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
)
GROWTH_ALLOWED = 100 << 20


@pytest.fixture(scope="module")
def stub(module_channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(module_channel)


@pytest.fixture
def gateway_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The gateway's log records, refusals (DEBUG) included."""
    caplog.set_level(logging.DEBUG, logger="modelgate")
    return caplog


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("modelgate")]


def assert_one_short_line(caplog: pytest.LogCaptureFixture) -> None:
    """The refusal was logged once, at DEBUG, in one bounded line, with no traceback."""
    records = _records(caplog)
    assert len(records) == 1, [r.getMessage()[:300] for r in records]
    record = records[0]
    assert record.levelno == logging.DEBUG
    assert record.exc_info is None
    text = record.getMessage()
    assert "\n" not in text
    assert len(text) < 600, text


def test_a_bytes_bomb_over_http_binary_is_400_without_allocating(
    module_http: httpx.Client, gateway_log: pytest.LogCaptureFixture, rng: np.random.Generator
) -> None:
    body = BOMB_HEADER + b"\0\0\0\0"
    assert len(body) < 120
    with peak_growth() as grown:  # the gateway serves from a thread of this process
        r = module_http.post(
            "/v2/models/echo_bytes/infer",
            content=body,
            headers={"inference-header-content-length": str(len(BOMB_HEADER))},
        )
    assert grown() < GROWTH_ALLOWED
    assert r.status_code == 400, r.text
    assert "max_request_elements" in r.json()["error"]
    assert_one_short_line(gateway_log)
    assert_serves_http(module_http, rng)


def test_a_bytes_bomb_over_grpc_raw_is_invalid_without_allocating(
    stub: pb_grpc.GRPCInferenceServiceStub,
    gateway_log: pytest.LogCaptureFixture,
    rng: np.random.Generator,
) -> None:
    request = pb.ModelInferRequest(model_name="echo_bytes")
    request.inputs.add(name="x", datatype="BYTES", shape=[BOMB_ELEMENTS])
    request.raw_input_contents.append(b"\0\0\0\0")
    with peak_growth() as grown, pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=60)
    assert grown() < GROWTH_ALLOWED
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_request_elements" in info.value.details()
    assert_one_short_line(gateway_log)
    assert_serves_grpc(stub, rng)


@pytest.mark.parametrize(
    ("datatype", "shape", "payload", "words"),
    [
        # Within the element limit by count (0), beyond NumPy's index range by its dimensions.
        ("FP32", [0, 4611686018427387904], b"", "too large"),
        ("FP32", [1] * 65, b"\0\0\0\0", "65 dimensions"),
        ("BYTES", [4], b"\1\0\0\0a", "need at least 16 bytes"),
        ("BYTES", [2**40], b"", "max_request_elements"),
        ("BYTES", [300_000], 300_000 * b"\0\0\0\0", "max_request_strings"),
    ],
)
def test_impossible_shapes_over_grpc_raw_are_invalid(
    stub: pb_grpc.GRPCInferenceServiceStub,
    gateway_log: pytest.LogCaptureFixture,
    rng: np.random.Generator,
    datatype: str,
    shape: list[int],
    payload: bytes,
    words: str,
) -> None:
    model = "echo_bytes" if datatype == "BYTES" else "echo_fp32"
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(payload)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()
    assert_one_short_line(gateway_log)
    assert_serves_grpc(stub, rng)


def _nested(value: Any, depth: int) -> bytes:
    """`value` inside `depth` lists, as JSON text (too deep for `json.dumps` to write)."""
    return b"[" * depth + orjson.dumps(value) + b"]" * depth


def _v2(datatype: str, shape: Any, data: bytes) -> bytes:
    head = orjson.dumps({"name": "x", "datatype": datatype, "shape": shape})
    return b'{"inputs": [' + head[:-1] + b', "data": ' + data + b"}]}"


@pytest.mark.parametrize(
    ("path", "body", "headers", "words"),
    [
        (
            "/v2/models/echo_fp32/infer",
            _v2("FP32", [0, 4611686018427387904], b"[]"),
            {},
            "too large",
        ),
        ("/v2/models/echo_fp32/infer", _v2("FP32", [1] * 65, b"[1.0]"), {}, "65 dimensions"),
        (
            "/v2/models/echo_bytes/infer",
            _v2("BYTES", [1, 1], _nested("a", 1000)),
            {},
            "nests deeper than 64",
        ),
        (
            "/v2/models/echo_fp32/infer",
            _v2("FP32", [1, 3], b"[1.0, 2.0, 3.0]"),
            {"x-request-timeout-ms": "9" * 400},
            "x-request-timeout-ms",
        ),
        (
            "/v2/models/echo_fp32/infer",
            _v2("FP32", [1, 3], b"[1e308, 2.0, 3.0]"),
            {},
            "out of range for FP32",
        ),
        (
            "/v2/models/echo_fp32/infer",
            _v2("FP32", [1, 3], b"[-3.5e38, 2.0, 3.0]"),
            {},
            "out of range for FP32",
        ),
        ("/v1/models/echo_fp32:predict", b'{"instances": [[1e308, 0, 0]]}', {}, "out of range"),
        (
            "/v1/models/echo_bytes:predict",
            b'{"instances": ' + _nested("a", 1000) + b"}",
            {},
            "expected strings",
        ),
        (
            "/v1/models/echo_bytes:predict",
            orjson.dumps({"instances": [["a", "b", "c"]] * 90_000}),
            {},
            "max_request_strings",
        ),
    ],
    ids=[
        "shape-overflow",
        "65-dims",
        "deep-bytes",
        "timeout-digits",
        "fp32-1e308",
        "fp32-minus-3.5e38",
        "v1-fp32-1e308",
        "v1-deep-bytes",
        "v1-many-strings",
    ],
)
def test_malformed_http_requests_are_400_with_one_log_line(
    module_http: httpx.Client,
    gateway_log: pytest.LogCaptureFixture,
    rng: np.random.Generator,
    path: str,
    body: bytes,
    headers: dict[str, str],
    words: str,
) -> None:
    r = module_http.post(path, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert_one_short_line(gateway_log)
    assert_serves_http(module_http, rng)


def _rows_with_a_long_string(letter: str) -> list[list[Any]]:
    """333 rows of three numbers, then one whose last value is an 80,000-character string:
    inferred by NumPy, a string array of 1,002 elements of 80,000 characters, 320 MB."""
    return [[1.0, 2.0, 3.0]] * 333 + [[1.0, 2.0, letter * 80_000]]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v2/models/echo_fp32/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [334, 3],
                         "data": _rows_with_a_long_string("x")}]},
        ),
        (
            "/v2/models/echo_int16/infer",
            {"inputs": [{"name": "x", "datatype": "INT16", "shape": [334, 3],
                         "data": _rows_with_a_long_string("1")}]},
        ),
        ("/v1/models/echo_fp32:predict", {"instances": _rows_with_a_long_string("1")}),
        ("/v1/models/echo_int16:predict", {"inputs": _rows_with_a_long_string("x")}),
    ],
    ids=["v2-fp32", "v2-int16-digits", "v1-fp32-digits", "v1-int16"],
)  # fmt: skip
def test_a_long_string_among_numbers_is_400_without_a_string_array(
    module_http: httpx.Client,
    gateway_log: pytest.LogCaptureFixture,
    rng: np.random.Generator,
    path: str,
    body: dict[str, Any],
) -> None:
    # docs/hardening.md cause 9 (fuzz-http-v1 case 5178, seed 1), a string of digits too:
    # it is refused, not parsed as a number.
    content = orjson.dumps(body)
    assert len(content) < 100_000
    with peak_growth() as grown:  # the gateway serves from a thread of this process
        r = module_http.post(path, content=content)
    assert grown() < GROWTH_ALLOWED
    assert r.status_code == 400, r.text
    assert "does not hold" in r.json()["error"]
    assert_one_short_line(gateway_log)
    assert_serves_http(module_http, rng)


def test_a_json_body_beyond_its_limit_is_413_naming_the_setting(
    module_http: httpx.Client, module_gateway: Gateway, rng: np.random.Generator
) -> None:
    limit = module_gateway.settings.max_json_bytes
    assert limit < module_gateway.settings.max_body_bytes
    rows = limit // 40  # about 60 characters of JSON a row
    x = rng.normal(size=(rows, 3)).tolist()
    tensor = {"name": "x", "datatype": "FP32", "shape": [rows, 3], "data": x}
    body = orjson.dumps({"inputs": [tensor]})
    assert limit < len(body) < module_gateway.settings.max_body_bytes
    r = module_http.post("/v2/models/echo_fp32/infer", content=body)
    assert r.status_code == 413, r.text
    assert "max_json_bytes" in r.json()["error"]
    # The same tensor as binary data is within the limits: the JSON part is small.
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [rows, 3],
                    "parameters": {"binary_data_size": rows * 12},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    data = rng.normal(size=(rows, 3)).astype(np.float32)
    r = module_http.post(
        "/v2/models/echo_fp32/infer",
        content=header + data.tobytes(),
        headers={"inference-header-content-length": str(len(header))},
    )
    assert r.status_code == 200, r.text[:200]
    json_length = int(r.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[json_length:], "<f4"), data.ravel())
    # A binary request whose JSON part alone is beyond the JSON limit is refused unread.
    r = module_http.post(
        "/v2/models/echo_fp32/infer",
        content=b"{}",
        headers={"inference-header-content-length": str(limit + 1)},
    )
    assert r.status_code == 413
    assert "max_json_bytes" in r.json()["error"]
    assert_serves_http(module_http, rng)


def test_a_huge_timeout_is_served_capped_and_a_bad_one_refused(
    module_http: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator
) -> None:
    x = [[1.0, 2.0, 3.0]]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": x}]}
    for header in (str(2**64 - 1), str(2**63)):
        r = module_http.post(
            "/v2/models/echo_fp32/infer", json=body, headers={"x-request-timeout-ms": header}
        )
        assert r.status_code == 200, r.text
    for header in (str(2**64), "0", "-5", "soon", "1" * 5000):
        r = module_http.post(
            "/v2/models/echo_fp32/infer", json=body, headers={"x-request-timeout-ms": header}
        )
        assert r.status_code == 400, (header[:20], r.text)
    with_timeout = {**body, "parameters": {"timeout": 2**64 - 1}}  # microseconds, capped
    r = module_http.post("/v2/models/echo_fp32/infer", content=orjson.dumps(with_timeout))
    assert r.status_code == 200, r.text
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    request.parameters["timeout"].uint64_param = 2**64 - 1
    stub.ModelInfer(request, timeout=30)
    assert_serves_grpc(stub, rng)


def test_long_names_are_cut_short_in_errors_and_logs(
    module_http: httpx.Client,
    stub: pb_grpc.GRPCInferenceServiceStub,
    gateway_log: pytest.LogCaptureFixture,
    rng: np.random.Generator,
) -> None:
    name = "\u00e9" * 100_000  # 200 KB of UTF-8 in a name the error message quotes
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [-1], "data": []}]}
    r = module_http.post("/v2/models/echo_fp32/infer", json=body)
    assert r.status_code == 400
    assert len(r.json()["error"]) <= 500
    assert_one_short_line(gateway_log)
    gateway_log.clear()
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name=name, datatype="FP32", shape=[-1])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) <= 500
    assert_one_short_line(gateway_log)
    assert_serves_grpc(stub, rng)
    assert_serves_http(module_http, rng)


def test_bytes_raw_that_does_not_add_up_is_invalid(
    stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator
) -> None:
    def raw(*elements: bytes) -> bytes:
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)

    cases = [
        ([2], raw(b"ab", b"cd")[:-1], "element 1 runs past the data"),
        ([3], raw(b"ab", b"cd", b"ef") + b"z", "1 bytes left after 3 elements"),
        ([3], raw(b"abcdef", b""), "data ends before element 2"),
        ([2], raw(b"ab") + b"\xff\xff\xff\xff" + b"\0" * 8, "element 1 runs past the data"),
    ]
    for shape, payload, words in cases:
        request = pb.ModelInferRequest(model_name="echo_bytes")
        request.inputs.add(name="x", datatype="BYTES", shape=shape)
        request.raw_input_contents.append(payload)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in info.value.details(), info.value.details()
    assert_serves_grpc(stub, rng)
