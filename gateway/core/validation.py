"""Checking decoded inputs against a model's signature, once for both protocols."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelgate.gateway.core.errors import invalid
from modelgate.gateway.core.runtime import OnnxModel
from modelgate.gateway.core.types import Tensor


def model_feeds(inputs: list[Tensor], model: OnnxModel) -> tuple[dict[str, np.ndarray], int]:
    """The ONNX Runtime feeds for `inputs` and the number of rows they carry.

    Every model input must be given once, with the model's datatype (no silent casts) and a
    shape the model accepts; all inputs must agree on the batch (first) dimension.
    """
    specs = model.input_by_name
    feeds: dict[str, np.ndarray] = {}
    rows = -1
    for tensor in inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            known = ", ".join(specs)
            raise invalid(f"unknown input {tensor.name!r} (model inputs: {known})")
        if tensor.name in feeds:
            raise invalid(f"input {tensor.name!r} given twice")
        if tensor.datatype != spec.datatype:
            raise invalid(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the "
                f"model's {spec.datatype}"
            )
        data = tensor.data
        shape = data.shape
        if not _shape_fits(shape, spec.shape):
            raise invalid(
                f"input {tensor.name!r}: shape {list(shape)} does not match the model's "
                f"{list(spec.shape)} (-1: any size)"
            )
        if spec.shape:
            if shape[0] == 0:
                raise invalid(f"input {tensor.name!r}: empty batch (first dimension is 0)")
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise invalid(
                    f"input {tensor.name!r}: {shape[0]} rows, but other inputs have {rows}"
                )
        if spec.datatype == "BYTES":
            data = _as_strings(tensor.name, data)
        feeds[tensor.name] = data
    if len(feeds) != len(specs):  # each name once and known: equal sizes mean all given
        missing = [name for name in specs if name not in feeds]
        raise invalid(f"missing input(s): {', '.join(missing)}")
    return feeds, max(rows, 1)


# A client's timeout beyond a day counts as a day: a deadline that far is no deadline in
# practice, and a bounded one keeps the event loop's timers within their range. Beyond 64
# bits (Triton's uint64), a value is no timeout any protocol field can carry: refused.
MAX_TIMEOUT_SECONDS = 86_400
_MAX_TIMEOUT_VALUE = 2**64 - 1

_PER_SECOND = {"microseconds": 1_000_000, "milliseconds": 1_000}


def timeout_seconds(
    timeout: Any, unit: str = "microseconds", what: str = "parameter 'timeout'"
) -> float | None:
    """A client's timeout in seconds, None when not given.

    The V2 `timeout` parameter counts microseconds (as Triton defines it), the HTTP header
    `x-request-timeout-ms` milliseconds. It must be a positive integer of at most 64 bits;
    beyond `MAX_TIMEOUT_SECONDS` it is capped.
    """
    if timeout is None:
        return None
    if type(timeout) is not int or not 0 < timeout <= _MAX_TIMEOUT_VALUE:  # bool is not one
        raise invalid(f"{what} must be a positive integer of at most 64 bits ({unit})")
    per_second = _PER_SECOND[unit]
    return min(timeout, MAX_TIMEOUT_SECONDS * per_second) / per_second


def _shape_fits(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether `shape` matches `want`, where -1 in `want` accepts any size."""
    if len(shape) != len(want):
        return False
    if shape[1:] == want[1:]:  # the usual case: only the batch dimension is dynamic
        return want[0] in (-1, shape[0]) if want else True
    return all(w in (-1, got) for got, w in zip(shape, want, strict=True))


def _as_strings(name: str, data: np.ndarray) -> np.ndarray:
    """ONNX Runtime takes string tensors as object arrays of `str`."""
    items = data.reshape(-1).tolist()
    try:  # the usual case, as one comprehension: every element is UTF-8 bytes
        strings = [item.decode("utf-8") for item in items]
    except (AttributeError, UnicodeDecodeError):
        strings = [_as_string(name, i, item) for i, item in enumerate(items)]
    out = np.empty(len(strings), dtype=object)
    out[:] = strings
    return out.reshape(data.shape)


def _as_string(name: str, i: int, item: Any) -> str:
    if isinstance(item, bytes | bytearray):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(f"input {name!r}: element {i} is not valid UTF-8") from None
    return str(item)
