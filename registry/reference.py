"""Reference data at registration: load a sample, check it against the model, profile it.

The sample is a `.npy` array, an `.npz` archive with one array per input name, or a `.csv`
table. A table (`.npy` 2-D or `.csv`) covers the model's inputs left to right: an input
[N, F] takes F columns, an input [N] or [N, 1] takes one. A `.csv` may start with a header:
it is taken as one when a number column has a non-number in the first row, or when the
first row is exactly the input names (then the columns are matched to inputs by name).
Header cells name the features in the profile.

The model runs once on the sample (in chunks) so that its outputs get profiled too.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelgate.monitor.calibration import size_warning
from modelgate.monitor.drift import DriftSettings, calibrated_for
from modelgate.monitor.profile import (
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    ReferenceProfile,
    build_profile,
)
from modelgate.registry.errors import InvalidRequestError
from modelgate.registry.signature import InvalidModelError, read_signature
from modelgate.registry.types import TensorSignature

_NUMPY_TYPES: dict[str, type[Any]] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_CHUNK_ROWS = 65_536

Feeds = dict[str, np.ndarray]


class ReferenceDataError(InvalidRequestError):
    """Reference data that cannot be read or does not fit the model's inputs."""


def reference_profile(
    model: bytes,
    path: Path | str,
    *,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    chunk_rows: int = _CHUNK_ROWS,
) -> dict[str, Any]:
    """The reference profile (monitor.profile's JSON form) of the sample at `path`, with
    thresholds calibrated to it (`monitor.calibration`)."""
    inputs, _ = read_signature(model)
    feeds, names = load_reference(path, inputs)
    outputs = run_model(model, feeds, chunk_rows=chunk_rows)
    profile = build_profile(feeds, outputs, names=names, bins=bins, max_categories=max_categories)
    # Calibrated for the default drift settings; a gateway configured otherwise calibrates
    # again when it loads the version.
    return calibrated_for(profile, DriftSettings()).to_json()


def reference_warning(reference: dict[str, Any]) -> str | None:
    """Why a reference profile (JSON) is too small for its calibrated windows, or None."""
    return size_warning(ReferenceProfile.from_json(reference))


def load_reference(
    path: Path | str, inputs: Sequence[TensorSignature]
) -> tuple[Feeds, dict[str, list[str]]]:
    """(one array per input, cast to its datatype; feature names from a CSV header)."""
    path = Path(path)
    for signature in inputs:
        if len(signature.shape) not in (1, 2):
            raise ReferenceDataError(
                f"input {signature.name!r} has shape {list(signature.shape)}: reference "
                "data is supported for inputs of rank 1 or 2 only"
            )
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise ReferenceDataError(f"{path}: reference data must be a .npy, .npz or .csv file")
    if not path.is_file():
        raise ReferenceDataError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return _from_table(np.load(path, allow_pickle=False), inputs), {}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            return _from_arrays(arrays, inputs), {}
    except ValueError as exc:
        if isinstance(exc, ReferenceDataError):
            raise
        raise ReferenceDataError(f"{path}: not a NumPy file I can read: {exc}") from None
    return _from_csv(path, inputs)


def run_model(model: bytes, feeds: Feeds, *, chunk_rows: int = _CHUNK_ROWS) -> Feeds:
    """The model's outputs on `feeds`, run in chunks; outputs not row-aligned are left out."""
    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"the ONNX model does not load: {exc}") from None
    rows = len(next(iter(feeds.values())))
    fixed = {i.shape[0] for i in session.get_inputs() if isinstance(i.shape[0], int)}
    if fixed:
        chunk_rows = min(fixed)
        if rows % chunk_rows:
            raise ReferenceDataError(
                f"the model takes batches of exactly {chunk_rows} rows; "
                f"{rows} reference rows are not a multiple of that"
            )
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    try:
        for start in range(0, rows, chunk_rows):
            chunk = {k: v[start : start + chunk_rows] for k, v in feeds.items()}
            for name, value in zip(names, session.run(names, chunk), strict=True):
                parts[name].append(value)
    except Exception as exc:
        raise ReferenceDataError(f"the model failed on the reference data: {exc}") from None
    outputs: Feeds = {}
    for name, values in parts.items():
        if all(isinstance(v, np.ndarray) and v.ndim >= 1 for v in values):
            joined = np.concatenate(values)
            if len(joined) == rows:
                outputs[name] = joined
    return outputs


def _width(signature: TensorSignature) -> int:
    """Columns an input takes in a table: 1 for [N], F for [N, F] (-1 when dynamic)."""
    return 1 if len(signature.shape) == 1 else signature.shape[1]


def _from_table(table: np.ndarray, inputs: Sequence[TensorSignature]) -> Feeds:
    if table.ndim == 1 and len(inputs) == 1 and _width(inputs[0]) in (1, -1):
        table = table.reshape(-1, 1)
    if table.ndim != 2:
        raise ReferenceDataError(
            f"reference data must be a 2-D table [rows, columns], got shape {list(table.shape)}"
        )
    blocks = _column_blocks(table.shape[1], inputs)
    return {
        signature.name: _fit(table[:, block], signature, f"input {signature.name!r}")
        for signature, block in zip(inputs, blocks, strict=True)
    }


