"""Reference profiles: what each input feature and output column looked like at training time.

A profile is built once, at registration, from a reference sample (training or validation
data) and the model's outputs on it; the drift monitor later compares live batches with it.
Both sides bin values with `FeatureProfile.histogram`, so they can never disagree on a bin.

Numeric features: `edges` are the reference quantiles (deduplicated), and around each point
mass (a value holding a large share of the reference, or every value of an integer-valued
feature with few of them) the edges v and the next float above v, so that v has a bin of its
own (`numeric_edges`); the bins are (-inf, e0), [e0, e1), ..., [e_last, +inf), open at both
ends so no live value falls outside. Categorical features (integers, booleans, strings): the most
frequent categories, then one "other" bucket for the rest and for anything unseen later.
Proportions are over the non-missing values; `missing_rate` is over all rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FORMAT = 1
DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 20
# A value holding this share of a numeric reference gets a bin of its own (`numeric_edges`).
POINT_MASS_SHARE = 0.05
_BIN_BLOCK = 1 << 22  # comparisons per block when binning big samples (bytes of booleans)

Kind = Literal["numeric", "categorical"]
Category = int | float | str | bool


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """One column of one tensor: its bins (or categories) and summary statistics.

    `tensor` and `column` locate the values in a batch: column `column` of a 2-D tensor,
    or the whole tensor when `column` is None (a 1-D tensor).
    """

    name: str
    tensor: str
    column: int | None
    kind: Kind
    # Numeric: len(edges) + 1 bins. Categorical: len(categories) + 1, the last is "other".
    proportions: tuple[float, ...]
    missing_rate: float
    edges: tuple[float, ...] = ()
    categories: tuple[Category, ...] = ()
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None

    def values_of(self, tensor: np.ndarray) -> np.ndarray:
        """This feature's values in a batch of its tensor ([N] or [N, F, ...])."""
        if self.column is None:
            return tensor.reshape(-1)
        return tensor.reshape(tensor.shape[0], -1)[:, self.column]

    def histogram(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """(count per bin, aligned with `proportions`; count of missing values)."""
        values = np.asarray(values).reshape(-1)
        if self.kind == "numeric":
            numbers = values.astype(np.float64, copy=False)
            missing = np.isnan(numbers)
            edges = np.asarray(self.edges, dtype=np.float64).reshape(-1, 1)
            bins = numeric_bins(edges, numbers[~missing].reshape(-1, 1))
            return np.bincount(bins.reshape(-1), minlength=len(self.edges) + 1), int(missing.sum())
        values, missing_count = _drop_missing_categories(values)
        other = len(self.categories)
        uniques, inverse = np.unique(values, return_inverse=True)
        # One dict lookup per distinct value (not per row) maps values to bucket numbers.
        index = {category: i for i, category in enumerate(self.categories)}
        buckets = np.array([index.get(u, other) for u in uniques.tolist()], dtype=np.intp)
        return np.bincount(buckets[inverse.reshape(-1)], minlength=other + 1), missing_count

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "tensor": self.tensor,
            "column": self.column,
            "kind": self.kind,
            "missing_rate": self.missing_rate,
            "proportions": list(self.proportions),
        }
        if self.kind == "numeric":
            data["edges"] = list(self.edges)
            data.update(min=self.min, max=self.max, mean=self.mean, std=self.std)
        else:
            data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureProfile:
        """The feature in `data`; ValueError (or KeyError, TypeError) if it is not one.
        Messages never format a value that is not a number or a name: a profile may come
        from a client, and a value nested deep enough makes repr recurse past the limit."""
        name, tensor, kind = data["name"], data["tensor"], data["kind"]
        if not isinstance(name, str) or not isinstance(tensor, str):
            raise ValueError("a feature's name and tensor must be strings")
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"feature {name[:80]!r}: unknown kind (numeric or categorical)")
        categories = tuple(data.get("categories", ()))
        if not all(isinstance(c, int | float | str) for c in categories):
            raise ValueError(f"feature {name[:80]!r}: categories must be numbers or strings")
        feature = cls(
            name=name,
            tensor=tensor,
            column=None if data.get("column") is None else int(data["column"]),
            kind=kind,
            proportions=tuple(float(p) for p in data["proportions"]),
            missing_rate=float(data["missing_rate"]),
            edges=tuple(float(e) for e in data.get("edges", ())),
            categories=categories,
            min=_optional_float(data.get("min")),
            max=_optional_float(data.get("max")),
            mean=_optional_float(data.get("mean")),
            std=_optional_float(data.get("std")),
        )
        expected = len(feature.edges if kind == "numeric" else feature.categories) + 1
        if len(feature.proportions) != expected:
            raise ValueError(
                f"feature {feature.name!r}: {len(feature.proportions)} proportions "
                f"for {expected} bins"
            )
        return feature


