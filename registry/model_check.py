"""What an ONNX model file may make ONNX Runtime do: compute with its own contents, within
bounds, and nothing else.

Every artifact is checked before ONNX Runtime sees it, at registration and again when a
gateway loads it from any backend (docs/hardening.md, "Model files", says why each rule):

- self-contained (`check_self_contained`): no tensor keeps its bytes in another file (ONNX
  external data: ONNX Runtime would read whatever file the `location` names, and an Identity
  node would hand it to any client); no node needs an operator from outside ONNX Runtime (a
  custom domain) or a compiled blob (`EPContext`); no `ort_config` metadata, which ONNX
  Runtime applies as session options (threads, profiling files) when the host's environment
  has ORT_LOAD_CONFIG_FROM_MODEL=1.
- bounded (`check_bounded`): every tensor holds the data its shape declares, sparse tensors
  (stored dense by ONNX Runtime) expand to little more than the file, and the graph, with
  its subgraphs and its local functions expanded, has a bounded number of nodes and depth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import onnx
from onnx import TensorProto

# The session config entry that makes ONNX Runtime read a model's bytes as ONNX only, never
# as its own ORT format, which the checks below cannot see into.
ONNX_FORMAT_ONLY = ("session.load_model_format", "ONNX")

# Operator domains whose kernels ship inside ONNX Runtime's CPU build ("" is ai.onnx).
SHIPPED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Nodes, subgraphs included and local functions expanded. ONNX Runtime holds several KiB per
# node and its load time grows faster than the count; real models stay far below.
MAX_NODES = 100_000
# Levels of subgraphs (If, Loop, Scan bodies) and of local functions calling functions.
MAX_DEPTH = 16
# Bytes sparse tensors may add once stored dense, beyond the size of the file itself.
SPARSE_ALLOWANCE = 64 * 1024 * 1024

# Bits per element of every fixed-size ONNX element type (STRING has none).
_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32,
    TensorProto.UINT64: 64, TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16, 17: 8, 18: 8, 19: 8, 20: 8,  # FLOAT8E4M3FN ... FLOAT8E5M2FNUZ
    21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6,  # UINT4 ... FLOAT6E3M2
}  # fmt: skip
# Values in the typed data field per element: complex numbers take two; 4-bit and 2-bit
# types pack two and four elements into each int32 value (UINT4, INT4, FLOAT4E2M1; UINT2, INT2).
_VALUES_PER_ELEMENT: dict[int, float] = {
    TensorProto.COMPLEX64: 2, TensorProto.COMPLEX128: 2, 21: 0.5, 22: 0.5, 23: 0.5, 25: 0.25,
    26: 0.25,
}  # fmt: skip
_TOO_MANY = 1 << 62  # an element count past any memory: counting stops there


class InvalidModelError(ValueError):
    """The artifact is not an ONNX model the gateway can describe and serve safely."""


class UnsafeModelError(InvalidModelError):
    """The model reaches outside its own file: another file, a library, the host's settings."""


class OversizedModelError(InvalidModelError):
    """The model declares more than it holds, or more graph than ONNX Runtime should build."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A parsed model that passed every check.

    `nodes` counts what ONNX Runtime will build: subgraph nodes included, local function
    calls replaced by their bodies.
    """

    proto: onnx.ModelProto
    nodes: int


def parse_model(model: bytes | Path) -> ModelFile:
    """The ONNX model in `model` (bytes, or a file's path), checked to be self-contained
    and bounded. Parsing needs the whole model in memory, and a file's bytes while it runs."""
    try:
        if isinstance(model, Path):
            size = model.stat().st_size
            proto = onnx.load(str(model), load_external_data=False)
        else:
            size = len(model)
            proto = onnx.load_from_string(model)
    except Exception as exc:
        raise InvalidModelError(f"not an ONNX model: {exc}") from exc
    check_self_contained(proto)
    return ModelFile(proto, check_bounded(proto, size))


