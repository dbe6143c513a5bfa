"""Fuzz cases for the gateway's HTTP decoders: V2 JSON, the V2 binary tensor extension and
V1 instances. Each case starts from a valid request for a random served model and mutates
it; a good request per decoder checks the answers stay right.
"""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from loadtest.fuzz import mutate, values
from loadtest.fuzz.seeds import GOOD_MODELS, INPUTS, Oracle, from_raw, inputs_for, mismatch, to_raw
from loadtest.fuzz.wire import Case, Reply

Check = Callable[[Reply], str | None]  # what is wrong with a good request's answer, or None
JSON = ("Content-Type", "application/json")
HEADER_LENGTH = "Inference-Header-Content-Length"

_JSON_MODELS = tuple(m for m in INPUTS if m != "echo_fp16")  # FP16 travels only as binary
_NAMES = ("nosuch", "", "%00", "%2F", "..", "light%2F..%2Fwords", "%C3%A9", "%ff", "a" * 5000)
_VERSIONS = ("0", "1", "2", "-1", "99999999999999999999", "abc", "%C2%B2", "1.0", "%00")
_HEADER_VALUES = ("0", "-1", "1", "abc", "1e3", " 7", "99999999999999999999", "", "0x10")


def http_extras(
    rng: random.Random, ops: list[str], path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[str, str, bytes]:
    """Sometimes a hostile path, method or header around a gateway request: (method, path,
    body); `headers` is changed in place."""
    method = "POST"
    roll = rng.random()
    if roll < 0.04:
        headers.append(("x-request-timeout-ms", rng.choice(_HEADER_VALUES)))
        ops.append("timeout-header")
    elif roll < 0.07:
        coding = rng.choice(("gzip", "deflate", "gzip", "br", "gzip, gzip", "identity"))
        if rng.random() < 0.7 and coding in ("gzip", "deflate"):
            body = gzip.compress(body, mtime=0) if coding == "gzip" else zlib.compress(body)
        headers.append(("Content-Encoding", coding))
        ops.append("content-encoding")
    elif roll < 0.10:
        parts = path.split("/")  # "", "v2", "models", model, ... or "", "v1", "models", ...
        if parts[1] == "v2" and rng.random() < 0.5:
            parts[4:4] = ["versions", rng.choice(_VERSIONS)]
        else:
            parts[3] = rng.choice(_NAMES) + (":predict" if parts[1] == "v1" else "")
        path = "/".join(parts)
        ops.append("path")
    elif roll < 0.12:
        method = rng.choice(("GET", "PUT", "DELETE", "PATCH", "HEAD"))
        ops.append("method")
    elif roll < 0.14:
        headers.append(("x-routing-key", rng.choice(("", "k" * 8000, "é", "user-1"))))
        headers.append(("Accept-Encoding", rng.choice(("gzip", "deflate;q=0.5", "gzip;q=x"))))
        ops.append("routing-and-accept")
    return method, path, body


def _mutated_json(doc: Any, rng: random.Random, ops: list[str]) -> bytes:
    """Structure-aware mutation (75%), then byte-level too (15%), or byte-level only (10%)."""
    roll = rng.random()
    if roll >= 0.9:
        return mutate.mutate_bytes(values.dumps(doc), rng, ops)
    doc = mutate.mutate_json(doc, rng, ops)
    body = values.dumps(doc, ascii_only=rng.random() < 0.8)
    return mutate.mutate_bytes(body, rng, ops) if roll >= 0.75 else body


def _v2_input(name: str, datatype: str, array: np.ndarray, rng: random.Random) -> dict[str, Any]:
    data = array.tolist()
    if rng.random() < 0.5:  # flat or nested: both are V2 JSON
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _v2_doc(model: str, rng: random.Random) -> dict[str, Any]:
    arrays = inputs_for(model, rng)
    doc: dict[str, Any] = {
        "inputs": [
            _v2_input(spec.name, spec.datatype, arrays[spec.name], rng) for spec in INPUTS[model]
        ]
    }
    _decorate(doc, model, rng)
    return doc


def _decorate(doc: dict[str, Any], model: str, rng: random.Random) -> None:
    """The optional parts of a V2 request: id, parameters, requested outputs."""
    if rng.random() < 0.3:
        doc["id"] = f"req-{rng.randrange(1000)}"
    if rng.random() < 0.2:
        doc["parameters"] = {"timeout": rng.choice((1_000_000, 5_000_000))}
    if rng.random() < 0.2:
        names = {"light": ["label", "probabilities"], "lookup": ["out"], "pair": ["sum"]}
        doc["outputs"] = [{"name": n} for n in names.get(model, ["y"])]


def _infer_path(model: str, rng: random.Random) -> str:
    version = "/versions/1" if rng.random() < 0.1 else ""
    return f"/v2/models/{model}{version}/infer"


def _http_case(
    rng: random.Random, ops: list[str], path: str, body: bytes, headers: list[tuple[str, str]]
) -> Case:
    method, path, body = http_extras(rng, ops, path, headers, body)
    return Case("http", path, body, method, tuple(headers), tuple(ops))


# --- V2 JSON ------------------------------------------------------------------------------


class HttpJson:
    """V2 infer requests with JSON tensors (and a few repository index requests)."""

    name = "http-json"
    server = "http"

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    def case(self, rng: random.Random) -> Case:
        if rng.random() < 0.05:  # the other V2 JSON body: a repository index request
            ops = ["index"]
            body = _mutated_json({"ready": rng.random() < 0.5}, rng, ops)
            return _http_case(rng, ops, "/v2/repository/index", body, [JSON])
        model = rng.choice(_JSON_MODELS)
        ops = [model]
        body = _mutated_json(_v2_doc(model, rng), rng, ops)
        return _http_case(rng, ops, _infer_path(model, rng), body, [JSON])

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        model = rng.choice(GOOD_MODELS)
        inputs = inputs_for(model, rng)
        doc = {
            "inputs": [_v2_input(s.name, s.datatype, inputs[s.name], rng) for s in INPUTS[model]]
        }
        expected = self._oracle.outputs(model, inputs)
        case = Case("http", f"/v2/models/{model}/infer", orjson.dumps(doc), headers=(JSON,))
        return case, lambda reply: _check_v2(reply, expected)


def _check_v2(reply: Reply, expected: dict[str, np.ndarray]) -> str | None:
    """A V2 answer (JSON or binary) against the oracle's outputs."""
    if reply.status != 200:
        return f"status {reply.status} {reply.transport or ''}: {reply.body[:200]!r}"
    length = reply.headers.get(HEADER_LENGTH.lower())
    head = reply.body if length is None else reply.body[: int(length)]
    offset = len(head)
    got = {}
    for out in orjson.loads(head)["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw = reply.body[offset : offset + size]
            offset += size
            got[out["name"]] = from_raw(raw, out["datatype"], out["shape"])
        else:
            got[out["name"]] = np.array(out["data"]).reshape(out["shape"])
    return mismatch(expected, got)


# --- V2 binary tensor extension -------------------------------------------------------------


class HttpBinary:
    """V2 infer requests whose tensors follow the JSON header as binary data."""

    name = "http-binary"
    server = "http"

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    def case(self, rng: random.Random) -> Case:
        model = rng.choice(tuple(INPUTS))
        ops: list[str] = [model]
        arrays = inputs_for(model, rng)
        doc: dict[str, Any] = {"inputs": []}
        chunks: list[bytearray] = []
        for spec in INPUTS[model]:
            array = arrays[spec.name]
            entry: dict[str, Any] = {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": list(array.shape),
            }
            if spec.datatype != "FP16" and rng.random() < 0.15:  # this one as JSON data
                entry["data"] = array.reshape(-1).tolist()
            else:
                raw = to_raw(array, spec.datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(bytearray(raw))
            doc["inputs"].append(entry)
        _decorate(doc, model, rng)
        if rng.random() < 0.3:
            doc.setdefault("parameters", {})["binary_data_output"] = True
        lie = self._mutate(doc, chunks, rng, ops)
        header = values.dumps(doc)
        body = header + b"".join(chunks)
        length = str(len(header)) if lie is None else lie
        if rng.random() < 0.1:
            body = mutate.mutate_bytes(body, rng, ops)
        headers = [("Content-Type", "application/octet-stream"), (HEADER_LENGTH, length)]
        if rng.random() < 0.03:
            headers.pop()  # binary data with no header length: all of it is "JSON"
            ops.append("no-header-length")
        return _http_case(rng, ops, _infer_path(model, rng), body, headers)

    @staticmethod
    def _mutate(
        doc: dict[str, Any], chunks: list[bytearray], rng: random.Random, ops: list[str]
    ) -> str | None:
        """Mutate the header or the data; returns a lying header length, if one was chosen."""
        roll = rng.random()
        if roll < 0.35:
            mutate.mutate_json(doc, rng, ops)
        elif roll < 0.5:
            sized = [i for i in doc["inputs"] if "parameters" in i]
            if sized:
                params = rng.choice(sized)["parameters"]
                true = params["binary_data_size"]
                params["binary_data_size"] = rng.choice(
                    (true + 1, true - 1, 0, true * 2, *values.INTS, "8", 8.0, None, True)
                )
                ops.append("binary-size-lie")
        elif roll < 0.65 and chunks:
            chunk = rng.choice(chunks)
            chunk[:] = mutate.mutate_bytes(bytes(chunk), rng, ops)
        elif roll < 0.75 and chunks and any(i["datatype"] == "BYTES" for i in doc["inputs"]):
            chunk = chunks[0]
            if len(chunk) >= 4:
                at = rng.randrange(0, len(chunk) - 3)
                value = rng.choice((0, 1, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(chunk)))
                chunk[at : at + 4] = value.to_bytes(4, "little")
                ops.append("bytes-length-lie")
        elif roll < 0.9:
            ops.append("header-length-lie")
            true = len(values.dumps(doc))
            return str(
                rng.choice(
                    (true - 1, true + 1, 0, -1, 1, true * 2, 2**31, 2**63, 10**30, "x", "", "1.5")
                )
            )
        else:
            mutate.mutate_json(doc, rng, ops)
            if chunks:
                chunks.append(bytearray(rng.randbytes(rng.choice((1, 4, 100)))))
                ops.append("extra-binary")
        return None

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        model = rng.choice(GOOD_MODELS)
        inputs = inputs_for(model, rng)
        doc: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
        chunks = []
        for spec in INPUTS[model]:
            raw = to_raw(inputs[spec.name], spec.datatype)
            doc["inputs"].append(
                {
                    "name": spec.name,
                    "datatype": spec.datatype,
                    "shape": list(inputs[spec.name].shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            chunks.append(raw)
        header = orjson.dumps(doc)
        headers = (("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(len(header))))
        case = Case("http", f"/v2/models/{model}/infer", header + b"".join(chunks), headers=headers)
        expected = self._oracle.outputs(model, inputs)
        return case, lambda reply: _check_v2(reply, expected)


# --- V1 instances -------------------------------------------------------------------------


class HttpV1:
    """V1 (TensorFlow Serving style) predict requests: instances or columnar inputs."""

    name = "http-v1"
    server = "http"

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    def case(self, rng: random.Random) -> Case:
        model = rng.choice(_JSON_MODELS)
        ops: list[str] = [model]
        doc = _v1_doc(model, inputs_for(model, rng), rng)
        body = _mutated_json(doc, rng, ops)
        return _http_case(rng, ops, f"/v1/models/{model}:predict", body, [JSON])

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        model = rng.choice(GOOD_MODELS)
        inputs = inputs_for(model, rng)
        (array,) = inputs.values()
        body = orjson.dumps({"instances": array.tolist()})
        case = Case("http", f"/v1/models/{model}:predict", body, headers=(JSON,))
        expected = self._oracle.outputs(model, inputs)
        return case, lambda reply: _check_v1(reply, expected)


def _v1_doc(model: str, arrays: dict[str, np.ndarray], rng: random.Random) -> dict[str, Any]:
    specs = INPUTS[model]
    if rng.random() < 0.3:  # the columnar form
        if len(specs) == 1 and rng.random() < 0.5:
            return {"inputs": arrays[specs[0].name].tolist()}
        return {"inputs": {name: array.tolist() for name, array in arrays.items()}}
    if len(specs) == 1:
        return {"instances": arrays[specs[0].name].tolist()}
    rows = len(next(iter(arrays.values())))
    return {"instances": [{n: a[i].tolist() for n, a in arrays.items()} for i in range(rows)]}


def _check_v1(reply: Reply, expected: dict[str, np.ndarray]) -> str | None:
    if reply.status != 200:
        return f"status {reply.status} {reply.transport or ''}: {reply.body[:200]!r}"
    predictions = orjson.loads(reply.body)["predictions"]
    if len(expected) == 1:
        (name,) = expected
        return mismatch(expected, {name: np.array(predictions)})
    got = {name: np.array([row[name] for row in predictions]) for name in expected}
    return mismatch(expected, got)
