"""Thresholds calibrated to the reference a version has.

Two samples from one population differ through noise alone, the more so the smaller they
are: a 341-row reference against 5,000-row windows scores JS ~0.1 with nothing changed,
where a 20,000-row one scores ~0.02. So each feature's threshold comes from the null
distribution of each statistic between a reference of the size this one has and a window
of the configured size, both drawn from the reference's own binned proportions (a parametric
bootstrap: `RESAMPLES` pairs of multinomial draws; bins the reference left empty share one
extra row's worth of mass, since a live window will sometimes reach them).

The thresholds sit far in the tail (a false-alarm rate of 1e-4 per feature and window), where
a few thousand resamples hold no sample: each statistic's resamples are fitted with a gamma
distribution by their mean and variance (JS squared, the divergence, which like PSI is
asymptotically a scaled chi-square; KS and Wasserstein as they are, whose tails a gamma on
their squares underestimates eightfold), and the threshold is the fit's quantile at the rate
divided by the statistics scored (never below the largest resample). Checked against
200,000 resamples, the rates come out at or below the target; the quality tests check the
false alarms on fresh data (docs/drift.md).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammainccinv  # type: ignore[import-untyped]

from modelgate.monitor.profile import Calibration, FeatureProfile, ReferenceProfile
from modelgate.monitor.statistics import (
    js_rows,
    ks_rows,
    psi_rows,
    smooth,
    wasserstein_rows,
    wasserstein_weights,
)

RESAMPLES = 2000
SEED = 0
# The shift a reference must let the monitor see, in reference standard deviations: what
# `min_reference_rows` is computed for.
DETECTABLE_SHIFT = 0.5


def calibrate(
    profile: ReferenceProfile,
    *,
    window_rows: int,
    false_alarm_rate: float,
    epsilon: float,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Calibration:
    """Per-feature thresholds for windows of `window_rows` rows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    thresholds = []
    least: list[float] = []
    for i, feature in enumerate(profile.features()):
        limits, needed = _feature(feature, profile.rows, window_rows, false_alarm_rate,
                                  epsilon, resamples, rng)  # fmt: skip
        thresholds.append(limits)
        if i < len(profile.inputs) and needed is not None:
            least.append(needed)
    smallest = None if any(np.isinf(least)) else int(np.ceil(max(least, default=0)))
    return Calibration(
        window_rows=window_rows,
        false_alarm_rate=false_alarm_rate,
        epsilon=epsilon,
        resamples=resamples,
        seed=seed,
        thresholds=tuple(thresholds),
        min_reference_rows=smallest,
    )


def with_calibration(
    profile: ReferenceProfile, *, window_rows: int, false_alarm_rate: float, epsilon: float
) -> ReferenceProfile:
    """`profile` carrying a calibration for these settings (itself if it has one)."""
    current = profile.calibration
    wanted = (window_rows, false_alarm_rate, epsilon)
    if current is not None and (current.window_rows, current.false_alarm_rate,
                                current.epsilon) == wanted:  # fmt: skip
        return profile
    calibration = calibrate(
        profile, window_rows=window_rows, false_alarm_rate=false_alarm_rate, epsilon=epsilon
    )
    return ReferenceProfile(profile.rows, profile.inputs, profile.outputs, calibration)


def size_warning(profile: ReferenceProfile) -> str | None:
    """Why the reference is too small for its calibration's windows, or None."""
    calibration = profile.calibration
    if calibration is None:
        return None
    least, window = calibration.min_reference_rows, calibration.window_rows
    if least is None:
        return (
            f"windows of {window} rows are too small for a {DETECTABLE_SHIFT:g}-sd shift to "
            "stand out of their noise, whatever the reference; use larger windows"
        )
    if profile.rows >= least:
        return None
    return (
        f"the reference has {profile.rows} rows: against windows of {window} rows its own "
        f"noise hides a {DETECTABLE_SHIFT:g}-sd shift of some input (the thresholds are "
        f"calibrated to it, so it raises no false alarms); {least} rows or more would show it"
    )


def _feature(
    feature: FeatureProfile,
    reference_rows: int,
    window_rows: int,
    rate: float,
    eps: float,
    resamples: int,
    rng: np.random.Generator,
) -> tuple[dict[str, float | None], float | None]:
    """(threshold per statistic, smallest reference that shows a shift) of one feature."""
    numeric = feature.kind == "numeric"
    weights = wasserstein_weights(feature.edges, feature.std) if numeric else None
    limits: dict[str, float | None] = {"psi": None, "js": None, "ks": None, "wasserstein": None}
    present = 1.0 - feature.missing_rate
    n_ref, n_win = round(reference_rows * present), max(1, round(window_rows * present))
    props = np.asarray(feature.proportions, dtype=np.float64)
    if n_ref < 1 or props.sum() <= 0:
        return limits, None  # nothing binned: the feature is never scored
    counts = props * n_ref
    empty = counts <= 0
    if empty.any():  # one more row's worth of mass, shared by the bins nobody reached
        counts = counts + empty / empty.sum()
    population = counts / counts.sum()
    ref = rng.multinomial(n_ref, population, size=resamples) / n_ref
    win = rng.multinomial(n_win, population, size=resamples) / n_win
    p, q = smooth(ref, eps), smooth(win, eps)
    null = {"psi": psi_rows(p, q, True), "js": js_rows(p, q, True)}
    if numeric:
        null["ks"] = ks_rows(ref, win)
        if weights is not None:
            null["wasserstein"] = wasserstein_rows(ref, win, weights)
    each = rate / len(null)  # the feature's rate, split over its statistics
    for name, values in null.items():
        squared = name == "js"  # JS squared is the divergence, chi-square-like as PSI
        limits[name] = _tail(values**2 if squared else values, each, squared)
    needed = None
    wasserstein = limits["wasserstein"]
    if weights is not None and wasserstein is not None and wasserstein > 0:
        # The null scales as sqrt(1/n_ref + 1/n_win); a shift of s sds moves the binned
        # distance by about s times the mass between the outer edges.
        unit = wasserstein / np.sqrt(1 / n_ref + 1 / n_win)
        signal = DETECTABLE_SHIFT * (1.0 - props[0] - props[-1])
        room = (signal / unit) ** 2 - 1 / n_win
        needed = float(np.inf) if room <= 0 else 1 / room / present
    return limits, needed


def _tail(values: np.ndarray, rate: float, squared: bool) -> float:
    """The upper `rate` quantile of a gamma fitted to `values` by moments (on the
    statistic's own scale again when `values` are its squares)."""
    mean, var, top = float(values.mean()), float(values.var()), float(values.max())
    if var <= 0 or mean <= 0:
        limit = top * (1 + 1e-9) + 1e-12  # no spread: anything beyond the resamples
    else:
        shape, scale = mean * mean / var, var / mean
        limit = max(float(scale * gammainccinv(shape, rate)), top)
    return float(np.sqrt(limit)) if squared else limit
