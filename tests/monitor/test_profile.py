"""Reference profiles: quantile bins, categories with an other bucket, missing rates, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import nested
from modelgate.monitor.profile import (
    FeatureProfile,
    ReferenceProfile,
    build_profile,
    profile_feature,
)


def test_numeric_bins_hold_about_equal_shares_of_the_reference(rng: np.random.Generator) -> None:
    values = rng.lognormal(size=20_000)
    feature = profile_feature("x", "x", None, values)
    assert feature.kind == "numeric"
    assert len(feature.edges) == 9
    assert len(feature.proportions) == 10
    assert sum(feature.proportions) == pytest.approx(1.0)
    assert np.allclose(feature.proportions, 0.1, atol=0.005)
    assert list(feature.edges) == sorted(feature.edges)
    assert np.mean(values < feature.edges[4]) == pytest.approx(0.5, abs=1e-3)
    assert (feature.min, feature.max) == (values.min(), values.max())
    assert feature.mean == pytest.approx(values.mean())
    assert feature.std == pytest.approx(values.std())
    assert feature.missing_rate == 0.0

    twenty = profile_feature("x", "x", None, values, bins=20)
    assert len(twenty.proportions) == 20
    assert np.allclose(twenty.proportions, 0.05, atol=0.005)


def test_outer_bins_are_open_ended(rng: np.random.Generator) -> None:
    feature = profile_feature("x", "x", None, rng.normal(size=1000))
    assert feature.min is not None and feature.max is not None
    counts, missing = feature.histogram(np.array([feature.min - 1e9, feature.max + 1e9, np.inf]))
    assert counts.tolist() == [1] + [0] * 8 + [2]
    assert missing == 0


def test_integer_valued_features_are_binned_by_value(rng: np.random.Generator) -> None:
    values = rng.permutation(np.repeat([0.0, 1.0, 2.0], [2500, 1000, 1500]))
    feature = profile_feature("x", "x", None, values)
    up = np.nextafter
    assert feature.edges == (0.0, up(0.0, 1), 1.0, up(1.0, 2), 2.0, up(2.0, 3))
    # Each value alone in its bin, and separate bins below, between and above the values.
    assert feature.proportions == pytest.approx([0.0, 0.5, 0.0, 0.2, 0.0, 0.3, 0.0])
    counts, _ = feature.histogram(np.array([-1.0, 0.5, 2.0, 2.5, 3.0]))
    assert counts.tolist() == [1, 0, 1, 0, 0, 1, 2]
    constant = profile_feature("c", "c", None, np.full(100, 3.5))
    assert constant.edges == (3.5, up(3.5, 4))
    assert constant.proportions == (0.0, 1.0, 0.0)
    many = profile_feature("n", "n", None, rng.integers(0, 1000, 5000).astype(float))
    assert len(many.edges) == 9  # too many levels: deciles, as for continuous values


def test_a_point_mass_gets_its_own_bin_with_bins_below_and_above(
    rng: np.random.Generator,
) -> None:
    """A feature that is 3.0 in 99.5% of rows: the old single edge [3.0] put the mode in the
    open top bin, so an upward move off 3.0 changed no bin count."""
    values = np.full(20_000, 3.0)
    values[:100] = rng.normal(3.0, 1.0, 100)
    feature = profile_feature("x", "x", None, values)
    assert 3.0 in feature.edges and np.nextafter(3.0, 4) in feature.edges
    for shift in (0.03, -0.03):
        counts, _ = feature.histogram(np.full(10, 3.0 + shift))
        at = feature.edges.index(3.0)
        assert counts[at + 1] == 0  # off the mass's own bin, whichever way it moved
    light = rng.normal(size=20_000)
    light[:500] = 0.25  # 2.5%: not a point mass, deciles only
    assert len(profile_feature("y", "y", None, light).edges) == 9


def test_nan_is_missing_and_proportions_cover_the_rest(rng: np.random.Generator) -> None:
    values = rng.normal(size=1000)
    values[rng.permutation(1000)[:250]] = np.nan
    feature = profile_feature("x", "x", None, values)
    assert feature.missing_rate == 0.25
    assert sum(feature.proportions) == pytest.approx(1.0)
    assert feature.mean == pytest.approx(np.nanmean(values))
    empty = profile_feature("x", "x", None, np.full(10, np.nan))
    assert (empty.missing_rate, empty.edges, empty.proportions) == (1.0, (), (0.0,))
    assert empty.mean is None


def test_categorical_features_keep_the_frequent_categories_and_an_other_bucket(
    rng: np.random.Generator,
) -> None:
    values = rng.choice([10, 20, 30, 40, 50], p=[0.4, 0.3, 0.2, 0.06, 0.04], size=10_000)
    feature = profile_feature("c", "c", None, values, max_categories=3)
    assert feature.kind == "categorical"
    assert feature.categories == (10, 20, 30)
    expected = [np.mean(values == c) for c in (10, 20, 30)] + [np.mean(values >= 40)]
    assert feature.proportions == pytest.approx(expected)
    assert sum(feature.proportions) == pytest.approx(1.0)
    assert feature.mean is None
    # Live values never seen in the reference land in "other".
    counts, _ = feature.histogram(np.array([10, 10, 30, 99, -1]))
    assert counts.tolist() == [2, 0, 1, 2]


def test_string_categories_treat_empty_cells_as_missing() -> None:
    values = np.array(["red", "blue", "", "red", "green", "red", "", "blue"])
    feature = profile_feature("colour", "colour", None, values)
    assert feature.categories == ("red", "blue", "green")
    assert feature.proportions == pytest.approx([0.5, 2 / 6, 1 / 6, 0.0])
    assert feature.missing_rate == 0.25
    objects = np.array(["red", None, "blue"], dtype=object)
    counts, missing = feature.histogram(objects)
    assert (counts.tolist(), missing) == ([1, 1, 0, 0], 1)
    assert profile_feature("b", "b", None, np.array([b"x", b"y", b"x"])).categories == ("x", "y")


def test_build_profile_names_features_by_tensor_and_column(rng: np.random.Generator) -> None:
    inputs = {
        "dense": rng.normal(size=(200, 3)).astype(np.float32),
        "age": rng.integers(18, 30, size=(200, 1)),
        "flag": rng.integers(0, 2, size=200).astype(bool),
    }
    outputs = {"score": rng.random(size=(200, 1)).astype(np.float32)}
    profile = build_profile(inputs, outputs, names={"dense": ["a", "b", "c"]})
    assert profile.rows == 200
    assert [(f.name, f.tensor, f.column, f.kind) for f in profile.inputs] == [
        ("a", "dense", 0, "numeric"),
        ("b", "dense", 1, "numeric"),
        ("c", "dense", 2, "numeric"),
        ("age", "age", 0, "categorical"),
        ("flag", "flag", None, "categorical"),
    ]
    assert [(f.name, f.column) for f in profile.outputs] == [("score", 0)]
    # A feature finds its own values in a batch of its tensor.
    b = profile.inputs[1]
    assert np.array_equal(b.values_of(inputs["dense"]), inputs["dense"][:, 1])
    assert set(profile.inputs[4].categories) == {True, False}
    without_names = build_profile(inputs, outputs)
    assert [f.name for f in without_names.inputs[:3]] == ["dense[0]", "dense[1]", "dense[2]"]


def test_build_profile_refuses_tensors_of_different_lengths(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        build_profile({"a": rng.normal(size=(5, 2))}, {"y": rng.normal(size=4)})
    with pytest.raises(ValueError, match="2 names for 3 columns"):
        build_profile({"a": rng.normal(size=(5, 3))}, {}, names={"a": ["x", "y"]})


def test_the_json_form_round_trips_through_text(rng: np.random.Generator) -> None:
    profile = build_profile(
        {"x": rng.normal(size=(100, 2)), "s": np.array(["a", "b"] * 50)},
        {"label": rng.integers(0, 3, size=100)},
    )
    data = json.loads(json.dumps(profile.to_json()))
    assert data["format"] == 1
    assert set(data["inputs"][0]) == {
        "name", "tensor", "column", "kind", "missing_rate", "proportions",
        "edges", "min", "max", "mean", "std",
    }  # fmt: skip
    assert set(data["inputs"][2]) == {
        "name", "tensor", "column", "kind", "missing_rate", "proportions", "categories",
    }  # fmt: skip
    assert ReferenceProfile.from_json(data) == profile


def test_malformed_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported reference profile format"):
        ReferenceProfile.from_json({"rows": 3})
    with pytest.raises(ValueError, match="malformed"):
        ReferenceProfile.from_json({"format": 1, "rows": 3})
    feature = {"name": "x", "tensor": "x", "kind": "numeric", "missing_rate": 0}
    with pytest.raises(ValueError, match="3 proportions for 2 bins"):
        FeatureProfile.from_json({**feature, "edges": [0.0], "proportions": [0.5, 0.5, 0]})
    with pytest.raises(ValueError, match="unknown kind"):
        FeatureProfile.from_json({**feature, "kind": "ordinal", "proportions": [1]})
    # A client's profile: values nested past repr's reach are refused, never formatted.
    deep = nested(2000)
    with pytest.raises(ValueError, match="unknown kind"):
        FeatureProfile.from_json({**feature, "kind": deep, "proportions": [1]})
    with pytest.raises(ValueError, match="name and tensor must be strings"):
        FeatureProfile.from_json({**feature, "name": deep, "proportions": [1]})
    categorical = {**feature, "kind": "categorical", "proportions": [0.5, 0.5]}
    with pytest.raises(ValueError, match="categories must be numbers or strings"):
        FeatureProfile.from_json({**categorical, "categories": [deep]})
    with pytest.raises(ValueError, match="unsupported reference profile format"):
        ReferenceProfile.from_json({"format": deep})


def test_a_calibration_round_trips_and_leaves_the_fingerprint_alone(
    rng: np.random.Generator,
) -> None:
    """Profiles stored before calibration existed still load; a calibrated one keeps its
    thresholds through JSON, and sketches of either merge (the same bins)."""
    from modelgate.monitor.calibration import with_calibration
    from modelgate.monitor.sketch import profile_fingerprint

    old = build_profile({"x": rng.normal(size=(20_000, 2))}, {})
    stored = old.to_json()
    assert "calibration" not in stored and ReferenceProfile.from_json(stored) == old
    calibrated = with_calibration(old, window_rows=5000, false_alarm_rate=1e-4, epsilon=1e-4)
    assert calibrated.calibration is not None
    assert len(calibrated.calibration.thresholds) == 2
    again = ReferenceProfile.from_json(json.loads(json.dumps(calibrated.to_json())))
    assert again == calibrated
    assert profile_fingerprint(calibrated) == profile_fingerprint(old)
    assert (
        with_calibration(calibrated, window_rows=5000, false_alarm_rate=1e-4, epsilon=1e-4)
        is calibrated
    )  # nothing to compute
    bigger = with_calibration(calibrated, window_rows=50_000, false_alarm_rate=1e-4, epsilon=1e-4)
    assert bigger.calibration is not None and bigger.calibration.window_rows == 50_000
    # Ten times the window: the noise falls by about half, far beyond the fit's own few %.
    pairs = zip(calibrated.calibration.thresholds, bigger.calibration.thresholds, strict=True)
    for wide, narrow in pairs:
        for name in ("psi", "js", "ks", "wasserstein"):
            assert (narrow[name] or 0.0) < (wide[name] or 0.0)
    broken = calibrated.to_json()
    broken["calibration"]["thresholds"].pop()
    with pytest.raises(ValueError, match="does not cover every feature"):
        ReferenceProfile.from_json(broken)