def _column_blocks(columns: int, inputs: Sequence[TensorSignature]) -> list[slice]:
    """The table columns of each input, left to right; a clear error when they do not add up."""
    widths = [_width(s) for s in inputs]
    if len(inputs) == 1 and widths[0] == -1:
        widths = [columns]
    if -1 in widths:
        dynamic = [s.name for s, w in zip(inputs, widths, strict=True) if w == -1]
        raise ReferenceDataError(
            f"inputs {dynamic} have a dynamic width, so a table cannot be split between "
            "the inputs; give an .npz file with one array per input name"
        )
    if sum(widths) != columns:
        layout = ", ".join(f"{s.name}: {w}" for s, w in zip(inputs, widths, strict=True))
        raise ReferenceDataError(
            f"the reference data has {columns} columns but the model takes {sum(widths)} ({layout})"
        )
    edges = np.cumsum([0, *widths]).tolist()
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _from_arrays(arrays: dict[str, np.ndarray], inputs: Sequence[TensorSignature]) -> Feeds:
    expected = {s.name for s in inputs}
    missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or extra:
        raise ReferenceDataError(
            f"the .npz needs one array per model input {sorted(expected)}; "
            f"missing {missing}, unknown {extra}"
        )
    feeds: Feeds = {}
    for signature in inputs:
        array = arrays[signature.name]
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2:
            raise ReferenceDataError(
                f"array {signature.name!r} must be 1-D or 2-D, got shape {list(array.shape)}"
            )
        width = _width(signature)
        if width != -1 and array.shape[1] != width:
            raise ReferenceDataError(
                f"array {signature.name!r} has {array.shape[1]} columns, "
                f"the input takes {width} (shape {list(signature.shape)})"
            )
        feeds[signature.name] = _fit(array, signature, f"array {signature.name!r}")
    if len({len(v) for v in feeds.values()}) != 1:
        rows = {k: len(v) for k, v in feeds.items()}
        raise ReferenceDataError(f"the arrays have different row counts: {rows}")
    return feeds


def _fit(block: np.ndarray, signature: TensorSignature, what: str) -> np.ndarray:
    """`block` ([N, W]) cast to the input's datatype and shape, or a clear error."""
    if len(block) == 0:
        raise ReferenceDataError("the reference data has no rows")
    datatype = signature.datatype
    kind = block.dtype.kind
    if datatype == "BYTES":
        if kind not in "USO":
            raise ReferenceDataError(f"{what} takes strings (BYTES) but the data holds numbers")
        values = block.astype(str).astype(object)
    elif kind not in "biuf":
        raise ReferenceDataError(f"{what} takes {datatype} numbers but the data holds strings")
    elif datatype.startswith("FP") or datatype == "BOOL":
        if datatype == "BOOL" and not np.isin(block, (0, 1)).all():
            raise ReferenceDataError(f"{what} is BOOL but the data holds values other than 0/1")
        values = block.astype(_NUMPY_TYPES[datatype])
    else:
        if kind == "f" and not (np.isfinite(block).all() and (block == np.round(block)).all()):
            raise ReferenceDataError(
                f"{what} takes {datatype} integers but the data holds fractions or missing values"
            )
        values = block.astype(_NUMPY_TYPES[datatype])
    return values.reshape(-1) if len(signature.shape) == 1 else values


def _from_csv(path: Path, inputs: Sequence[TensorSignature]) -> tuple[Feeds, dict[str, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceDataError(f"{path}: not a CSV file I can read: {exc}") from None
    if not rows:
        raise ReferenceDataError(f"{path}: the CSV file is empty")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ReferenceDataError(
                f"{path}: row {number} has {len(row)} cells, row 1 has {len(rows[0])}"
            )
    first = [cell.strip() for cell in rows[0]]
    input_names = [s.name for s in inputs]
    by_name = len(inputs) > 1 and sorted(first) == sorted(input_names)
    if by_name:
        order = [first.index(name) for name in input_names]
        rows = [[row[i] for i in order] for row in rows]
        first = input_names
    blocks = _column_blocks(len(first), inputs)
    numeric = np.zeros(len(first), dtype=bool)
    for signature, block in zip(inputs, blocks, strict=True):
        numeric[block] = signature.datatype != "BYTES"
    header = by_name or any(
        is_number and cell != "" and not _is_number(cell)
        for cell, is_number in zip(first, numeric, strict=True)
    )
    cells = np.array(rows[1:] if header else rows, dtype=str).reshape(-1, len(first))
    feeds = {
        signature.name: _fit(
            _parse_cells(cells[:, block], signature, path, block.start or 0, header),
            signature,
            f"input {signature.name!r}",
        )
        for signature, block in zip(inputs, blocks, strict=True)
    }
    if not header:
        return feeds, {}
    return feeds, {s.name: first[block] for s, block in zip(inputs, blocks, strict=True)}


def _parse_cells(
    cells: np.ndarray, signature: TensorSignature, path: Path, offset: int, header: bool
) -> np.ndarray:
    """CSV cells of one input as numbers (empty cells: NaN) or, for BYTES, as strings."""
    if signature.datatype == "BYTES":
        return cells
    try:
        return np.where(cells == "", "nan", cells).astype(np.float64)
    except ValueError:
        bad = np.argwhere(~np.vectorize(_is_number)(cells))[0]
        row, column, cell = (
            int(bad[0]) + 1 + int(header),
            offset + int(bad[1]) + 1,
            str(cells[tuple(bad)]),
        )
        raise ReferenceDataError(
            f"{path}: row {row}, column {column}: {cell!r} is not a number, "
            f"but input {signature.name!r} takes {signature.datatype}"
        ) from None


def _is_number(cell: str) -> bool:
    if cell.strip() == "":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True