def check_self_contained(model: onnx.ModelProto) -> None:
    """Refuse a model that reaches outside its own file. Errors name the tensor, node or
    key at fault, never the paths a tensor points to."""
    tensors = list(_dense_tensors(model))
    for label, sparse in _sparse_tensors(model):
        tensors += [(label, sparse.values), (label, sparse.indices)]
    external = sorted({label for label, tensor in tensors if _is_external(tensor)})
    if external:
        raise UnsafeModelError(
            f"tensor(s) {_names(external)} keep their data outside the model file (ONNX "
            "external data), which modelgate refuses: save the model with its initializers "
            "inside (onnx.save_model(model, path, save_as_external_data=False))"
        )
    if any(prop.key == "ort_config" for prop in model.metadata_props):
        raise UnsafeModelError(
            "the model's metadata has an 'ort_config' entry (ONNX Runtime session options "
            "read from the model), which modelgate refuses: remove that metadata entry"
        )
    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model):
        if node.op_type == "EPContext":
            raise UnsafeModelError(
                f"node {_node(node)} is an EPContext node (a precompiled blob for one "
                "accelerator, possibly in another file), which modelgate refuses: register "
                "the original ONNX model"
            )
        if node.domain not in SHIPPED_DOMAINS and (node.domain, node.op_type) not in local:
            raise UnsafeModelError(
                f"node {_node(node)} uses operator {node.op_type!r} of domain "
                f"{node.domain!r}, which ONNX Runtime does not ship (a custom operator "
                "library): modelgate serves the operators of ai.onnx, ai.onnx.ml and "
                "com.microsoft, and the model's own local functions"
            )


def check_bounded(model: onnx.ModelProto, file_size: int) -> int:
    """Refuse a model that declares more than it holds or more graph than ONNX Runtime
    should build; returns its node count (see `ModelFile.nodes`)."""
    sparse_bytes = 0
    sparse_names: list[str] = []
    for label, tensor in _dense_tensors(model):
        _check_holds(tensor, label)
    for label, sparse in _sparse_tensors(model):
        _check_holds(sparse.values, label)
        _check_holds(sparse.indices, label)
        sparse_bytes += _nbytes(_elements(sparse.dims, label), sparse.values, label)
        sparse_names.append(label)
    if sparse_bytes > max(file_size, SPARSE_ALLOWANCE):
        raise OversizedModelError(
            f"sparse tensor(s) {_names(sorted(sparse_names))} expand to {sparse_bytes} bytes "
            f"(ONNX Runtime stores them dense), more than the model file ({file_size} bytes) "
            f"or {SPARSE_ALLOWANCE} bytes: store them dense"
        )
    return _GraphSize(model).total()


