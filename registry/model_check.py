"""What an ONNX model file may reach besides itself: nothing.

ONNX lets a tensor keep its bytes in another file (`data_location: EXTERNAL` with a
`location` key). ONNX Runtime resolves that location against the model's directory, or,
for a model given as bytes, against the process's working directory, and reads whatever
file it names: a registered model returning such a tensor through an Identity node would
hand any inference client the host's files. Every artifact is therefore checked before
ONNX Runtime sees it, at registration and again when a gateway loads it from any backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

# The session config entry that makes ONNX Runtime read a model's bytes as ONNX only, never
# as its own ORT format, which the check below cannot see into.
ONNX_FORMAT_ONLY = ("session.load_model_format", "ONNX")


class InvalidModelError(ValueError):
    """The artifact is not an ONNX model the gateway can describe and serve safely."""


class UnsafeModelError(InvalidModelError):
    """The model refers to data outside its own file."""


def parse_model(model: bytes) -> onnx.ModelProto:
    """The ONNX model in `model`, checked to be self-contained."""
    try:
        proto = onnx.load_from_string(model)
    except Exception as exc:
        raise InvalidModelError(f"not an ONNX model: {exc}") from exc
    check_self_contained(proto)
    return proto


def check_self_contained(model: onnx.ModelProto) -> None:
    """Refuse a model any of whose tensors keeps its data in another file. The error names
    the tensors, never the paths they point to."""
    external = sorted(set(_external_tensors(model)))
    if external:
        shown = ", ".join(repr(n) for n in external[:5])
        more = f" and {len(external) - 5} more" if len(external) > 5 else ""
        raise UnsafeModelError(
            f"tensor(s) {shown}{more} keep their data outside the model file (ONNX external "
            "data), which modelgate refuses: save the model with its initializers inside "
            "(onnx.save_model(model, path, save_as_external_data=False))"
        )


def _external_tensors(model: onnx.ModelProto) -> Iterator[str]:
    graphs = [model.graph]
    for training in model.training_info:
        graphs += [training.initialization, training.algorithm]
    nodes: list[onnx.NodeProto] = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            for tensor in graph.initializer:
                yield from _if_external(tensor, tensor.name)
            for sparse in graph.sparse_initializer:
                yield from _sparse_external(sparse)
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        for attr in node.attribute:
            label = f"{node.name or node.op_type}.{attr.name}"
            if attr.HasField("t"):
                yield from _if_external(attr.t, label)
            for tensor in attr.tensors:
                yield from _if_external(tensor, label)
            if attr.HasField("sparse_tensor"):
                yield from _sparse_external(attr.sparse_tensor, label)
            for sparse in attr.sparse_tensors:
                yield from _sparse_external(sparse, label)
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def _if_external(tensor: onnx.TensorProto, label: str) -> Iterator[str]:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        yield label or "(unnamed)"


def _sparse_external(sparse: onnx.SparseTensorProto, label: str = "") -> Iterator[str]:
    name = label or sparse.values.name
    yield from _if_external(sparse.values, name)
    yield from _if_external(sparse.indices, name)
