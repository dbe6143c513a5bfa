"""Batch sketches: what one batch's inputs and outputs looked like, as plain mergeable counts.

A `Sketcher` is built once per model version from its `ReferenceProfile` and runs on the
serving path, once per ONNX Runtime batch, so it works a tensor at a time with NumPy and
never loops over rows: the numeric columns of a tensor are binned together (one comparison
per edge over the whole [N, F] block, then one `bincount` with per-column offsets), and
categorical columns look their values up in the sorted reference categories.

A `Sketch` holds only counts that add: bin counts per feature (aligned with the profile's
proportions), and per feature the missing values (NaN, None, empty strings, or a column the
batch lacked), +Inf and -Inf, values below the reference minimum and above its maximum, and
invalid values (strings where a number belongs, values a categorical feature cannot
compare). Unseen categories land in a categorical feature's last bin ("other"), as in the
profile. Sketches are merged into windows by the monitor, possibly from other processes:
`to_bytes`/`from_bytes` carry them, and the profile fingerprint inside makes a merge of
sketches built against different profiles fail instead of adding unrelated counts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelgate.monitor.profile import FeatureProfile, ReferenceProfile, numeric_bins

# Columns of `Sketch.flags`, one row per feature (inputs then outputs, as in the profile).
FLAGS = ("missing", "pos_inf", "neg_inf", "below_min", "above_max", "invalid")
MISSING, POS_INF, NEG_INF, BELOW_MIN, ABOVE_MAX, INVALID = range(len(FLAGS))

_SHALLOW = 16  # edges of a feature binned like a continuous one (deciles, a point mass or two)
_MAGIC = b"MGSK1"
_HEADER = struct.Struct("<5sI")  # magic, header length; then the JSON header, then the counts


def profile_fingerprint(profile: ReferenceProfile) -> str:
    """A short hash of everything that decides how values are binned."""
    data = profile.to_json()
    data.pop("calibration", None)  # thresholds, not bins: sketches stay mergeable across it
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SketchMismatch(ValueError):
    """Two sketches (or a sketch and a monitor) were built against different profiles."""


@dataclass(slots=True)
class Sketch:
    """Counts from one or more batches of one model version; `+` merges them."""

    fingerprint: str
    rows: int
    bins: np.ndarray  # int64, every feature's bins back to back (see `Sketcher.bin_slices`)
    flags: np.ndarray  # int64 [features, len(FLAGS)]
    unprofiled: int = 0  # values in tensors or columns the profile does not know
    first_at: float = field(default=float("inf"))  # wall-clock bounds of the batches
    last_at: float = field(default=float("-inf"))

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch holding both; SketchMismatch if they come from different profiles."""
        if other.fingerprint != self.fingerprint or other.bins.shape != self.bins.shape:
            raise SketchMismatch(
                f"sketch for profile {other.fingerprint} cannot merge into {self.fingerprint}"
            )
        return Sketch(
            self.fingerprint,
            self.rows + other.rows,
            self.bins + other.bins,
            self.flags + other.flags,
            self.unprofiled + other.unprofiled,
            min(self.first_at, other.first_at),
            max(self.last_at, other.last_at),
        )

    __add__ = merge

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (
            (self.fingerprint, self.rows, self.unprofiled, self.first_at, self.last_at)
            == (other.fingerprint, other.rows, other.unprofiled, other.first_at, other.last_at)
            and np.array_equal(self.bins, other.bins)
            and np.array_equal(self.flags, other.flags)
        )

    def to_bytes(self) -> bytes:
        """A compact binary form for another process: header JSON, then little-endian int64."""
        header = json.dumps(
            {
                "fingerprint": self.fingerprint,
                "rows": self.rows,
                "unprofiled": self.unprofiled,
                "bins": len(self.bins),
                "features": self.flags.shape[0],
                "first_at": self.first_at if np.isfinite(self.first_at) else None,
                "last_at": self.last_at if np.isfinite(self.last_at) else None,
            }
        ).encode()
        counts = np.concatenate([self.bins, self.flags.reshape(-1)]).astype("<i8")
        return _HEADER.pack(_MAGIC, len(header)) + header + counts.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Sketch:
        """The sketch `to_bytes` wrote; ValueError if `data` is not one."""
        try:
            magic, length = _HEADER.unpack_from(data)
            if magic != _MAGIC:
                raise ValueError(f"not a sketch (magic {magic!r})")
            header = json.loads(data[_HEADER.size : _HEADER.size + length])
            counts = np.frombuffer(data, "<i8", offset=_HEADER.size + length).astype(np.int64)
            n_bins, n_features = int(header["bins"]), int(header["features"])
            if counts.size != n_bins + n_features * len(FLAGS):
                raise ValueError(f"sketch holds {counts.size} counts, its header says otherwise")
            first, last = header["first_at"], header["last_at"]
            return cls(
                fingerprint=str(header["fingerprint"]),
                rows=int(header["rows"]),
                bins=counts[:n_bins],
                flags=counts[n_bins:].reshape(n_features, len(FLAGS)),
                unprofiled=int(header["unprofiled"]),
                first_at=float("inf") if first is None else float(first),
                last_at=float("-inf") if last is None else float(last),
            )
        except (struct.error, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed sketch: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class _NumericBlock:
    """The numeric features read from one tensor, binned together."""

    tensor: str
    columns: np.ndarray  # column of each feature in the tensor's [N, -1] view
    features: np.ndarray  # their indices in the profile's feature list
    edges: np.ndarray  # float64 [E_max, F], NaN-padded (compares false)
    offsets: np.ndarray  # where each feature's bins start in `Sketch.bins`
    low: np.ndarray  # reference min per feature (NaN when unknown)
    high: np.ndarray
    in_order: bool  # columns are 0, 1, 2...: a tensor of exactly these columns needs no gather


@dataclass(frozen=True, slots=True)
class _CategoricalFeature:
    index: int
    feature: FeatureProfile
    offset: int
    sorted_categories: np.ndarray | None  # numeric categories, sorted, for the fast path
    order: np.ndarray | None  # bucket of each sorted category


class Sketcher:
    """Turns batches of one model version into `Sketch`es against its reference profile.

    Stateless after construction, so worker threads may share one.
    """

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.features = profile.features()
        self.fingerprint = profile_fingerprint(profile)
        sizes = [len(f.proportions) for f in self.features]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self.total_bins = int(starts[-1])
        self.bin_slices = tuple(slice(int(a), int(b)) for a, b in itertools.pairwise(starts))
        self.last_bins = starts[1:] - 1  # each feature's last bin ("other" for categories)
        self._known_width: dict[str, int] = {}
        numeric: dict[tuple[str, bool], list[int]] = {}
        self._categorical: list[_CategoricalFeature] = []
        for i, f in enumerate(self.features):
            column = f.column or 0
            width = self._known_width.get(f.tensor, 0)
            self._known_width[f.tensor] = max(width, column + 1)
            if f.kind == "numeric":
                # Every column of a block is compared with its deepest edge list: features
                # binned by value (up to ~40 edges) get a block of their own.
                numeric.setdefault((f.tensor, len(f.edges) > _SHALLOW), []).append(i)
            else:
                self._categorical.append(_categorical(i, f, int(starts[i])))
        self._numeric = [self._block(t, ix, starts) for (t, _), ix in numeric.items()]

    def _block(self, tensor: str, indices: list[int], starts: np.ndarray) -> _NumericBlock:
        features = [self.features[i] for i in indices]
        depth = max((len(f.edges) for f in features), default=0)
        edges = np.full((depth, len(features)), np.nan)
        for j, f in enumerate(features):
            edges[: len(f.edges), j] = f.edges
        return _NumericBlock(
            tensor=tensor,
            columns=np.array([f.column or 0 for f in features], dtype=np.intp),
            features=np.array(indices, dtype=np.intp),
            edges=edges,
            offsets=starts[indices],
            low=np.array([np.nan if f.min is None else f.min for f in features]),
            high=np.array([np.nan if f.max is None else f.max for f in features]),
            in_order=[f.column or 0 for f in features] == list(range(len(features))),
        )

    def empty(self) -> Sketch:
        """A sketch of no rows: the identity of `merge`."""
        return Sketch(
            self.fingerprint,
            0,
            np.zeros(self.total_bins, dtype=np.int64),
            np.zeros((len(self.features), len(FLAGS)), dtype=np.int64),
        )

    def sketch(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        *,
        at: float | None = None,
    ) -> Sketch:
        """Count one batch: tensors by name, each [N, ...] with the same N.

        Never raises on bad values: they are counted (see the module docstring). Tensors
        the profile does not know are counted in `unprofiled`.
        """
        tensors = {**inputs, **outputs}
        rows = _rows(tensors)
        bins = np.zeros(self.total_bins + 1, dtype=np.int64)  # the last slot takes NaNs
        flags = np.zeros((len(self.features), len(FLAGS)), dtype=np.int64)
        unprofiled = 0
        flat: dict[str, np.ndarray] = {}
        for name, tensor in tensors.items():
            array = np.asarray(tensor)
            width = self._known_width.get(name)
            if width is None or array.ndim == 0 or array.shape[0] != rows:
                unprofiled += array.size  # unknown, or not one value per row: not comparable
                continue
            view = array.reshape(rows, math.prod(array.shape[1:]))
            unprofiled += max(view.shape[1] - width, 0) * rows
            flat[name] = view
        for block in self._numeric:
            self._count_numeric(block, flat.get(block.tensor), rows, bins, flags)
        for cat in self._categorical:
            values = flat.get(cat.feature.tensor)
            column = cat.feature.column or 0
            if values is None or values.shape[1] <= column:
                flags[cat.index, MISSING] += rows
                continue
            _count_categorical(cat, values[:, column], bins, flags)
        stamp = float("inf") if at is None else at
        return Sketch(
            self.fingerprint,
            rows,
            bins[:-1],
            flags,
            unprofiled,
            stamp,
            float("-inf") if at is None else at,
        )

    def _count_numeric(
        self,
        block: _NumericBlock,
        view: np.ndarray | None,
        rows: int,
        bins: np.ndarray,
        flags: np.ndarray,
    ) -> None:
        columns, features = block.columns, block.features
        if view is None:
            flags[features, MISSING] += rows
            return
        present = columns < view.shape[1]
        if not present.all():  # a narrower tensor than the reference: those columns are missing
            flags[features[~present], MISSING] += rows
            block = _subset(block, present)
            columns, features = block.columns, block.features
        whole = len(columns) == view.shape[1] and block.in_order
        values, invalid = _as_float(view if whole else view[:, columns])
        index = numeric_bins(block.edges, values) + block.offsets
        # One check covers the usual case: every value finite and within the reference range.
        inside = (values >= block.low) & (values <= block.high)
        if not inside.all():
            nan = np.isnan(values)
            index[nan] = len(bins) - 1
            flags[features, MISSING] += np.count_nonzero(nan & ~invalid, axis=0)
            flags[features, INVALID] += np.count_nonzero(invalid, axis=0)
            flags[features, POS_INF] += np.count_nonzero(values == np.inf, axis=0)
            flags[features, NEG_INF] += np.count_nonzero(values == -np.inf, axis=0)
            flags[features, BELOW_MIN] += np.count_nonzero(values < block.low, axis=0)
            flags[features, ABOVE_MAX] += np.count_nonzero(values > block.high, axis=0)
        bins += np.bincount(index.reshape(-1), minlength=len(bins))


def _categorical(index: int, feature: FeatureProfile, offset: int) -> _CategoricalFeature:
    categories = feature.categories
    numeric = all(isinstance(c, int | float) for c in categories)  # bools are ints
    if not numeric or not categories:
        return _CategoricalFeature(index, feature, offset, None, None)
    array = np.array(categories, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    return _CategoricalFeature(index, feature, offset, array[order], order.astype(np.intp))


def _count_categorical(
    cat: _CategoricalFeature, values: np.ndarray, bins: np.ndarray, flags: np.ndarray
) -> None:
    width = len(cat.feature.proportions)
    if cat.sorted_categories is not None and values.dtype.kind in "biuf":
        # Numbers against numeric categories: a sorted look-up, no per-value Python.
        numbers = values.astype(np.float64, copy=False)
        sorted_categories = cat.sorted_categories
        at = np.minimum(np.searchsorted(sorted_categories, numbers), len(sorted_categories) - 1)
        hit = sorted_categories[at] == numbers
        buckets = np.where(hit, cat.order[at] if cat.order is not None else at, width - 1)
        bins[cat.offset : cat.offset + width] += np.bincount(buckets, minlength=width)
        return
    try:
        counts, missing = cat.feature.histogram(values)
    except (TypeError, ValueError):  # values that cannot even be compared with each other
        flags[cat.index, INVALID] += len(values)
        return
    bins[cat.offset : cat.offset + width] += counts
    flags[cat.index, MISSING] += missing


def _as_float(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 values and a mask of the ones that were not numbers (now NaN)."""
    if values.dtype.kind in "biuf":
        return values.astype(np.float64, copy=False), np.zeros(values.shape, dtype=bool)
    try:
        return values.astype(np.float64), np.zeros(values.shape, dtype=bool)
    except (TypeError, ValueError):
        pass
    # Strings where numbers belong: a per-value conversion, but only on this bad-input path.
    numbers = np.frompyfunc(_to_float, 1, 1)(values).astype(np.float64)
    texts = np.frompyfunc(_is_text, 1, 1)(values).astype(bool)
    return numbers, texts & np.isnan(numbers)


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _is_text(value: Any) -> bool:
    return value is not None and value != "" and value != b""


def _subset(block: _NumericBlock, keep: np.ndarray) -> _NumericBlock:
    return _NumericBlock(
        block.tensor,
        block.columns[keep],
        block.features[keep],
        block.edges[:, keep],
        block.offsets[keep],
        block.low[keep],
        block.high[keep],
        False,
    )


def _rows(tensors: Mapping[str, np.ndarray]) -> int:
    for tensor in tensors.values():
        shape = np.shape(tensor)
        return int(shape[0]) if shape else 1
    return 0
