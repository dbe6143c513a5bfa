"""The drift monitor: producers on threads, the consumer task, events, reports, metrics,
a full queue, sketches from another process and learning a reference from live rows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelgate.monitor.drift import DriftEvent, DriftSettings
from modelgate.monitor.monitor import DriftMonitor
from modelgate.monitor.profile import ReferenceProfile, build_profile


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict]:
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 2] += shift
    return {"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)}


@pytest.fixture
def profile(rng: np.random.Generator) -> ReferenceProfile:
    return build_profile(*_rows(rng, 5000))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_batches_from_worker_threads_become_windows_events_and_metrics(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    registry = CollectorRegistry()
    events: list[DriftEvent] = []

    async def on_change(event: DriftEvent) -> None:
        events.append(event)

    settings = DriftSettings(window_rows=1000, consecutive_windows=2)
    monitor = DriftMonitor(settings, registry, on_change=on_change, poll_seconds=0.01)
    monitor.register("m", "1", profile)
    assert monitor.report("m", "2") is None
    batches = [_rows(rng, 50, shift=1.5) for _ in range(40)]  # 2,000 rows: two windows

    def produce(part: list[tuple[dict, dict]]) -> None:
        for inputs, outputs in part:
            assert monitor.observe("m", "1", inputs, outputs)

    threads = [threading.Thread(target=produce, args=(batches[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner = asyncio.create_task(monitor.run())
    try:
        for _ in range(200):
            if events:
                break
            await asyncio.sleep(0.01)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert [(e.model, e.version, e.kind) for e in events] == [("m", "1", "drifting")]
    report = monitor.report("m", "1")
    assert report is not None
    assert report["drifting"] and report["rows_seen"] == 2000
    assert report["reference"]["source"] == "registered"
    assert [w["window"] for w in report["windows"]] == [2, 1]
    drifted = report["windows"][0]["drifted_features"]
    assert "x[2]" in drifted  # shifted by 1.5 sd; the others may cross a threshold by chance

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": "m", "version": "1", **labels})

    assert value("modelgate_drift_drifting") == 1.0
    assert value("modelgate_drift_rows_total") == 2000
    assert value("modelgate_drift_windows_total") == 2
    assert value("modelgate_drift_sketches_dropped_total") == 0
    for feature in ("x[0]", "x[1]", "x[2]", "x[3]"):
        assert value("modelgate_drift_feature_drifted", feature=feature) == (feature in drifted)
    psi = value("modelgate_drift_psi", feature="x[2]")
    assert psi is not None and psi > 0.2
    assert value("modelgate_drift_ks", feature="label") is None
    assert value("modelgate_drift_invalid_values_total", feature="x[0]", kind="missing") == 0
    monitor.unregister("m", "1")
    assert monitor.report("m", "1") is None
    assert value("modelgate_drift_rows_total") is None


async def test_a_full_queue_drops_and_counts_without_blocking(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftSettings(queue_size=4), registry)
    monitor.register("m", "1", profile)
    inputs, outputs = _rows(rng, 8)
    started = time.perf_counter()
    accepted = [monitor.observe("m", "1", inputs, outputs) for _ in range(10)]
    assert time.perf_counter() - started < 1.0  # generous: it must simply not wait
    assert accepted == [True] * 4 + [False] * 6
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("modelgate_drift_sketches_dropped_total", labels) == 6
    await monitor.drain()
    report = monitor.report("m", "1")
    assert report is not None and (report["rows_seen"], report["sketches_dropped"]) == (32, 6)
    assert monitor.observe("m", "1", inputs, outputs)  # room again
    assert not monitor.observe("m", "unknown", inputs, outputs)


async def test_a_tap_sees_what_observe_sees_and_counts_its_drops(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    """The batch worker's tap (outputs as the model's list) folds the same rows into the
    same windows as `observe`, stacks batches of different sizes, and drops when full."""
    batches = [_rows(rng, int(n), shift=1.0) for n in rng.integers(1, 40, size=60)]
    rows = sum(len(inputs["x"]) for inputs, _ in batches)
    reports = []
    for use_tap in (False, True):
        monitor = DriftMonitor(DriftSettings(window_rows=500), CollectorRegistry())
        monitor.register("m", "1", profile)
        tap = monitor.tap("m", "1", ["label"])
        for inputs, outputs in batches:
            if use_tap:
                assert tap(inputs, [outputs["label"]])
            else:
                assert monitor.observe("m", "1", inputs, outputs)
        await monitor.drain()
        reports.append(monitor.report("m", "1"))
    plain, tapped = reports
    assert plain is not None and tapped is not None
    assert plain["rows_seen"] == tapped["rows_seen"] == rows
    assert [w["inputs"] for w in plain["windows"]] == [w["inputs"] for w in tapped["windows"]]
    assert plain["drifting"] == tapped["drifting"]
    assert plain["windows"][0]["drifted_features"] == tapped["windows"][0]["drifted_features"]
    assert "x[2]" in tapped["windows"][0]["drifted_features"]

    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftSettings(queue_size=3), registry)
    monitor.register("m", "1", profile)
    tap = monitor.tap("m", "1", ["label"])
    inputs, outputs = _rows(rng, 8)
    assert [tap(inputs, [outputs["label"]]) for _ in range(5)] == [True] * 3 + [False] * 2
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("modelgate_drift_sketches_dropped_total", labels) == 2
    assert not monitor.tap("m", "unknown", ["label"])(inputs, [outputs["label"]])


async def test_tapped_batches_stacked_early_still_count_against_the_queue(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    """Producers stack every few dozen tapped batches into one (`_compact`); the queue
    still holds `queue_size` batches, not `queue_size` stacks, and no row is lost."""
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftSettings(queue_size=100, window_rows=10_000), registry)
    monitor.register("m", "1", profile)
    tap = monitor.tap("m", "1", ["label"])
    inputs, outputs = _rows(rng, 3)
    accepted = [tap(inputs, [outputs["label"]]) for _ in range(250)]
    assert accepted == [True] * 100 + [False] * 150
    await monitor.drain()
    report = monitor.report("m", "1")
    assert report is not None
    assert (report["rows_seen"], report["sketches_dropped"]) == (300, 150)
    assert tap(inputs, [outputs["label"]])  # room again after the drain


async def test_one_row_batches_fill_the_window_at_the_traffic_rate_in_few_sketches(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    """Light traffic, one row a batch: the consumer sketches many batches at a time, not one
    sketch a poll; every row still reaches the window, none is dropped, and the last ones
    are folded without more traffic coming."""
    registry = CollectorRegistry()
    settings = DriftSettings(queue_size=64, window_rows=5000)
    monitor = DriftMonitor(settings, registry, poll_seconds=0.01, hold_seconds=0.2)
    monitor.register("m", "1", profile)
    tap = monitor.tap("m", "1", ["label"])
    task = asyncio.create_task(monitor.run())
    try:
        served = 300
        for _ in range(served):  # over about a second: a hundred polls
            inputs, outputs = _rows(rng, 1)
            assert tap(inputs, [outputs["label"]])  # holding never fills the queue
            await asyncio.sleep(0.003)
        deadline = time.monotonic() + 20
        while (report := monitor.report("m", "1")) is not None and report["rows_seen"] < served:
            assert time.monotonic() < deadline, "tapped rows were never folded"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert report is not None
    assert (report["rows_seen"], report["sketches_dropped"]) == (served, 0)
    # A sketch whenever half the queue (32 batches) or 0.2 s waited, not one every poll.
    assert report["sketches"] <= served // 32 + 10


async def test_taps_from_threads_while_the_consumer_drains_lose_nothing(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    """Two batch threads tap while the consumer drains: every batch is either folded or
    counted as dropped, and the stacked groups never mix up rows."""
    settings = DriftSettings(queue_size=256, window_rows=600, keep_reports=1000)
    per_thread, rows = 3000, 2
    inputs, outputs = _rows(rng, rows)
    # Inside the reference's range: the counts of values beyond it are raw counts, which
    # differ between windows of 600 and 628 rows where proportions do not.
    inputs["x"] = np.clip(inputs["x"], -1.0, 1.0)
    # The batch's window, unthreaded and unstacked:
    alone = DriftMonitor(dataclasses.replace(settings, queue_size=1), CollectorRegistry())
    alone.register("m", "1", profile)
    for _ in range(300):
        assert alone.observe("m", "1", inputs, outputs)
        await alone.drain()
    await alone.drain()
    expected = alone.report("m", "1")
    assert expected is not None and len(expected["windows"]) == 1

    monitor = DriftMonitor(settings, CollectorRegistry())
    monitor.register("m", "1", profile)
    tap = monitor.tap("m", "1", ["label"])

    def produce() -> None:
        for i in range(per_thread):
            tap(inputs, [outputs["label"]])
            if i % 16 == 0:
                time.sleep(0.0002)  # let the consumer in now and then, as serving does

    threads = [threading.Thread(target=produce) for _ in range(2)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        await monitor.drain()
        await asyncio.sleep(0.001)
    await monitor.drain()
    report = monitor.report("m", "1")
    assert report is not None
    assert report["rows_seen"] + report["sketches_dropped"] * rows == 2 * per_thread * rows
    assert report["rows_seen"] >= 600
    # Every window holds the tapped batch's two rows in equal numbers: the same proportions.
    for window in report["windows"]:
        assert window["inputs"] == expected["windows"][0]["inputs"]


async def test_sketches_from_another_process_arrive_as_bytes(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    monitor = DriftMonitor(DriftSettings(window_rows=100), CollectorRegistry())
    monitor.register("m", "1", profile)
    sketcher = monitor.sketcher_for("m", "1")
    assert sketcher is not None
    elsewhere = type(sketcher)(profile)  # what another serving process builds
    assert monitor.offer("m", "1", elsewhere.sketch(*_rows(rng, 60)).to_bytes())
    other = build_profile(*_rows(rng, 300, shift=3.0))
    assert monitor.offer("m", "1", type(sketcher)(other).sketch(*_rows(rng, 60)).to_bytes())
    assert monitor.offer("m", "1", b"garbage")
    await monitor.drain()
    report = monitor.report("m", "1")
    assert report is not None
    assert (report["rows_seen"], report["sketches_refused"]) == (60, 2)


async def test_windows_close_by_time_on_the_injected_clock(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    clock = Clock()
    settings = DriftSettings(window_rows=10_000, window_seconds=30.0, min_window_rows=100)
    monitor = DriftMonitor(settings, CollectorRegistry(), clock=clock)
    monitor.register("m", "1", profile)
    monitor.observe("m", "1", *_rows(rng, 150))
    await monitor.drain()
    clock.now += 29.0
    await monitor.drain()
    assert monitor.report("m", "1")["windows"] == []  # type: ignore[index]
    clock.now += 1.0
    await monitor.drain()
    windows = monitor.report("m", "1")["windows"]  # type: ignore[index]
    assert [(w["closed_by"], w["rows"]) for w in windows] == [("time", 150)]


async def test_without_a_reference_the_first_rows_become_one(rng: np.random.Generator) -> None:
    events: list[DriftEvent] = []
    settings = DriftSettings(learn_rows=1000, window_rows=500, consecutive_windows=1)
    monitor = DriftMonitor(settings, CollectorRegistry(), on_change=events.append)
    monitor.register("m", "1", None, names={"x": ["a", "b", "c", "d"]})
    assert monitor.sketcher_for("m", "1") is None
    for _ in range(10):
        inputs, outputs = _rows(rng, 100)
        assert monitor.observe("m", "1", inputs, outputs)
        inputs["x"][:] = 99.0  # the caller reuses its buffers: the monitor kept copies
    await monitor.drain()
    learning = monitor.report("m", "1")
    assert learning is not None and learning["reference"]["source"] == "learning"
    await monitor.close()
    assert [e.kind for e in events] == ["learned"]
    learned = monitor.profile_for("m", "1")
    assert learned is not None and learned.rows == 1000
    assert [f.name for f in learned.inputs] == ["a", "b", "c", "d"]
    assert learned.inputs[0].max is not None and learned.inputs[0].max < 99
    assert monitor.sketcher_for("m", "1") is not None
    for _ in range(5):
        monitor.observe("m", "1", *_rows(rng, 100, shift=2.0))
    await monitor.drain()
    report = monitor.report("m", "1")
    assert report is not None
    calibration = report["reference"].pop("calibration")
    assert report["reference"] == {
        "source": "learned",
        "rows": 1000,
        "fingerprint": monitor.sketcher_for("m", "1").fingerprint,  # type: ignore[union-attr]
    }
    # The learned reference's thresholds are calibrated to its 1,000 rows and 500-row windows.
    assert calibration["window_rows"] == 500 and calibration["warning"] is None
    assert learned.calibration is not None and learned.calibration.window_rows == 500
    window = report["windows"][0]
    assert report["drifting"] and window["drifted_features"] == ["c"]
    psi = {f["name"]: f["psi"] for f in window["inputs"]}
    assert max(psi, key=psi.__getitem__) == "c" and psi["c"] > 1.0
    assert [e.kind for e in events] == ["learned", "drifting"]


async def test_a_failing_event_handler_does_not_stop_the_monitor(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    def broken(event: DriftEvent) -> None:
        raise RuntimeError("webhook down")

    settings = DriftSettings(window_rows=100, consecutive_windows=1)
    monitor = DriftMonitor(settings, CollectorRegistry(), on_change=broken)
    monitor.register("m", "1", profile)
    monitor.observe("m", "1", *_rows(rng, 100, shift=3.0))
    await monitor.drain()
    monitor.observe("m", "1", *_rows(rng, 100))
    await monitor.drain()
    assert monitor.report("m", "1")["rows_seen"] == 200  # type: ignore[index]
