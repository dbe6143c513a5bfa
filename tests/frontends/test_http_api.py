"""The HTTP front end over a real gateway: V2 JSON, the binary extension, V1 and errors."""

from __future__ import annotations

import asyncio
import struct

import httpx
import numpy as np
import orjson
import pytest

from conftest import DATATYPES

pytestmark = pytest.mark.usefixtures("gateway")


def _infer_body(
    x: np.ndarray, name: str = "input", datatype: str = "FP32", **extra: object
) -> dict:
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.tolist()}
        ],
        **extra,
    }


async def _ok(http: httpx.AsyncClient, rng: np.random.Generator) -> None:
    """The server still answers a good request correctly."""
    x = rng.normal(size=(2, 8)).astype(np.float32)
    r = await http.post("/v2/models/classifier/infer", json=_infer_body(x))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2]


async def test_health_and_server_metadata(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/health/live")).status_code == 200
    assert (await http.get("/v2/health/ready")).status_code == 200
    meta = (await http.get("/v2")).json()
    assert meta["name"] == "modelgate"
    assert "binary_tensor_data" in meta["extensions"]


async def test_model_metadata_comes_from_the_onnx_graph(http: httpx.AsyncClient) -> None:
    for path in ("/v2/models/classifier", "/v2/models/classifier/versions/1"):
        meta = (await http.get(path)).json()
        assert meta["name"] == "classifier"
        assert meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
        assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
        assert meta["outputs"][0]["datatype"] == "INT64"
    assert (await http.get("/v2/models/classifier/ready")).status_code == 200
    assert (await http.get("/v2/models/classifier/versions/1/ready")).status_code == 200


async def test_model_config_for_triton_tools(http: httpx.AsyncClient) -> None:
    config = (await http.get("/v2/models/classifier/config")).json()
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [8]}]
    fixed = (await http.get("/v2/models/fixed/config")).json()
    assert fixed["max_batch_size"] == 0
    assert fixed["input"][0]["dims"] == [1, 4]


async def test_infer_matches_in_process_onnx_runtime(
    http: httpx.AsyncClient, model_files: dict, reference, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    r = await http.post("/v2/models/classifier/infer", json=_infer_body(x, id="req-7"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["id"] == "req-7"
    assert doc["model_name"] == "classifier"
    assert doc["model_version"] == "1"
    labels, probabilities = reference(model_files["classifier"], {"input": x})
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["label"]["datatype"] == "INT64"
    assert out["label"]["data"] == labels.tolist()
    assert out["probabilities"]["shape"] == [5, 3]
    np.testing.assert_allclose(
        np.array(out["probabilities"]["data"]).reshape(5, 3), probabilities, rtol=1e-6
    )


async def test_flat_data_and_requested_outputs(
    http: httpx.AsyncClient, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    body = {
        "inputs": [
            {"name": "input", "shape": [3, 8], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    doc = (await http.post("/v2/models/classifier/versions/1/infer", json=body)).json()
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    assert "id" not in doc


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "FP16"])
async def test_every_datatype_round_trips_as_json(
    http: httpx.AsyncClient, datatype: str, rng: np.random.Generator
) -> None:
    x = _random(datatype, rng)
    data = [v.decode() for v in x.ravel()] if datatype == "BYTES" else x.tolist()
    body = {"inputs": [{"name": "x", "shape": [4, 3], "datatype": datatype, "data": data}]}
    r = await http.post(f"/v2/models/echo_{datatype.lower()}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == datatype
    assert out["shape"] == [4, 3]
    if datatype == "BYTES":
        assert out["data"] == data
    else:  # FP32 travels as the shortest text that reads back as the same float32
        np.testing.assert_array_equal(np.array(out["data"], dtype=x.dtype), x.ravel())


@pytest.mark.parametrize("datatype", DATATYPES)
async def test_every_datatype_round_trips_as_binary(
    http: httpx.AsyncClient, datatype: str, rng: np.random.Generator
) -> None:
    x = _random(datatype, rng)
    raw = _raw(x, datatype)
    header = orjson.dumps({
        "inputs": [{"name": "x", "shape": [4, 3], "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    r = await http.post(
        f"/v2/models/echo_{datatype.lower()}/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:json_length])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == len(raw)
    assert r.content[json_length:] == raw


async def test_binary_data_output_parameter_applies_to_all_outputs(
    http: httpx.AsyncClient, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(2, 8)).astype(np.float32)
    body = _infer_body(x, parameters={"binary_data_output": True})
    r = await http.post("/v2/models/classifier/infer", json=body)
    json_length = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:json_length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [2 * 8, 2 * 3 * 4]
    assert len(r.content) == json_length + sum(sizes)


async def test_v1_predict(http: httpx.AsyncClient, model_files: dict, reference, rng) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    r = await http.post("/v1/models/classifier:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    labels, _ = reference(model_files["classifier"], {"input": x})
    assert [p["label"] for p in predictions] == labels.tolist()
    pair = {"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [0, 0], "b": [1, 1]}]}
    r = await http.post("/v1/models/pair:predict", json=pair)
    assert r.json() == {"predictions": [[4.0, 6.0], [1.0, 1.0]]}


BAD_REQUESTS = [
    # (path, body or raw bytes, status, words the error must contain)
    ("/v2/models/nope/infer", None, 404, "nope"),
    ("/v2/models/classifier/versions/9/infer", None, 404, "version"),
    ("/v2/models/classifier/infer", b"{not json", 400, "malformed JSON"),
    ("/v2/models/classifier/infer", {"inputs": []}, 400, "inputs"),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32"}]},
        400,
        "data",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "wrong", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}]},
        400,
        "unknown input",
    ),
    (
        "/v2/models/pair/infer",
        {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        400,
        "missing input",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP64", "data": [0] * 8}]},
        400,
        "datatype",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0] * 7}]},
        400,
        "needs 8 values",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 7], "datatype": "FP32", "data": [0] * 7}]},
        400,
        "shape",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}]},
        400,
        "FP32",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [0, 8], "datatype": "FP32", "data": []}]},
        400,
        "empty batch",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, -8], "datatype": "FP32", "data": [0] * 8}]},
        400,
        "shape",
    ),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP99", "data": [0] * 8}]},
        400,
        "FP99",
    ),
    (
        "/v2/models/classifier/infer",
        {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}],
            "outputs": [{"name": "nope"}],
        },
        400,
        "unknown output",
    ),
    (
        "/v2/models/echo_int32/infer",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1.5, 2, 3]}]},
        400,
        "INT32",
    ),
    (
        "/v2/models/echo_uint8/infer",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [1, 256, 3]}]},
        400,
        "range",
    ),
    (
        "/v2/models/lookup/infer",
        {"inputs": [{"name": "idx", "shape": [1], "datatype": "INT64", "data": [99]}]},
        400,
        "model run failed",
    ),
    ("/v1/models/classifier:predict", {"instances": [[1, 2]]}, 400, "shape"),
    ("/v1/models/classifier:predict", {"rows": []}, 400, "instances"),
    ("/v2/models/classifier/explain", {}, 404, "endpoint"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_REQUESTS)