class _GraphSize:
    """Counts nodes the way ONNX Runtime builds them and checks the nesting depth."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._functions = {(f.domain, f.name): f for f in model.functions}
        self._sizes: dict[tuple[str, str], tuple[int, int]] = {}  # function -> (nodes, depth)
        self._open: set[tuple[str, str]] = set()
        self._graph = model.graph

    def total(self) -> int:
        nodes, _ = self._nodes(self._graph.node, 0)
        return nodes

    def _nodes(self, nodes: Iterable[onnx.NodeProto], depth: int) -> tuple[int, int]:
        """(node count, levels nested below) of `nodes` at nesting level `depth`; the depth
        is checked on the way down, so that the recursion itself stays shallow."""
        if depth > MAX_DEPTH:
            _too_deep()
        count, deepest = 0, 0
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in self._functions:
                inner, below = self._function(key, depth)
                count += inner
                deepest = max(deepest, below + 1)
            else:
                count += 1
            for graph in _subgraphs(node):
                inner, below = self._nodes(graph.node, depth + 1)
                count += inner
                deepest = max(deepest, below + 1)
            if count > MAX_NODES:
                raise OversizedModelError(
                    f"the model has more than {MAX_NODES} nodes once its subgraphs are "
                    "counted and its local functions expanded"
                )
        return count, deepest

    def _function(self, key: tuple[str, str], depth: int) -> tuple[int, int]:
        if key in self._open:
            raise OversizedModelError(f"local function {key[0]}:{key[1]} calls itself")
        if key not in self._sizes:
            self._open.add(key)
            self._sizes[key] = self._nodes(self._functions[key].node, depth + 1)
            self._open.discard(key)
        nodes, below = self._sizes[key]
        if depth + 1 + below > MAX_DEPTH:  # first met shallower, now called deeper
            _too_deep()
        return nodes, below


def _too_deep() -> NoReturn:
    raise OversizedModelError(f"subgraphs or local functions nest more than {MAX_DEPTH} deep")


def _check_holds(tensor: TensorProto, label: str) -> None:
    """A tensor's data must be as large as its shape and type declare."""
    if _is_external(tensor):
        return  # refused by check_self_contained
    elements = _elements(tensor.dims, label)
    dtype = tensor.data_type
    if dtype == TensorProto.STRING:
        held, expected = len(tensor.string_data), elements
    elif dtype not in _BITS:
        raise OversizedModelError(f"tensor {label!r} has unknown element type {dtype}")
    elif tensor.HasField("raw_data"):
        held, expected = len(tensor.raw_data), math.ceil(elements * _BITS[dtype] / 8)
    else:
        held = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(dtype)))
        expected = math.ceil(elements * _VALUES_PER_ELEMENT.get(dtype, 1.0))
    if held != expected:
        raise OversizedModelError(
            f"tensor {label!r} declares shape {list(tensor.dims)} but holds data for "
            f"{'a different number of' if held else 'no'} elements: re-export the model"
        )


def _elements(dims: Iterable[int], label: str) -> int:
    count = 1
    for dim in dims:
        if dim < 0:
            raise OversizedModelError(f"tensor {label!r} has a negative dimension {dim}")
        count = min(count * dim, _TOO_MANY)
    return count


def _nbytes(elements: int, like: TensorProto, label: str) -> int:
    if like.data_type == TensorProto.STRING:
        return elements * 32  # one std::string each, before its characters
    bits = _BITS.get(like.data_type)
    if bits is None:
        raise OversizedModelError(f"tensor {label!r} has unknown element type {like.data_type}")
    return math.ceil(elements * bits / 8)


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """Every graph ONNX Runtime may read: the main one, training ones and all subgraphs
    (of function bodies too); function bodies themselves come from `_all_nodes`."""
    graphs = [model.graph]
    for training in model.training_info:
        graphs += [training.initialization, training.algorithm]
    graphs += [g for f in model.functions for n in f.node for g in _subgraphs(n)]
    while graphs:
        graph = graphs.pop()
        yield graph
        graphs.extend(g for n in graph.node for g in _subgraphs(n))


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _dense_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(label, tensor) for every dense tensor: initializers and node attributes."""
    for graph in _all_graphs(model):
        for tensor in graph.initializer:
            yield tensor.name or "(unnamed)", tensor
    for node in _all_nodes(model):
        for attr in node.attribute:
            label = f"{_label(node)}.{attr.name}"
            if attr.HasField("t"):
                yield label, attr.t
            for tensor in attr.tensors:
                yield label, tensor


def _sparse_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.SparseTensorProto]]:
    for graph in _all_graphs(model):
        for sparse in graph.sparse_initializer:
            yield sparse.values.name or "(unnamed)", sparse
    for node in _all_nodes(model):
        for attr in node.attribute:
            label = f"{_label(node)}.{attr.name}"
            if attr.HasField("sparse_tensor"):
                yield label, attr.sparse_tensor
            for sparse in attr.sparse_tensors:
                yield label, sparse


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def _node(node: onnx.NodeProto) -> str:
    return repr(node.name) if node.name else f"of type {node.op_type!r}"


def _names(labels: list[str]) -> str:
    shown = ", ".join(repr(n) for n in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
