"""Compressed HTTP bodies: gzip and deflate requests (tritonclient's
request_compression_algorithm), compressed answers on request, and bounded inflating."""

from __future__ import annotations

import dataclasses
import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from sync_clients import in_thread

from conftest import running
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

Reference = Callable[[bytes, dict[str, np.ndarray]], list[np.ndarray]]
LIMIT = 64 * 1024


def _body(x: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def _deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def _bomb(inflated: int) -> bytes:
    """A gzip body about a thousandth the size of the `inflated` bytes of spaces it holds."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join([*parts, compressor.flush()])


@pytest.fixture
async def small(settings: ServerSettings, store: RegistryStore) -> AsyncIterator[Gateway]:
    """A gateway whose bodies, JSON or not, may be at most `LIMIT` bytes."""
    limited = dataclasses.replace(settings, max_body_bytes=LIMIT, max_json_bytes=LIMIT)
    async with running(limited, store) as gw:
        yield gw


@pytest.fixture
async def client(small: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    assert small.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{small.addresses.http}") as http:
        yield http


async def _ok(http: httpx.AsyncClient, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 8)).astype(np.float32)
    r = await http.post("/v2/models/classifier/infer", content=_body(x))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("request_coding", ["gzip", "deflate"])
@pytest.mark.parametrize("response_coding", ["gzip", "deflate", None])
@pytest.mark.parametrize("binary", [True, False])
async def test_tritonclient_compressed_requests_and_answers(
    gateway: Gateway,
    model_files: dict[str, bytes],
    reference: Reference,
    rng: np.random.Generator,
    request_coding: str,
    response_coding: str | None,
    binary: bool,
) -> None:
    """The binary extension's Inference-Header-Content-Length counts decompressed bytes."""
    x = rng.normal(size=(64, 8)).astype(np.float32)  # answers large enough to compress

    def call() -> tuple[np.ndarray, np.ndarray]:
        assert gateway.addresses is not None
        client = triton_http.InferenceServerClient(gateway.addresses.http)
        try:
            tensor = triton_http.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = [
                triton_http.InferRequestedOutput(name, binary_data=binary)
                for name in ("label", "probabilities")
            ]
            result = client.infer(
                "classifier",
                [tensor],
                outputs=outputs,
                request_compression_algorithm=request_coding,
                response_compression_algorithm=response_coding,
            )
            return result.as_numpy("label"), result.as_numpy("probabilities")
        finally:
            client.close()

    labels, probabilities = await in_thread(call)
    want_labels, want_probabilities = reference(model_files["classifier"], {"input": x})
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-6)


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", lambda data: gzip.compress(data[:9]) + gzip.compress(data[9:])),  # 2 members
        ("deflate", zlib.compress),
        ("DEFLATE", lambda data: _deflate(data, -15)),  # raw deflate, as some clients send
        ("identity", lambda data: data),
    ],
)
async def test_codings_are_decoded(
    client: httpx.AsyncClient, rng: np.random.Generator, coding: str, compress: Callable
) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    r = await client.post(
        "/v2/models/classifier/infer",
        content=compress(_body(x)),
        headers={"content-encoding": coding},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [3]


async def test_answers_are_compressed_when_asked_and_large(
    client: httpx.AsyncClient, rng: np.random.Generator
) -> None:
    big = _body(rng.normal(size=(64, 8)).astype(np.float32))
    small = _body(rng.normal(size=(1, 8)).astype(np.float32))
    for accept, coding in (("gzip", "gzip"), ("deflate;q=0.5, gzip;q=0.2", "deflate")):
        r = await client.post(
            "/v2/models/classifier/infer", content=big, headers={"accept-encoding": accept}
        )
        assert r.status_code == 200
        assert r.headers["content-encoding"] == coding
        assert r.json()["outputs"][1]["shape"] == [64, 3]  # httpx inflated it
    for accept, body in (("gzip", small), ("gzip;q=0, br", big), ("identity", big)):
        r = await client.post(
            "/v2/models/classifier/infer", content=body, headers={"accept-encoding": accept}
        )
        assert r.status_code == 200
        assert "content-encoding" not in r.headers
    # Errors go uncompressed: tritonclient reads them without looking at Content-Encoding.
    r = await client.post("/v2/models/nope/infer", content=big, headers={"accept-encoding": "gzip"})
    assert r.status_code == 404
    assert "content-encoding" not in r.headers


async def test_a_bomb_is_413_without_inflating_it_all(
    client: httpx.AsyncClient, rng: np.random.Generator
) -> None:
    bomb = _bomb(48 << 20)  # 48 MiB of spaces in about 48 KiB: within LIMIT compressed
    assert len(bomb) < LIMIT
    body = gzip.compress(b" " * (LIMIT + 1))  # small, inflating one byte past the limit
    r = await client.post(
        "/v2/models/classifier/infer", content=body, headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 413, r.text
    assert "decompressed" in r.json()["error"]

    tracemalloc.start()
    try:
        r = await client.post(
            "/v2/models/classifier/infer", content=bomb, headers={"content-encoding": "gzip"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert peak < 16 * LIMIT  # the inflater stopped one byte past the limit
    await _ok(client, rng)


@pytest.mark.parametrize(
    ("coding", "body", "status", "words"),
    [
        ("gzip", b"this is not gzip", 400, "not valid gzip"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "truncated"),
        ("deflate", zlib.compress(b"{}") + b"tail", 400, "after the stream"),
        ("br", b"{}", 415, "'br'"),
        ("gzip, deflate", b"{}", 415, "'gzip, deflate'"),
    ],
)
async def test_bad_bodies_get_a_clear_status_and_the_server_keeps_serving(
    client: httpx.AsyncClient,
    rng: np.random.Generator,
    coding: str,
    body: bytes,
    status: int,
    words: str,
) -> None:
    r = await client.post(
        "/v2/models/classifier/infer", content=body, headers={"content-encoding": coding}
    )
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    await _ok(client, rng)