@dataclass(frozen=True, slots=True)
class Calibration:
    """Thresholds calibrated to a reference (`monitor.calibration.calibrate`): per feature
    (inputs then outputs), each statistic's value that an in-distribution window of
    `window_rows` rows exceeds with probability `false_alarm_rate` / the statistics scored.

    `min_reference_rows` is the smallest reference with which a 0.5-sd mean shift of every
    numeric input is still flagged (None when no reference size would do, for windows this
    small); `resamples` and `seed` make it reproducible.
    """

    window_rows: int
    false_alarm_rate: float
    epsilon: float
    resamples: int
    seed: int
    thresholds: tuple[Mapping[str, float | None], ...]
    min_reference_rows: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "window_rows": self.window_rows,
            "false_alarm_rate": self.false_alarm_rate,
            "epsilon": self.epsilon,
            "resamples": self.resamples,
            "seed": self.seed,
            "min_reference_rows": self.min_reference_rows,
            "thresholds": [dict(t) for t in self.thresholds],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        least = data.get("min_reference_rows")
        return cls(
            window_rows=int(data["window_rows"]),
            false_alarm_rate=float(data["false_alarm_rate"]),
            epsilon=float(data["epsilon"]),
            resamples=int(data["resamples"]),
            seed=int(data["seed"]),
            thresholds=tuple(
                {str(k): _optional_float(v) for k, v in t.items()} for t in data["thresholds"]
            ),
            min_reference_rows=None if least is None else int(least),
        )


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """The reference sample's profile: every input feature and every output column, and the
    thresholds calibrated to it (absent in profiles stored before calibration existed)."""

    rows: int
    inputs: tuple[FeatureProfile, ...]
    outputs: tuple[FeatureProfile, ...]
    calibration: Calibration | None = None

    def features(self) -> tuple[FeatureProfile, ...]:
        """Inputs then outputs."""
        return self.inputs + self.outputs

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "rows": self.rows,
            "inputs": [f.to_json() for f in self.inputs],
            "outputs": [f.to_json() for f in self.outputs],
        }
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """The profile in `data`; ValueError if it is not one this code understands."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"unsupported reference profile format (this code reads {FORMAT})")
            calibration = data.get("calibration")
            profile = cls(
                rows=int(data["rows"]),
                inputs=tuple(FeatureProfile.from_json(f) for f in data["inputs"]),
                outputs=tuple(FeatureProfile.from_json(f) for f in data["outputs"]),
                calibration=None if calibration is None else Calibration.from_json(calibration),
            )
            if profile.calibration and len(profile.calibration.thresholds) != len(
                profile.features()
            ):
                raise ValueError("the calibration does not cover every feature")
            return profile
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed reference profile: {exc!r}") from None


def numeric_bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin numbers of `values` [N, F] against per-column `edges` [E, F], column by column.

    Bin i of column j is [edges[i-1, j], edges[i, j]), open at both ends: the number of edges
    at or below the value (`searchsorted(..., "right")`). Columns with fewer edges pad theirs
    with NaN, which no value reaches; NaN values land in bin 0, so callers set them apart.
    One broadcast comparison over the whole block, so many columns cost about one call: the
    reference profile and the live sketches both bin through here and cannot disagree. The
    edges lead the comparison's axes, so the count adds whole [N, F] slabs (2.5x faster than
    reducing over an inner axis).
    """
    depth = edges.shape[0]
    counter = np.uint8 if depth < 256 else np.intp
    rows = max(1, _BIN_BLOCK // max(1, depth * values.shape[1]))
    if values.shape[0] <= rows:
        above = values[None, :, :] >= edges[:, None, :]
        return np.add.reduce(above, axis=0, dtype=counter).astype(np.intp)
    return np.concatenate(
        [numeric_bins(edges, values[i : i + rows]) for i in range(0, len(values), rows)]
    )


def build_profile(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    names: Mapping[str, Sequence[str]] | None = None,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> ReferenceProfile:
    """Profile a reference sample: tensors by name, each [N] or [N, ...], the same N.

    A tensor [N, F] gives F features named `tensor[0]`... unless `names[tensor]` names
    them; a tensor [N] or [N, 1] gives one feature named like the tensor.
    """
    tensors = list(inputs.values()) + list(outputs.values())
    rows = {int(np.shape(t)[0]) if np.ndim(t) else -1 for t in tensors}
    if len(rows) != 1 or -1 in rows:
        raise ValueError(f"every tensor needs the same number of rows, got {sorted(rows)}")
    names = names or {}
    return ReferenceProfile(
        rows=rows.pop(),
        inputs=_profile_tensors(inputs, names, bins, max_categories),
        outputs=_profile_tensors(outputs, names, bins, max_categories),
    )


def profile_feature(
    name: str,
    tensor: str,
    column: int | None,
    values: np.ndarray,
    *,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> FeatureProfile:
    """Profile one column of values: numeric for floats, categorical for the rest (an
    integer-valued float column of at most `max_categories` values is binned by value)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    values = np.asarray(values).reshape(-1)
    kind: Kind = "numeric" if values.dtype.kind == "f" else "categorical"
    if kind == "numeric":
        numbers = values.astype(np.float64)
        finite = numbers[np.isfinite(numbers)]
        profile = FeatureProfile(name, tensor, column, kind, (), 0.0)
        if finite.size:
            profile = dataclasses.replace(
                profile,
                edges=numeric_edges(finite, bins, max_categories),
                min=float(finite.min()),
                max=float(finite.max()),
                mean=float(finite.mean()),
                std=float(finite.std()),
            )
    else:
        present, _ = _drop_missing_categories(values)
        uniques, counts = np.unique(present, return_counts=True)
        # Most frequent first; ties keep the sorted order, so the choice is deterministic.
        top = np.argsort(-counts, kind="stable")[:max_categories]
        categories = tuple(uniques[top].tolist())
        profile = FeatureProfile(name, tensor, column, kind, (), 0.0, categories=categories)
    counts, missing = profile.histogram(values)
    total = int(counts.sum())
    proportions = tuple(float(c) / total if total else 0.0 for c in counts)
    missing_rate = missing / values.size if values.size else 0.0
    return dataclasses.replace(profile, proportions=proportions, missing_rate=missing_rate)


def numeric_edges(finite: np.ndarray, bins: int, max_levels: int) -> tuple[float, ...]:
    """Bin edges for a numeric feature's finite reference values.

    Quantile edges (observed values, not interpolated) give bins of about equal shares. A
    value holding at least `POINT_MASS_SHARE` of the reference is a point mass, and so is
    every value of an integer-valued feature with at most `max_levels` distinct values: each
    gets the edges v and the next float above it, so the bin [v, v+) holds v alone and any
    move off it, up or down, lands in another bin. Without this, a value equal to the top
    edge shares the open top bin with everything above it, and an upward shift of a
    near-constant or count feature goes unseen.
    """
    levels = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.quantile(finite, levels, method="inverted_cdf")
    values, counts = np.unique(finite, return_counts=True)
    if len(values) <= max_levels and np.array_equal(values, np.round(values)):
        masses = values
    else:
        masses = values[counts >= POINT_MASS_SHARE * len(finite)]
    if masses.size:
        edges = np.concatenate([edges, masses, np.nextafter(masses, np.inf)])
    return tuple(float(e) for e in np.unique(edges))


def _profile_tensors(
    tensors: Mapping[str, np.ndarray],
    names: Mapping[str, Sequence[str]],
    bins: int,
    max_categories: int,
) -> tuple[FeatureProfile, ...]:
    features: list[FeatureProfile] = []
    for tensor, values in tensors.items():
        array = np.asarray(values)
        width = int(np.prod(array.shape[1:]))
        given = list(names.get(tensor, ()))
        if given and len(given) != width:
            raise ValueError(f"{tensor}: {len(given)} names for {width} columns")
        labels = given or ([tensor] if width == 1 else [f"{tensor}[{j}]" for j in range(width)])
        columns: list[tuple[str, int | None]] = (
            [(labels[0], None)] if array.ndim == 1 else list(zip(labels, range(width), strict=True))
        )
        flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array
        for name, column in columns:
            data = flat if column is None else flat[:, column]
            features.append(
                profile_feature(
                    name, tensor, column, data, bins=bins, max_categories=max_categories
                )
            )
    return tuple(features)


def _drop_missing_categories(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The values without missing ones (None, empty strings), and how many were missing.

    Byte strings are decoded as UTF-8 so that categories are JSON strings either way.
    """
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8", "replace")
    if values.dtype.kind == "U":
        missing = values == ""
    elif values.dtype.kind == "O":
        missing = (values == None) | (values == "")  # noqa: E711 (elementwise)
    else:
        return values, 0
    return values[~missing], int(missing.sum())


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
