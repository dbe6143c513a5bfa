"""The drift monitor's quality claims (README, docs/drift.md) on data generated here: four
kinds of feature (normal, lognormal, near-constant, count), sketched directly (no HTTP).

Every test is seeded, so it is deterministic; each docstring gives the chance that a fresh
seed would fail it, so a failure means the monitor changed, not bad luck.
"""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.drift_quality import MixedTraffic
from modelgate.monitor.drift import DriftSettings, VersionMonitor, WindowReport
from modelgate.monitor.profile import ReferenceProfile

WINDOW = 5000


@pytest.fixture(scope="module")
def mixed() -> MixedTraffic:
    return MixedTraffic()


@pytest.fixture(scope="module")
def mixed_reference(mixed: MixedTraffic) -> ReferenceProfile:
    return mixed.reference(np.random.default_rng(11), 20_000)


def _until_drifting(
    monitor: VersionMonitor, windows: list[dict[str, np.ndarray]]
) -> WindowReport | None:
    for rows in windows:
        for event in monitor.add(monitor.sketcher.sketch(rows, {}), now=0.0):
            if event.kind == "drifting":
                return event.report
    return None


@pytest.mark.parametrize("sign", [1, -1], ids=["up", "down"])
@pytest.mark.parametrize("feature", range(4), ids=MixedTraffic.NAMES)
def test_a_half_sd_shift_of_any_kind_of_feature_is_flagged_within_two_windows(
    mixed: MixedTraffic, mixed_reference: ReferenceProfile, feature: int, sign: int
) -> None:
    """Before point-mass and by-value bins, the near-constant and count features' upward
    shifts were never flagged (PSI <= 0.007). The shifted feature's statistics sit tens of
    null standard deviations above their thresholds, and another feature is blamed with a
    chance of at most 3 features x 2 windows x the false-alarm rate (1e-4): below 1e-3."""
    rng = np.random.default_rng(100 + 10 * feature + sign)
    monitor = VersionMonitor("m", "1", mixed_reference, DriftSettings(), now=0.0)
    shifted = [mixed.rows(rng, WINDOW, feature=feature, sds=0.5 * sign) for _ in range(2)]
    report = _until_drifting(monitor, shifted)
    assert report is not None and report.index == 2
    assert report.drifted_features == (MixedTraffic.NAMES[feature],)
