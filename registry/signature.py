"""Reading a model's input/output signature from its ONNX graph at registration."""

from __future__ import annotations

import onnx

from modelgate.registry.model_check import InvalidModelError, parse_model
from modelgate.registry.types import TensorSignature

__all__ = ["InvalidModelError", "read_signature"]

_ONNX_TO_V2: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def _signature(value: onnx.ValueInfoProto) -> TensorSignature:
    tensor = value.type.tensor_type
    datatype = _ONNX_TO_V2.get(tensor.elem_type)
    if datatype is None:
        raise InvalidModelError(f"{value.name}: unsupported element type {tensor.elem_type}")
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSignature(value.name, datatype, shape)


def read_signature(model: bytes) -> tuple[tuple[TensorSignature, ...], tuple[TensorSignature, ...]]:
    """(inputs, outputs) of an ONNX model; initialisers listed as inputs are left out.
    A model that is not self-contained is refused (see model_check)."""
    graph = parse_model(model).graph
    if not graph.output:
        raise InvalidModelError("not an ONNX model: the graph has no outputs")
    initialisers = {init.name for init in graph.initializer}
    inputs = tuple(_signature(v) for v in graph.input if v.name not in initialisers)
    outputs = tuple(_signature(v) for v in graph.output)
    return inputs, outputs
