"""A model's input/output signature: read from its ONNX graph at registration, and
compared with the production version's before a version may take production's traffic.

`signature_differences` is the one rule for "does this version fit the traffic production
gets": the registry applies it to stage changes, the gateway to routing (registries like
MLflow change stages without asking modelgate).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import onnx

from modelgate.registry.errors import InvalidRequestError, SignatureMismatchError
from modelgate.registry.model_check import InvalidModelError, parse_model
from modelgate.registry.types import TensorSignature

__all__ = [
    "InvalidModelError",
    "Signed",
    "Tensor",
    "allowed_reason",
    "check_allowance",
    "check_fit",
    "listing",
    "read_signature",
    "signature_differences",
]

# Differences listed in one message; a model with hundreds of renamed inputs gets a count.
_LISTED = 10

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


def read_signature(
    model: bytes | Path,
) -> tuple[tuple[TensorSignature, ...], tuple[TensorSignature, ...]]:
    """(inputs, outputs) of an ONNX model (bytes or a file's path); initialisers listed as
    inputs are left out.
    A model that is not self-contained is refused (see model_check)."""
    graph = parse_model(model).proto.graph
    if not graph.output:
        raise InvalidModelError("not an ONNX model: the graph has no outputs")
    initialisers = {init.name for init in graph.initializer}
    inputs = tuple(_signature(v) for v in graph.input if v.name not in initialisers)
    outputs = tuple(_signature(v) for v in graph.output)
    return inputs, outputs


class Tensor(Protocol):
    """An input or output as both the registry (TensorSignature) and a loaded model see it."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


class Signed(Protocol):
    """Anything with a signature: a registered version or a loaded model."""

    @property
    def inputs(self) -> Sequence[Tensor]: ...
    @property
    def outputs(self) -> Sequence[Tensor]: ...


def signature_differences(production: Signed, candidate: Signed, label: str) -> tuple[str, ...]:
    """Each way `candidate` (called `label` in the text, e.g. "version 2") differs from
    `production`, production's side first: "input 'input' is missing (version 2 has 'x')",
    "output 'label' datatype INT64 != FP32", "input 'input' shape [-1, 4] != [-1, 5]".

    Names are compared as sets (requests name their tensors; order is not part of the
    protocol), then each shared tensor's datatype and shape. Every dimension after the first
    must be equal, a dynamic one (-1) against a fixed one included: clients send what
    production advertises. The first, batch, dimension may widen (fixed to dynamic) but not
    narrow: a candidate that fixes it where production takes any size, or fixes another size,
    refuses requests production answers. Nothing else is compared.
    """
    return (
        *_differences("input", production.inputs, candidate.inputs, label),
        *_differences("output", production.outputs, candidate.outputs, label),
    )


def _differences(
    kind: str, production: Sequence[Tensor], candidate: Sequence[Tensor], label: str
) -> list[str]:
    theirs = {t.name: t for t in candidate}
    ours = {t.name for t in production}
    extra = [t.name for t in candidate if t.name not in ours]
    found: list[str] = []
    missing = False
    for tensor in production:
        other = theirs.get(tensor.name)
        if other is None:
            # The candidate's unknown names are named here: usually one was renamed.
            has = ", ".join(repr(n) for n in extra) if extra else f"no other {kind}"
            found.append(f"{kind} {tensor.name!r} is missing ({label} has {has})")
            missing = True
            continue
        if tensor.datatype != other.datatype:
            found.append(f"{kind} {tensor.name!r} datatype {tensor.datatype} != {other.datatype}")
        if not _shape_fits(tensor.shape, other.shape):
            found.append(
                f"{kind} {tensor.name!r} shape {list(tensor.shape)} != {list(other.shape)}"
            )
    if not missing:
        found += [f"{label} has a new {kind} {name!r}" for name in extra]
    return found


def _shape_fits(production: tuple[int, ...], candidate: tuple[int, ...]) -> bool:
    if len(production) != len(candidate):
        return False
    if not production:
        return True
    batch, other_batch = production[0], candidate[0]
    return (other_batch == -1 or other_batch == batch) and production[1:] == candidate[1:]


def check_allowance(allow: bool, reason: str) -> None:
    """Allowing a signature change (`--allow-signature-change`) needs a reason to record."""
    if allow and not reason.strip():
        raise InvalidRequestError(
            "allowing a signature change needs a reason for the audit trail (--reason)"
        )


def check_fit(
    production: Signed,
    candidate: Signed,
    *,
    name: str,
    version: int,
    production_version: int,
    allow: bool,
) -> tuple[str, ...]:
    """The rule for version `version` of `name` moving to canary, shadow or production while
    another version is in production: how its signature differs (empty: it fits), which
    is only allowed with `allow`; SignatureMismatchError naming each difference otherwise."""
    if not production.outputs:
        # Never recorded (every ONNX model has an output): nothing to compare with.
        return ()
    label = f"version {version}"
    differences = signature_differences(production, candidate, label)
    if differences and not allow:
        raise SignatureMismatchError(
            f"the signature of {label} of {name!r} differs from production version "
            f"{production_version}'s (production != {label}): {listing(differences)}. If "
            f"clients are ready for {label}, allow the change with a reason "
            "(--allow-signature-change --reason ..., or allow_signature_change and reason "
            "in the registry API)",
            differences,
        )
    return differences


def allowed_reason(differences: Sequence[str], reason: str) -> str:
    """The audit reason of a transition whose signature change was allowed."""
    return f"signature change allowed ({listing(differences)}): {reason}"


def listing(differences: Sequence[str]) -> str:
    """Differences as one line, at most a few of them named."""
    shown = "; ".join(differences[:_LISTED])
    more = len(differences) - _LISTED
    return shown + (f"; and {more} more" if more > 0 else "")
