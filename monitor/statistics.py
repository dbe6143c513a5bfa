"""Drift statistics on binned counts: PSI, Jensen-Shannon distance, binned KS and a
normalised Wasserstein distance.

Pure functions of the reference proportions and a window's bin counts. PSI and JS smooth
both sides with epsilon, so an empty bin on either side gives a large finite score rather
than infinity. The `*_rows` forms work over the last axis, on one feature's proportions or on
a [features, bins] matrix of them (the window scorer) or [resamples, bins] (calibration);
`mask` marks real bins, and padding (False) adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STATISTICS = ("psi", "js", "ks", "wasserstein")
# A feature whose interior edges span less than this many reference standard deviations
# (a point mass) has no Wasserstein distance: its bins have no width to weigh.
_MIN_SPAN = 1e-9


def smooth(props: np.ndarray, eps: float) -> np.ndarray:
    props = np.asarray(props, dtype=np.float64)
    return (props + eps) / (props.sum(axis=-1, keepdims=True) + eps * props.shape[-1])


def proportions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def psi(ref_props: np.ndarray, counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of `counts` against the reference proportions."""
    p, q = smooth(ref_props, eps), smooth(proportions(counts), eps)
    return float(psi_rows(p, q, True))


def js_distance(ref_props: np.ndarray, counts: np.ndarray, eps: float = 1e-4) -> float:
    """Jensen-Shannon distance (base 2, so within [0, 1]) of `counts` from the reference."""
    p, q = smooth(ref_props, eps), smooth(proportions(counts), eps)
    return float(js_rows(p, q, True))


def ks_binned(ref_props: np.ndarray, counts: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic on the binned CDFs: the largest gap between them."""
    return float(ks_rows(proportions(ref_props), proportions(counts)))


def wasserstein_binned(
    ref_props: np.ndarray, counts: np.ndarray, edges: Sequence[float], std: float | None
) -> float | None:
    """Wasserstein-1 distance between the binned CDFs, divided by the reference's standard
    deviation: the area between the CDFs known at the edges (trapezoids between edges; the
    open outer bins add nothing). None where it is not defined (see `wasserstein_weights`)."""
    weights = wasserstein_weights(edges, std)
    if weights is None:
        return None
    return float(wasserstein_rows(proportions(ref_props), proportions(counts), weights))


def wasserstein_weights(edges: Sequence[float], std: float | None) -> np.ndarray | None:
    """Per bin, the width the CDF gap after it stands for, in reference standard deviations
    (trapezoid rule over the edges; the last bin's is 0); None without a spread or a span."""
    e = np.asarray(edges, dtype=np.float64)
    if std is None or not std > 0 or len(e) < 2 or (e[-1] - e[0]) / std < _MIN_SPAN:
        return None
    gaps = np.diff(e) / std
    weights = np.zeros(len(e) + 1)
    weights[:-2] += gaps / 2  # the CDF after bin i is known at edge i
    weights[1:-1] += gaps / 2
    return weights


def psi_rows(p: np.ndarray, q: np.ndarray, mask: np.ndarray | bool) -> np.ndarray:
    ratio = np.divide(q, p, out=np.ones_like(p), where=mask)
    return np.sum((q - p) * np.log(ratio), axis=-1)


def js_rows(p: np.ndarray, q: np.ndarray, mask: np.ndarray | bool) -> np.ndarray:
    m = (p + q) / 2
    p_m = np.divide(p, m, out=np.ones_like(p), where=mask)
    q_m = np.divide(q, m, out=np.ones_like(q), where=mask)
    divergence = 0.5 * np.sum(p * np.log2(p_m), axis=-1) + 0.5 * np.sum(q * np.log2(q_m), axis=-1)
    return np.sqrt(np.maximum(divergence, 0.0))


def ks_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.max(np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)), axis=-1, initial=0.0)


def wasserstein_rows(p: np.ndarray, q: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.sum(np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)) * weights, axis=-1)
