"""Open Inference Protocol datatypes and their NumPy / ONNX Runtime equivalents."""

from __future__ import annotations

import numpy as np

from modelgate.gateway.core.errors import invalid

# V2 name -> NumPy dtype. BYTES tensors are object arrays of `bytes` (or `str` for ORT).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype for a V2 datatype name; an unknown name is a client error."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise invalid(f"unsupported datatype {datatype!r}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a NumPy dtype (object and string arrays are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    return _NUMPY_TO_V2[dtype]
