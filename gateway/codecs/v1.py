"""The V1 (TensorFlow-Serving style) predict format: `{"instances": [...]}` in,
`{"predictions": [...]}` out.

V1 carries no datatypes or names: they come from the model's signature. One-input models
take a list of rows; several inputs take a list of objects keyed by input name (or the
columnar `{"inputs": {...}}` form).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from modelgate.gateway.codecs.tensors import array_from_nested
from modelgate.gateway.core.errors import invalid
from modelgate.gateway.core.limits import ElementBudget
from modelgate.gateway.core.types import InferRequest, InferResponse, Tensor, TensorSpec


def decode_predict_request(
    body: bytes,
    model: str,
    version: str | None,
    inputs: tuple[TensorSpec, ...],
    budget: ElementBudget,
) -> InferRequest:
    """An `InferRequest` from a V1 body, typed by the model's input signature; the shapes
    of its data are charged to the request's `budget`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        raise invalid("V1 body must be an object with either 'instances' or 'inputs'")
    if "instances" in doc:
        columns = _columns_from_instances(doc["instances"], inputs)
    else:
        columns = _columns_from_inputs(doc["inputs"], inputs)
    tensors = [
        Tensor(spec.name, spec.datatype, array_from_nested(spec.name, spec.datatype, col, budget))
        for spec, col in zip(inputs, columns, strict=True)
    ]
    return InferRequest(model=model, version=version, inputs=tensors, protocol="v1")


def _columns_from_instances(instances: Any, inputs: tuple[TensorSpec, ...]) -> list[Any]:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list")
    if len(inputs) == 1 and not isinstance(instances[0], dict):
        return [instances]
    names = [spec.name for spec in inputs]
    columns: list[list[Any]] = [[] for _ in names]
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise invalid(f"instance {i} must be an object keyed by input name: {names}")
        for column, name in zip(columns, names, strict=True):
            if name not in instance:
                raise invalid(f"instance {i} lacks input {name!r}")
            column.append(instance[name])
    return columns


def _columns_from_inputs(columns: Any, inputs: tuple[TensorSpec, ...]) -> list[Any]:
    if len(inputs) == 1 and not isinstance(columns, dict):
        return [columns]
    if not isinstance(columns, dict):
        raise invalid("'inputs' must be an object keyed by input name")
    missing = [spec.name for spec in inputs if spec.name not in columns]
    if missing:
        raise invalid(f"missing input(s): {', '.join(missing)}")
    return [columns[spec.name] for spec in inputs]


def encode_predict_response(response: InferResponse) -> bytes:
    """`{"predictions": ...}`: rows of the single output, or one object per row."""
    outputs = response.outputs
    if len(outputs) == 1:
        predictions: Any = _rows(outputs[0])
    else:
        columns = [(t.name, _rows(t)) for t in outputs]
        count = len(columns[0][1])
        predictions = [{name: rows[i] for name, rows in columns} for i in range(count)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows(tensor: Tensor) -> list[Any]:
    data = tensor.data
    if data.dtype.kind in "OS":
        data = np.vectorize(_text, otypes=[object])(data)
    rows: list[Any] = data.tolist()
    return rows


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