async def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(
    http: httpx.AsyncClient, rng, path: str, body: object, status: int, words: str
) -> None:
    content = (
        body
        if isinstance(body, bytes)
        else orjson.dumps(
            body
            or {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}]}
        )
    )
    r = await http.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    await _ok(http, rng)


async def test_binary_sizes_that_disagree_are_rejected(http: httpx.AsyncClient, rng) -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 32}}]})  # fmt: skip
    for payload, length in ((header + b"\0" * 31, len(header)), (header + b"\0" * 32, 10**6)):
        r = await http.post(
            "/v2/models/classifier/infer",
            content=payload,
            headers={"Inference-Header-Content-Length": str(length)},
        )
        assert r.status_code == 400, r.text
    await _ok(http, rng)


async def test_a_body_over_the_limit_is_413(gateway, rng) -> None:
    limit = gateway.settings.max_body_bytes
    async with httpx.AsyncClient(base_url=f"http://{gateway.addresses.http}") as http:
        r = await http.post("/v2/models/classifier/infer", content=b" " * (limit + 1))
        assert r.status_code == 413
        assert "limit" in r.json()["error"]
        await _ok(http, rng)


async def test_a_failing_request_does_not_harm_the_others_in_its_batch(
    http: httpx.AsyncClient,
) -> None:
    def body(i: int) -> dict:
        return {"inputs": [{"name": "idx", "shape": [1], "datatype": "INT64", "data": [i]}]}

    replies = await asyncio.gather(
        *(
            http.post("/v2/models/lookup/infer", json=body(i % 10 if i != 13 else 99))
            for i in range(40)
        )
    )
    for i, r in enumerate(replies):
        if i == 13:
            assert r.status_code == 400
        else:
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [float((i % 10) * 10)]


def _random(datatype: str, rng: np.random.Generator) -> np.ndarray:
    shape = (4, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if datatype == "BYTES":
        return np.array(
            [f"s{v}-é".encode() for v in rng.integers(0, 1000, 12)], dtype=object
        ).reshape(shape)
    dtype = np.dtype(
        {"FP16": "float16", "FP32": "float32", "FP64": "float64"}.get(datatype, datatype.lower())
    )
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _raw(x: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in x.ravel())
    return x.tobytes()
