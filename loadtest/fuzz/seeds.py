"""The models the fuzzed gateway serves, valid inputs for them, and the oracle of good answers.

Between them the models take every V2 datatype: the light benchmark model (FP32), a BYTES
echo, an INT64 lookup (ONNX Runtime fails it on an out-of-range index), a two-input model,
and an echo per remaining datatype, so that every decoding path of every format is reached.
"""

from __future__ import annotations

import importlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort

from loadtest.models import FEATURES, build_light
from modelgate.gateway.core.datatypes import V2_TO_NUMPY

REPO = Path(__file__).resolve().parents[2]

ECHO_TYPES: tuple[str, ...] = ("BOOL", "INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32")
ECHO_TYPES += ("UINT64", "FP16", "FP64")
GOOD_MODELS = ("light", "words", "lookup")  # the models good requests go to, in turn


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: name, V2 datatype and the shape of one row."""

    name: str
    datatype: str
    row: tuple[int, ...]


INPUTS: dict[str, tuple[InputSpec, ...]] = {
    "light": (InputSpec("input", "FP32", (FEATURES,)),),
    "words": (InputSpec("x", "BYTES", (3,)),),
    "lookup": (InputSpec("idx", "INT64", ()),),
    "pair": (InputSpec("a", "FP32", (2,)), InputSpec("b", "FP32", (2,))),
    **{f"echo_{t.lower()}": (InputSpec("x", t, (3,)),) for t in ECHO_TYPES},
}
LOOKUP_ROWS = 10  # the lookup table's size: indices 0-9 are in range
_WORDS = ("alpha", "béta", "", "γάμμα", "\U0001f600", "x" * 40, "tab\tnew\nline")


def _modelzoo() -> ModuleType:
    """tests/modelzoo.py, the test suite's model builders (tests/ is not a package)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("modelzoo")


def build_models() -> dict[str, bytes]:
    """Every served model's ONNX bytes, by name."""
    zoo = _modelzoo()
    models = {
        "light": build_light(),
        "words": zoo.echo("BYTES"),
        "lookup": zoo.lookup(LOOKUP_ROWS),
        "pair": zoo.two_inputs(),
    }
    models.update({f"echo_{t.lower()}": zoo.echo(t) for t in ECHO_TYPES})
    return models


def sample(spec: InputSpec, rows: int, rng: random.Random) -> np.ndarray:
    """Valid values for `rows` rows of `spec`."""
    gen = np.random.default_rng(rng.getrandbits(32))
    shape = (rows, *spec.row)
    if spec.datatype == "BYTES":
        return np.array([rng.choice(_WORDS) for _ in range(int(np.prod(shape)))]).reshape(shape)
    if spec.datatype == "BOOL":
        return gen.random(shape) < 0.5
    if spec.name == "idx":
        return gen.integers(0, LOOKUP_ROWS, shape, dtype=np.int64)
    dtype = V2_TO_NUMPY[spec.datatype]
    if dtype.kind == "f":
        return gen.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype.type)
    return gen.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def inputs_for(model: str, rng: random.Random, rows: int | None = None) -> dict[str, np.ndarray]:
    """A valid request's inputs for `model` (1-3 rows unless `rows` says)."""
    count = rows or rng.choice((1, 1, 2, 3))
    return {spec.name: sample(spec, count, rng) for spec in INPUTS[model]}


def wire_dtype(datatype: str) -> np.dtype:
    """The little-endian NumPy dtype of a fixed-size V2 datatype on the wire."""
    return V2_TO_NUMPY[datatype].newbyteorder("<")


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes in the V2 binary layout: little-endian, or BYTES elements each
    after a 4-byte little-endian length."""
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=wire_dtype(datatype)).tobytes()
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def from_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    """The inverse of `to_raw`; BYTES elements come back as str."""
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=wire_dtype(datatype)).reshape(shape)
    items, at = [], 0
    while at < len(raw):
        length = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + length].decode("utf-8"))
        at += 4 + length
    return np.array(items, dtype=object).reshape(shape)


class Oracle:
    """The answers a correct gateway gives: each model run in-process by ONNX Runtime."""

    def __init__(self, models: dict[str, bytes]) -> None:
        self._sessions = {
            name: ort.InferenceSession(models[name], providers=["CPUExecutionProvider"])
            for name in GOOD_MODELS
        }

    def outputs(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[model]
        feeds = {k: v.astype(object) if v.dtype.kind == "U" else v for k, v in inputs.items()}
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


def mismatch(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """What differs between two sets of outputs (None: the same, floats to 1e-5)."""
    if set(expected) != set(got):
        return f"outputs {sorted(got)} instead of {sorted(expected)}"
    for name, want in expected.items():
        have = np.asarray(got[name])
        if have.shape != want.shape:
            return f"output {name!r} has shape {list(have.shape)}, not {list(want.shape)}"
        if want.dtype.kind in "OUS":
            same = [str(a) for a in have.reshape(-1)] == [str(b) for b in want.reshape(-1)]
        elif want.dtype.kind == "f":
            same = bool(np.allclose(have.astype(np.float64), want, rtol=1e-5, atol=1e-6))
        else:
            same = bool(np.array_equal(have, want))
        if not same:
            return f"output {name!r} is {have.reshape(-1)[:6]}..., not {want.reshape(-1)[:6]}..."
    return None
