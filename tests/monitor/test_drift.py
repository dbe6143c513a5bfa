"""Drift statistics, windows by rows and by time, the K-of-M rule, and the two quality claims
on the light benchmark model (measured by loadtest.drift_quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadtest.drift_quality import LightTraffic, null_run, windows_to_detection
from modelgate.monitor.drift import (
    DriftSettings,
    VersionMonitor,
    WindowScorer,
    js_distance,
    ks_binned,
    psi,
    wasserstein_binned,
)
from modelgate.monitor.profile import ReferenceProfile, build_profile
from modelgate.monitor.sketch import Sketch


def test_statistics_on_known_distributions() -> None:
    ref = np.full(4, 0.25)
    assert psi(ref, np.array([25, 25, 25, 25])) == pytest.approx(0.0)
    assert js_distance(ref, np.array([10, 10, 10, 10])) == pytest.approx(0.0, abs=1e-6)
    assert ks_binned(ref, np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    # Disjoint supports: JS distance is 1 (base 2), KS the whole mass; PSI large but finite.
    assert js_distance(np.array([1.0, 0.0]), np.array([0, 7]), eps=1e-12) == pytest.approx(1.0)
    assert ks_binned(np.array([1.0, 0.0]), np.array([0, 7])) == pytest.approx(1.0)
    assert 10 < psi(np.array([1.0, 0.0]), np.array([0, 7])) < np.inf
    p, counts = np.array([0.5, 0.3, 0.2]), np.array([30, 30, 40])
    q = counts / 100
    assert psi(p, counts, eps=0) == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert ks_binned(p, counts) == pytest.approx(0.2)
    # U(0, 2) against U(1, 2) on the edges 0, 1, 2: the area between the CDFs is 0.5 (the
    # trapezoids are exact here), in units of the reference's standard deviation.
    uniform = np.array([0.0, 0.5, 0.5, 0.0])
    assert wasserstein_binned(uniform, np.array([0, 0, 9, 0]), (0, 1, 2), 1.0) == 0.5
    assert wasserstein_binned(uniform, np.array([0, 0, 9, 0]), (0, 1, 2), 0.5) == 1.0
    assert wasserstein_binned(uniform, np.array([0, 4, 4, 0]), (0, 1, 2), 1.0) == 0.0
    assert wasserstein_binned(uniform, np.array([0, 0, 9, 0]), (0, 1, 2), 0.0) is None


def test_a_window_is_scored_as_the_statistics_score_each_feature(
    rng: np.random.Generator,
) -> None:
    """`WindowScorer` scores all features at once; each score is what `psi`, `js_distance`
    and `ks_binned` give for that feature alone: numeric and categorical features of
    different bin counts, a feature with nothing binned, and flags."""
    n = 2000
    inputs = {"x": rng.normal(size=(n, 3)).astype(np.float32), "c": rng.integers(0, 4, size=n)}
    profile = build_profile(inputs, {"label": rng.integers(0, 2, size=n)})
    monitor = VersionMonitor("m", "1", profile, DriftSettings(window_rows=10**9), 0.0)
    sketcher = monitor.sketcher
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[:, 1] += 0.7
    x[:5, 2] = np.nan
    x[:, 0] = np.nan  # nothing binned for x[0]
    c = rng.integers(1, 6, size=300)  # 4 and 5 were never seen: "other"
    sketch = sketcher.sketch({"x": x, "c": c}, {"label": rng.integers(0, 2, size=300)})
    settings = DriftSettings()
    roles = ["input"] * 4 + ["output"]
    scores = WindowScorer(sketcher.features, sketcher.bin_slices).score(
        sketch.bins, sketch.flags, sketch.rows, roles, settings
    )
    assert [s.name for s in scores] == ["x[0]", "x[1]", "x[2]", "c", "label"]
    for i, (feature, score) in enumerate(zip(sketcher.features, scores, strict=True)):
        counts = sketch.bins[sketcher.bin_slices[i]]
        reference = np.asarray(feature.proportions)
        assert score.reference == pytest.approx(reference.tolist())
        assert score.current == pytest.approx((counts / max(counts.sum(), 1)).tolist())
        assert score.counts["missing"] == sketch.flags[i][0]
        if counts.sum() == 0:
            assert (score.psi, score.js, score.ks) == (None, None, None)
            continue
        assert score.psi == pytest.approx(psi(reference, counts, settings.epsilon), rel=1e-9)
        js = js_distance(reference, counts, settings.epsilon)
        assert score.js == pytest.approx(js, rel=1e-9)
        if feature.kind == "numeric":
            assert score.ks == pytest.approx(ks_binned(reference, counts), rel=1e-9)
            w = wasserstein_binned(reference, counts, feature.edges, feature.std)
            assert w is not None and score.wasserstein == pytest.approx(w, rel=1e-9)
        else:
            assert score.ks is None and score.wasserstein is None
        limits = {
            "psi": settings.psi_threshold,
            "js": settings.js_threshold,
            "ks": settings.ks_threshold,
            "wasserstein": settings.wasserstein_threshold,
        }
        exceeded = [m for m, limit in limits.items() if (getattr(score, m) or 0.0) >= limit]
        assert [r for r in score.reasons if r in limits] == exceeded
    assert "psi" in scores[1].reasons  # shifted by 0.7 sd: PSI ~0.5 at 300 rows
    assert scores[0].missing_rate == 1.0 and "missing_rate" in scores[0].reasons
    assert scores[3].counts["other"] == np.count_nonzero(c >= 4)


@pytest.fixture(scope="module")
def traffic() -> LightTraffic:
    return LightTraffic()


@pytest.fixture(scope="module")
def reference(traffic: LightTraffic) -> ReferenceProfile:
    return traffic.reference(np.random.default_rng(7))


@pytest.mark.parametrize("feature", [0, 13, 27])
def test_a_half_sd_mean_shift_of_one_feature_is_flagged_within_three_windows(
    traffic: LightTraffic, reference: ReferenceProfile, rng: np.random.Generator, feature: int
) -> None:
    windows, report = windows_to_detection(traffic, reference, rng, feature, most=3)
    assert windows is not None and windows <= 3
    assert report is not None and report.drifting
    assert f"input[{feature}]" in report.drifted_features


def test_a_million_reference_rows_raise_no_alert(
    traffic: LightTraffic, reference: ReferenceProfile, rng: np.random.Generator
) -> None:
    """Calibrated at 1e-4 per feature and window, a window flags one of the 32 inputs with
    a chance of at most 3.2e-3: 0.63 of the 197 windows are expected flagged, 5 or more with
    a chance of 5e-4, and an alert (2 in a row) within them of 2e-3."""
    figures = null_run(traffic, reference, rng, rows=1_000_000)
    assert figures["windows"] >= 195  # 5,000 rows each, give or take a batch
    assert figures["alerts"] == 0
    assert figures["drifted_windows"] <= 4
    assert figures["max_psi"] < DriftSettings().psi_threshold / 4


def _tiny() -> tuple[ReferenceProfile, np.random.Generator]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 3))
    return build_profile({"x": x}, {"y": (x[:, 0] > 0).astype(np.int64)}), rng


def _batch(monitor: VersionMonitor, rng: np.random.Generator, rows: int, shift: float) -> Sketch:
    x = rng.normal(size=(rows, 3))
    x[:, 1] += shift
    return monitor.sketcher.sketch({"x": x}, {"y": (x[:, 0] > 0).astype(np.int64)})


def test_windows_close_by_rows_or_by_time_with_enough_rows() -> None:
    profile, rng = _tiny()
    settings = DriftSettings(window_rows=1000, window_seconds=10.0, min_window_rows=300)
    monitor = VersionMonitor("m", "1", profile, settings, now=0.0)
    assert monitor.add(_batch(monitor, rng, 999, 0), now=1.0) == []
    assert monitor.windows == 0 and monitor.pending_rows == 999
    monitor.add(_batch(monitor, rng, 1, 0), now=2.0)
    assert monitor.windows == 1 and monitor.reports[-1].closed_by == "rows"
    assert monitor.reports[-1].rows == 1000 and monitor.pending_rows == 0
    # The clock restarted at 2.0: nothing closes at 11.9; too few rows at 12 extend the window.
    monitor.add(_batch(monitor, rng, 200, 0), now=3.0)
    monitor.tick(11.9)
    monitor.tick(12.0)
    assert monitor.windows == 1
    monitor.add(_batch(monitor, rng, 200, 0), now=13.0)
    monitor.tick(13.0)
    assert monitor.windows == 2
    report = monitor.reports[-1]
    assert (report.closed_by, report.rows, report.window_drifted) == ("time", 400, False)
    data = json.loads(json.dumps(report.to_json()))
    assert [f["name"] for f in data["inputs"]] == ["x[0]", "x[1]", "x[2]"]
    assert data["outputs"][0]["name"] == "y"
    assert data["outputs"][0]["ks"] is None  # categories have no order
    first = data["inputs"][0]
    assert set(first) >= {"psi", "js", "ks", "reference", "current", "drifted", "reasons"}
    assert sum(first["current"]) == pytest.approx(1.0)
    assert data["thresholds"]["psi"] == 0.2


def test_k_features_for_m_windows_start_and_resolve_drifting() -> None:
    profile, rng = _tiny()
    settings = DriftSettings(window_rows=2000, consecutive_windows=2)
    monitor = VersionMonitor("m", "1", profile, settings, now=0.0)

    def window(shift: float) -> list[str]:
        events = monitor.add(_batch(monitor, rng, 2000, shift), now=0.0)
        return [e.kind for e in events]

    assert window(1.0) == []  # one drifted window: no page
    assert monitor.reports[-1].drifted_features == ("x[1]",)
    assert window(0.0) == []  # the streak is broken
    assert window(1.0) == []
    assert window(1.0) == ["drifting"]
    assert monitor.drifting and monitor.reports[-1].drifting
    assert window(0.0) == []  # one quiet window does not clear the alert either
    assert window(1.0) == ["still_drifting"]  # each drifted window while drifting says so
    assert window(0.0) == []
    assert window(0.0) == ["resolved"]
    assert not monitor.drifting

    two_of_one = DriftSettings(window_rows=2000, min_drifted_features=2, consecutive_windows=1)
    strict = VersionMonitor("m", "1", profile, two_of_one, now=0.0)
    assert strict.add(_batch(strict, rng, 2000, 1.0), now=0.0) == []
    assert strict.reports[-1].drifted_features == ("x[1]",)
    assert not strict.reports[-1].window_drifted


def test_output_drift_is_reported_and_counts_only_when_configured() -> None:
    profile, rng = _tiny()
    for outputs_count, drifted in ((False, ()), (True, ("y",))):
        settings = DriftSettings(
            window_rows=2000, consecutive_windows=1, outputs_count=outputs_count
        )
        monitor = VersionMonitor("m", "1", profile, settings, now=0.0)
        x = rng.normal(size=(2000, 3))
        y = np.ones(2000, dtype=np.int64)  # the model now says 1 to everything
        monitor.add(monitor.sketcher.sketch({"x": x}, {"y": y}), now=0.0)
        report = monitor.reports[-1]
        assert report.feature("y").drifted
        assert report.drifted_features == drifted


def test_missing_and_out_of_range_rates_are_judged() -> None:
    profile, rng = _tiny()
    monitor = VersionMonitor("m", "1", profile, DriftSettings(window_rows=1000), now=0.0)
    x = rng.normal(size=(1000, 3))
    x[:100, 0] = np.nan
    x[:80, 2] = 1e9
    monitor.add(monitor.sketcher.sketch({"x": x}, {"y": np.zeros(1000, dtype=np.int64)}), now=0)
    report = monitor.reports[-1]
    assert report.feature("x[0]").missing_rate == pytest.approx(0.1)
    assert "missing_rate" in report.feature("x[0]").reasons
    assert report.feature("x[2]").out_of_range_rate == pytest.approx(0.08)
    assert "out_of_range_rate" in report.feature("x[2]").reasons
    assert report.feature("x[2]").counts["above_max"] == 80
