"""The V2 HTTP/REST wire format: JSON bodies and the binary tensor data extension.

Binary extension: the `Inference-Header-Content-Length` header gives the size of the JSON
part; the tensors whose parameters carry `binary_data_size` follow it back to back, in
input order. Outputs go back binary when the client asks (`binary_data` per output, or
`binary_data_output` for all); then the answer has the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelgate.gateway.codecs.tensors import array_from_json, array_from_raw, array_to_raw
from modelgate.gateway.core.errors import invalid
from modelgate.gateway.core.limits import ElementBudget
from modelgate.gateway.core.types import (
    Duration,
    InferRequest,
    InferResponse,
    ModelConfig,
    ModelMetadata,
    ModelStatistics,
    RepositoryEntry,
    Tensor,
)
from modelgate.gateway.core.validation import timeout_seconds

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_FP16 = np.dtype(np.float16)  # a dtype: comparing with the type converts it on every call


@dataclass(slots=True)
class OutputEncoding:
    """How the client asked for outputs: binary for all, or for the names listed."""

    binary_all: bool = False
    binary: frozenset[str] = frozenset()

    def is_binary(self, name: str) -> bool:
        return self.binary_all or name in self.binary


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` parsed as a JSON object; 400 naming `what` when it is not one."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid(f"{what} must be a JSON object")
    return doc


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid(f"{where}: parameters must be an object")
    return params


def decode_infer_request(
    body: bytes, header_length: int | None, model: str, version: str | None, budget: ElementBudget
) -> tuple[InferRequest, OutputEncoding]:
    """Decode a V2 infer body (JSON, or JSON + binary tensors) into an `InferRequest`, its
    declared shapes charged to the request's `budget` before anything is allocated."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise invalid(
                f"Inference-Header-Content-Length {header_length} exceeds the body "
                f"({len(body)} bytes)"
            )
        json_part, binary = body[:header_length], body[header_length:]
    doc = json_object(json_part, "request body")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request needs a non-empty 'inputs' list")
    params = _parameters(doc, "request")

    inputs = []
    offset = 0
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset, budget)
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data belong to no input")

    encoding = OutputEncoding(binary_all=params.get("binary_data_output") is True)
    outputs = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise invalid("'outputs' must be a list")
        outputs, binary_names = [], set()
        for out in raw_outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise invalid("each requested output needs a 'name'")
            outputs.append(out["name"])
            if _parameters(out, f"output {out['name']!r}").get("binary_data") is True:
                binary_names.add(out["name"])
        encoding.binary = frozenset(binary_names)

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=request_id,
        outputs=outputs,
        timeout=timeout_seconds(params.get("timeout")),
        protocol="http",
    )
    return request, encoding


def _decode_input(
    item: Any, binary: bytes, offset: int, budget: ElementBudget
) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise invalid("each input must be an object")
    name = item.get("name")
    datatype = item.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise invalid("each input needs a 'name' and a 'datatype'")
    shape, count = budget.take(name, datatype, item.get("shape"))
    size = _parameters(item, f"input {name!r}").get("binary_data_size")
    if size is not None:
        # The message never formats a size that is not a plain number: it may be nested
        # deeper than repr can go.
        if type(size) is not int or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise invalid(
                f"input {name!r}: binary_data_size {size} exceeds the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        data = array_from_raw(name, datatype, shape, count, binary[offset : offset + size])
        return Tensor(name, datatype, data), size
    if "data" not in item:
        raise invalid(f"input {name!r} has no 'data'")
    data = array_from_json(name, datatype, shape, count, item["data"])
    return Tensor(name, datatype, data), 0


def encode_infer_response(
    response: InferResponse, encoding: OutputEncoding
) -> tuple[bytes, int | None]:
    """The body of a V2 infer answer and, when it carries binary tensors, the JSON size."""
    outputs = []
    chunks = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.data.shape,
        }
        if encoding.is_binary(tensor.name):
            raw = array_to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_data(tensor.data)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def json_data(array: np.ndarray) -> Any:
    """Flat, row-major values that orjson serialises (natively for numeric arrays)."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in array.reshape(-1)
        ]
    if dtype == _FP16:  # orjson serialises no half floats
        array = array.astype(np.float32)
    return array.ravel()  # a view when already row-major, else a row-major copy


def encode_json(doc: Any) -> bytes:
    return orjson.dumps(doc, option=_DUMPS_OPTIONS)


def metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_spec_json(s.name, s.datatype, s.shape) for s in meta.inputs],
        "outputs": [_spec_json(s.name, s.datatype, s.shape) for s in meta.outputs],
        # Beyond V2 (clients ignore unknown fields): each version's stage, state and traffic.
        "status": [v.to_json() for v in meta.status],
    }


def _spec_json(name: str, datatype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def config_json(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration JSON (as `GET /v2/models/{m}/config` returns it)."""

    def io(specs: Any) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": _TRITON_TYPES[s.datatype], "dims": list(s.shape)}
            for s in specs
        ]

    return {
        "name": config.name,
        "platform": config.platform,
        "backend": "onnxruntime",
        "max_batch_size": config.max_batch_size,
        "input": io(config.inputs),
        "output": io(config.outputs),
    }


def statistics_json(stats: list[ModelStatistics]) -> dict[str, Any]:
    """Triton's statistics JSON (as `GET /v2/models[/{m}[/versions/{v}]]/stats` returns it)."""
    return {"model_stats": [_model_stats_json(s) for s in stats]}


def _model_stats_json(s: ModelStatistics) -> dict[str, Any]:
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration_json(s.success),
            "fail": _duration_json(s.fail),
            "queue": _duration_json(s.queue),
            "compute_input": _duration_json(s.compute_input),
            "compute_infer": _duration_json(s.compute_infer),
            "compute_output": _duration_json(s.compute_output),
            "cache_hit": _duration_json(s.cache_hit),
            "cache_miss": _duration_json(s.cache_miss),
        },
        "batch_stats": [
            {
                "batch_size": b.batch_size,
                "compute_input": _duration_json(b.compute_input),
                "compute_infer": _duration_json(b.compute_infer),
                "compute_output": _duration_json(b.compute_output),
            }
            for b in s.batches
        ],
    }


def _duration_json(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def decode_index_request(body: bytes) -> bool:
    """Whether a repository index request (empty, or `{"ready": bool}`) asks for the ready
    models only."""
    if not body.strip():
        return False
    ready = json_object(body, "repository index request").get("ready", False)
    if not isinstance(ready, bool):
        raise invalid("'ready' must be true or false")
    return ready


def repository_index_json(index: list[RepositoryEntry]) -> list[dict[str, str]]:
    """Triton's repository index JSON: one object per model version."""
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in index
    ]


_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
