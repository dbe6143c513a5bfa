"""Batch sketches: the same bins as the profile, mergeable counts, bytes, bad input counted.

Cost (python -m loadtest.sketch_cost on the 2-core machine, shared): about 25-30 µs for a
1-row batch of the light model and 55-65 µs for a 64-row batch (32 inputs, 2 probabilities
and the label).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from loadtest.models import build_light
from modelgate.monitor.profile import build_profile
from modelgate.monitor.sketch import (
    ABOVE_MAX,
    BELOW_MIN,
    INVALID,
    MISSING,
    NEG_INF,
    POS_INF,
    Sketch,
    Sketcher,
    SketchMismatch,
)


@pytest.fixture(scope="module")
def light() -> ort.InferenceSession:
    return ort.InferenceSession(build_light(), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


@pytest.fixture
def sketcher(light: ort.InferenceSession, rng: np.random.Generator) -> Sketcher:
    x = rng.normal(size=(5000, 32)).astype(np.float32)
    return Sketcher(build_profile({"input": x}, run(light, x)))


def test_bins_agree_with_the_profile_histogram(
    light: ort.InferenceSession, sketcher: Sketcher, rng: np.random.Generator
) -> None:
    x = rng.normal(scale=1.5, size=(300, 32)).astype(np.float32)
    x[:5, 3] = [sketcher.features[3].edges[i] for i in range(5)]  # values exactly on edges
    outputs = run(light, x)
    sketch = sketcher.sketch({"input": x}, outputs)
    tensors = {"input": x, **outputs}
    assert sketch.rows == 300
    assert [f.name for f in sketcher.features][-3:] == [
        "label",
        "probabilities[0]",
        "probabilities[1]",
    ]
    for feature, part in zip(sketcher.features, sketcher.bin_slices, strict=True):
        counts, missing = feature.histogram(feature.values_of(tensors[feature.tensor]))
        assert sketch.bins[part].tolist() == counts.tolist(), feature.name
        assert missing == 0
    assert not sketch.flags[:, [MISSING, POS_INF, NEG_INF, INVALID]].any()


def test_merging_adds_counts_in_any_order(
    light: ort.InferenceSession, sketcher: Sketcher, rng: np.random.Generator
) -> None:
    parts = []
    for rows in (1, 17, 64):
        x = rng.normal(size=(rows, 32)).astype(np.float32)
        parts.append(sketcher.sketch({"input": x}, run(light, x), at=float(rows)))
    a, b, c = parts
    assert (a + b) + c == a + (b + c) == c.merge(b).merge(a)
    whole = a + b + c
    assert whole.rows == 82
    assert (whole.first_at, whole.last_at) == (1.0, 64.0)
    assert sketcher.empty() + a == a
    x = np.concatenate([rng.normal(size=(10, 32)), rng.normal(size=(20, 32))]).astype(np.float32)
    together = sketcher.sketch({"input": x}, run(light, x))
    apart = sketcher.sketch({"input": x[:10]}, run(light, x[:10])) + sketcher.sketch(
        {"input": x[10:]}, run(light, x[10:])
    )
    assert np.array_equal(together.bins, apart.bins)


def test_bytes_round_trip_and_other_profiles_are_refused(
    light: ort.InferenceSession, sketcher: Sketcher, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(64, 32)).astype(np.float32)
    x[0, 0] = np.nan
    sketch = sketcher.sketch({"input": x}, run(light, x), at=12.5)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch
    assert Sketch.from_bytes(sketcher.empty().to_bytes()) == sketcher.empty()
    with pytest.raises(ValueError, match="not a sketch"):
        Sketch.from_bytes(b"XXXXX" + sketch.to_bytes()[5:])
    with pytest.raises(ValueError, match=r"malformed|counts"):
        Sketch.from_bytes(sketch.to_bytes()[:-8])

    y = rng.normal(loc=1.0, size=(1000, 32)).astype(np.float32)
    other = Sketcher(build_profile({"input": y}, run(light, y)))
    assert other.fingerprint != sketcher.fingerprint
    with pytest.raises(SketchMismatch):
        sketch.merge(other.sketch({"input": x}, run(light, x)))


def test_bad_values_are_counted_not_raised(
    light: ort.InferenceSession, sketcher: Sketcher, rng: np.random.Generator
) -> None:
    # Well inside the reference's range (5,000 normal draws), so that only the planted values
    # are flagged: an unclipped draw falls outside it about once in a thousand runs.
    x = np.clip(rng.normal(size=(8, 32)), -1.0, 1.0).astype(np.float32)
    outputs = run(light, x)
    x[0, 0], x[1, 0], x[2, 0] = np.nan, np.inf, -np.inf
    x[3, 1] = 1e6
    sketch = sketcher.sketch({"input": x}, outputs)
    flags = sketch.flags
    assert flags[0, [MISSING, POS_INF, NEG_INF, ABOVE_MAX, BELOW_MIN]].tolist() == [1, 1, 1, 1, 1]
    assert flags[1, ABOVE_MAX] == 1
    # NaN is left out of the bins; the infinities fall in the open outer bins.
    assert sketch.bins[sketcher.bin_slices[0]].sum() == 7

    # Strings where numbers belong: numeric strings are read, the rest counted invalid.
    text = x.astype(object)
    text[4, 2], text[5, 2], text[6, 2] = "abc", "0.5", None
    sketch = sketcher.sketch({"input": text}, outputs)
    assert sketch.flags[2, [INVALID, MISSING]].tolist() == [1, 1]
    assert sketch.bins[sketcher.bin_slices[2]].sum() == 6

    # Unseen labels land in "other"; unknown tensors, extra and absent columns are counted.
    label = sketcher.features.index(next(f for f in sketcher.features if f.name == "label"))
    odd = {**outputs, "label": np.array([0, 1, 7, 7, -3, 1, 0, 0])}
    sketch = sketcher.sketch({"input": x, "extra": np.ones((8, 2))}, odd)
    assert sketch.bins[sketcher.bin_slices[label]][-1] == 3
    assert sketch.unprofiled == 16
    sketch = sketcher.sketch({"input": x[:, :30]}, {"label": np.array(["a"] * 8)})
    assert sketch.flags[30:32, MISSING].tolist() == [8, 8]
    assert sketch.flags[-2:, MISSING].tolist() == [8, 8]  # probabilities absent
    assert sketch.bins[sketcher.bin_slices[label]][-1] == 8  # strings are unseen labels
    wide = np.concatenate([x, x[:, :3]], axis=1)
    assert sketcher.sketch({"input": wide}, outputs).unprofiled == 24
    mixed = np.array([1, "a", None, 2.5, 0, 1, 1, 0], dtype=object)
    sketcher.sketch({"input": x}, {**outputs, "label": mixed})  # does not raise
    assert sketcher.sketch({"input": x[:0]}, {}).rows == 0
    assert sketcher.sketch({"input": x, "bad": np.ones(3)}, outputs).unprofiled == 3


def test_categorical_string_and_integer_inputs(rng: np.random.Generator) -> None:
    inputs = {
        "colour": rng.choice(["red", "green", "blue", ""], size=500),
        "age": rng.integers(18, 25, size=(500, 1)),
    }
    outputs = {"score": rng.random(500).astype(np.float32)}
    sketcher = Sketcher(build_profile(inputs, outputs))
    sketch = sketcher.sketch(inputs, outputs)
    for feature, part in zip(sketcher.features, sketcher.bin_slices, strict=True):
        values = feature.values_of({**inputs, **outputs}[feature.tensor])
        counts, _ = feature.histogram(values)
        assert sketch.bins[part].tolist() == counts.tolist()
    assert sketch.flags[0, MISSING] == np.sum(inputs["colour"] == "")
    live = {"colour": np.array(["red", "purple"]), "age": np.array([[18], [99]])}
    sketch = sketcher.sketch(live, {"score": np.array([0.5, 0.5], dtype=np.float32)})
    assert sketch.bins[sketcher.bin_slices[0]][-1] == 1
    assert sketch.bins[sketcher.bin_slices[1]][-1] == 1


def test_count_and_near_constant_columns_bin_as_their_profile_does(
    rng: np.random.Generator,
) -> None:
    """Columns binned by value (many edges) are sketched in a block of their own, beside the
    decile columns of the same tensor: the counts still match the profile's histogram."""
    x = rng.normal(size=(5000, 4))
    x[:, 1] = rng.poisson(3.0, 5000)
    x[:, 3] = np.where(rng.random(5000) < 0.01, 2.0, 3.0)
    sketcher = Sketcher(build_profile({"x": x}, {}))
    assert [len(f.edges) for f in sketcher.features][1] > 16
    live = x[:300] + np.array([0.0, 0.5, 0.0, 0.01])  # off the counts' and the mass's values
    sketch = sketcher.sketch({"x": live}, {})
    for feature, part in zip(sketcher.features, sketcher.bin_slices, strict=True):
        counts, _ = feature.histogram(feature.values_of(live))
        assert sketch.bins[part].tolist() == counts.tolist(), feature.name
