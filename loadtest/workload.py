"""What a Locust user sends: requests built from a served model's metadata.

`GET /v2/models/{m}[/versions/{v}]` names each input, its datatype and shape; `Workload`
draws random rows that fit (numbers near 0, short strings for BYTES), shifts a share of
them on purpose (to trip the drift monitor), and encodes a small pool of requests in each
wire format the gateway takes: V2 JSON, V2 JSON with binary tensors, V1 `instances` and
gRPC ModelInfer. Requests are built once and reused, so that the load generator spends its
CPU sending, not encoding.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelgate.gateway.codecs.tensors import array_to_raw
from modelgate.gateway.core.datatypes import V2_TO_NUMPY
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb

SHIFT = 3.0  # shifted rows: numbers moved by this many standard deviations, strings renamed
POOL = 32  # distinct requests per wire format, cycled


class WorkloadError(ValueError):
    """The model's metadata cannot be turned into requests (the message says why)."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input as its metadata declares it (-1: a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def batch_shape(self, rows: int) -> tuple[int, ...]:
        """The shape of a request of `rows` rows: a dynamic first dimension takes `rows`,
        a fixed one stays; other dynamic dimensions take 1."""
        if not self.shape:
            return ()
        first = rows if self.shape[0] < 0 else self.shape[0]
        return (first, *(1 if d < 0 else d for d in self.shape[1:]))


def inputs_from_metadata(doc: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    """The inputs of a V2 model metadata answer; WorkloadError when it holds none usable."""
    found = []
    for item in doc.get("inputs") or ():
        datatype = str(item.get("datatype", ""))
        if datatype not in V2_TO_NUMPY:
            raise WorkloadError(f"input {item.get('name')!r} has unknown datatype {datatype!r}")
        found.append(InputSpec(str(item["name"]), datatype, tuple(int(d) for d in item["shape"])))
    if not found:
        raise WorkloadError(f"the metadata of model {doc.get('name')!r} lists no inputs")
    return tuple(found)


def random_tensor(
    spec: InputSpec, rows: int, shifted: float, rng: np.random.Generator
) -> np.ndarray:
    """Random data of `spec`'s shape for `rows` rows; each row is shifted with probability
    `shifted` (numbers by SHIFT, booleans set, strings from another vocabulary)."""
    shape = spec.batch_shape(rows)
    moved = rng.random(shape[0] if shape else 1) < shifted
    mask = moved.reshape((-1,) + (1,) * (len(shape) - 1)) if shape else moved[0]
    dtype = V2_TO_NUMPY[spec.datatype]
    if spec.datatype == "BYTES":
        words = np.array([f"w{i}" for i in range(10)], dtype=object)
        other = np.array([f"shifted-{i}" for i in range(10)], dtype=object)
        picks = rng.integers(0, 10, size=shape)
        return np.where(mask, other[picks], words[picks])
    if spec.datatype == "BOOL":
        return (rng.random(shape) < 0.5) | mask
    if dtype.kind == "f":
        return (rng.normal(size=shape) + SHIFT * mask).astype(dtype)
    # Integers: small values most models take (indices, categories, counts).
    low = 0 if dtype.kind == "u" else -2
    return (rng.integers(low, 5, size=shape) + int(SHIFT) * mask).astype(dtype)


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype == object:
        return [str(v) for v in flat]
    return flat.tolist()


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A ready HTTP body and its extra headers."""

    body: bytes
    headers: Mapping[str, str]


class Workload:
    """Pools of ready requests for one model (and version) in every wire format."""

    def __init__(
        self,
        model: str,
        version: str,
        inputs: tuple[InputSpec, ...],
        *,
        rows: int = 1,
        shifted: float = 0.0,
        keys: int = 0,
        seed: int | None = None,
    ) -> None:
        if rows < 1:
            raise WorkloadError(f"rows per request must be at least 1, got {rows}")
        if not 0.0 <= shifted <= 1.0:
            raise WorkloadError(f"the share of shifted rows must be within 0-1, got {shifted}")
        if keys < 0:
            raise WorkloadError(f"routing-key cardinality must be at least 0, got {keys}")
        self.model = model
        self.version = version
        self.inputs = inputs
        self.keys = keys
        self._random = random.Random(seed)
        rng = np.random.default_rng(seed)
        self._batches = [
            [random_tensor(spec, rows, shifted, rng) for spec in inputs] for _ in range(POOL)
        ]

    def path(self, suffix: str) -> str:
        """`/v2/models/{m}[/versions/{v}]/{suffix}`."""
        version = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{version}/{suffix}"

    def routing_key(self) -> str | None:
        """A key among `keys` users (None without keys): sticky routing to one version."""
        if not self.keys:
            return None
        return f"user-{self._random.randrange(self.keys)}"

    def _batch(self) -> list[np.ndarray]:
        return self._random.choice(self._batches)

    def v2_json(self) -> HttpRequest:
        """A V2 JSON inference body (FP16 has no JSON form: WorkloadError)."""
        if any(spec.datatype == "FP16" for spec in self.inputs):
            raise WorkloadError("V2 JSON cannot carry FP16 inputs; use the binary or gRPC users")
        doc = {"inputs": [
            {"name": s.name, "datatype": s.datatype, "shape": list(a.shape), "data": _json_data(a)}
            for s, a in zip(self.inputs, self._batch(), strict=True)
        ]}  # fmt: skip
        return HttpRequest(orjson.dumps(doc), {"content-type": "application/json"})

    def v2_binary(self) -> HttpRequest:
        """A V2 body with every input and output as binary data (Triton's extension)."""
        entries, raw = [], []
        for spec, array in zip(self.inputs, self._batch(), strict=True):
            data = array_to_raw(array, spec.datatype)
            entries.append({"name": spec.name, "datatype": spec.datatype,
                            "shape": list(array.shape),
                            "parameters": {"binary_data_size": len(data)}})  # fmt: skip
            raw.append(data)
        header = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
        return HttpRequest(header + b"".join(raw), headers)

    def v1_instances(self) -> HttpRequest:
        """A V1 `{"instances": [...]}` body: rows, or objects keyed by input name."""
        if any(spec.datatype == "FP16" for spec in self.inputs):
            raise WorkloadError("V1 JSON cannot carry FP16 inputs; use the binary or gRPC users")
        batch = self._batch()
        columns = [a.astype(str).tolist() if a.dtype == object else a.tolist() for a in batch]
        if len(self.inputs) == 1:
            instances: list[Any] = columns[0]
        else:
            names = [spec.name for spec in self.inputs]
            instances = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        return HttpRequest(
            orjson.dumps({"instances": instances}), {"content-type": "application/json"}
        )

    def grpc(self) -> pb.ModelInferRequest:
        """A ModelInfer request with raw input contents."""
        request = pb.ModelInferRequest(model_name=self.model, model_version=self.version)
        for spec, array in zip(self.inputs, self._batch(), strict=True):
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
            request.raw_input_contents.append(array_to_raw(array, spec.datatype))
        return request
