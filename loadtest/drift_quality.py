"""The drift monitor's quality on the light benchmark model: detection delay and false alarms.

Traffic is drawn from the light model's input distribution: a multivariate normal with the
mean and covariance of the data it was trained on (so that it can be sampled without end),
and the model itself (ONNX Runtime) gives the outputs. The reference profile comes from an
independent 20,000-row sample, as a registered reference would. Batches of 64 rows are
sketched and fed to a `VersionMonitor` with the default settings.

    python -m loadtest.drift_quality            # every feature shifted, then the null run

Also used by tests/monitor to check the two claims in the README and docs/performance.md;
`MixedTraffic` generates the four kinds of feature of the claims in docs/drift.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort

from loadtest.models import _SEED, FEATURES, build_light
from modelgate.monitor.drift import DriftSettings, VersionMonitor, WindowReport
from modelgate.monitor.profile import ReferenceProfile, build_profile

REFERENCE_ROWS = 20_000
BATCH = 64
_CHUNK = 8192


class LightTraffic:
    """Rows from the light model's input distribution and the model's answers to them."""

    def __init__(self) -> None:
        from sklearn.datasets import make_classification

        x, _ = make_classification(
            n_samples=2000, n_features=FEATURES, n_informative=12, random_state=_SEED
        )
        self.mean = x.mean(axis=0)
        self._factor = np.linalg.cholesky(np.cov(x, rowvar=False) + 1e-9 * np.eye(FEATURES))
        self.std = np.sqrt(np.diag(np.cov(x, rowvar=False)))
        self._session = ort.InferenceSession(build_light(), providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]

    def rows(
        self, rng: np.random.Generator, n: int, shift: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """`n` rows (inputs, outputs); `shift` is added to the inputs' mean."""
        x = rng.standard_normal((n, FEATURES)) @ self._factor.T + self.mean
        if shift is not None:
            x += shift
        inputs = {"input": x.astype(np.float32)}
        answers = self._session.run(self._outputs, inputs)
        return inputs, dict(zip(self._outputs, answers, strict=True))

    def reference(self, rng: np.random.Generator) -> ReferenceProfile:
        return build_profile(*self.rows(rng, REFERENCE_ROWS))

    def batches(
        self, rng: np.random.Generator, rows: int, shift: np.ndarray | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """`rows` rows in batches of BATCH (the model runs on bigger chunks, for speed)."""
        for start in range(0, rows, _CHUNK):
            inputs, outputs = self.rows(rng, min(_CHUNK, rows - start), shift)
            for i in range(0, len(inputs["input"]), BATCH):
                yield (
                    {k: v[i : i + BATCH] for k, v in inputs.items()},
                    {k: v[i : i + BATCH] for k, v in outputs.items()},
                )

    def shift(self, feature: int, sds: float = 0.5) -> np.ndarray:
        shift = np.zeros(FEATURES)
        shift[feature] = sds * self.std[feature]
        return shift


class MixedTraffic:
    """Rows of four kinds of feature, none from the benchmark model: normal, lognormal,
    near-constant (3.0 in 99.5% of rows, else normal around it) and count (Poisson, mean 3).
    A shift moves one feature's values by `sds` of its standard deviation; a scale change
    stretches them around their mean."""

    NAMES = ("normal", "lognormal", "near_constant", "count")
    MEAN = np.array([0.0, np.exp(0.5), 3.0, 3.0])
    STD = np.array([1.0, np.sqrt((np.e - 1) * np.e), np.sqrt(0.005), np.sqrt(3.0)])

    def rows(
        self,
        rng: np.random.Generator,
        n: int,
        *,
        feature: int | None = None,
        sds: float = 0.0,
        scale: float = 1.0,
    ) -> dict[str, np.ndarray]:
        x = np.empty((n, 4))
        x[:, 0] = rng.standard_normal(n)
        x[:, 1] = rng.lognormal(size=n)
        x[:, 2] = np.where(rng.random(n) < 0.005, rng.normal(3.0, 1.0, n), 3.0)
        x[:, 3] = rng.poisson(3.0, n)
        if feature is not None:
            x[:, feature] = (x[:, feature] - self.MEAN[feature]) * scale + self.MEAN[feature]
            x[:, feature] += sds * self.STD[feature]
        return {"x": x.astype(np.float32)}

    def reference(self, rng: np.random.Generator, rows: int) -> ReferenceProfile:
        return build_profile(self.rows(rng, rows), {}, names={"x": list(self.NAMES)})


def windows_to_detection(
    traffic: LightTraffic,
    reference: ReferenceProfile,
    rng: np.random.Generator,
    feature: int,
    *,
    sds: float = 0.5,
    most: int = 10,
    settings: DriftSettings | None = None,
) -> tuple[int | None, WindowReport | None]:
    """Windows until the version is drifting under a mean shift of one feature (None if
    not within `most`), and the deciding window's report."""
    settings = settings or DriftSettings()
    monitor = VersionMonitor("light", "1", reference, settings, now=0.0)
    shift = traffic.shift(feature, sds)
    for inputs, outputs in traffic.batches(rng, most * (settings.window_rows + BATCH), shift):
        for event in monitor.add(monitor.sketcher.sketch(inputs, outputs), now=0.0):
            if event.kind == "drifting" and event.report is not None:
                return event.report.index, event.report
        if monitor.windows >= most:
            break
    return None, None


def null_run(
    traffic: LightTraffic,
    reference: ReferenceProfile,
    rng: np.random.Generator,
    rows: int = 1_000_000,
) -> dict[str, float]:
    """Reference-distribution traffic: alerts raised and the largest scores seen."""
    monitor = VersionMonitor("light", "1", reference, DriftSettings(), now=0.0)
    alerts = drifted_windows = 0
    worst = {"psi": 0.0, "js": 0.0, "ks": 0.0}
    for inputs, outputs in traffic.batches(rng, rows):
        windows = monitor.windows
        alerts += len(monitor.add(monitor.sketcher.sketch(inputs, outputs), now=0.0))
        if monitor.windows > windows:
            report = monitor.reports[-1]
            drifted_windows += report.window_drifted
            for score in report.features:
                if score.role == "input":
                    for name in worst:
                        worst[name] = max(worst[name], getattr(score, name) or 0.0)
    return {
        "windows": monitor.windows,
        "alerts": alerts,
        "drifted_windows": drifted_windows,
        **{f"max_{k}": v for k, v in worst.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--null-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    traffic = LightTraffic()
    reference = traffic.reference(rng)
    delays = []
    for feature in range(FEATURES):
        windows, report = windows_to_detection(traffic, reference, rng, feature)
        delays.append(windows)
        if report is None:
            print(f"input[{feature}]: not drifting within 10 windows")
            continue
        score = report.feature(f"input[{feature}]")
        print(
            f"input[{feature}]: drifting after {windows} windows, flagged "
            f"{list(report.drifted_features)}; psi {score.psi:.3f} js {score.js:.3f} "
            f"ks {score.ks:.3f}"
        )
    print(f"windows to detection: {sorted(delays, key=lambda d: d or 99)}")
    started = time.perf_counter()
    figures = null_run(traffic, reference, rng, args.null_rows)
    elapsed = time.perf_counter() - started
    print(f"null run ({args.null_rows} rows, {elapsed:.1f} s): {figures}")


if __name__ == "__main__":
    main()
