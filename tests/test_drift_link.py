"""Drift monitoring over workers, in one process: two workers' monitors that sketch and the
supervisor's plane that judges, joined by real pipes (the end-to-end test with worker
processes is in test_drift_serving.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelgate.gateway import drift_link
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.drift_link import DriftPlane, DriftUplink
from modelgate.gateway.settings import ModelServingSettings, ServerSettings
from modelgate.monitor.drift import DriftSettings
from modelgate.monitor.monitor import DriftMonitor
from modelgate.monitor.profile import build_profile
from modelgate.monitor.sketch import profile_fingerprint

DRIFT = DriftSettings(window_rows=1000, window_seconds=3600, learn_rows=400, queue_size=64)


def _rows(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)}


def _read(channel: Connection, handle: Callable[[tuple[object, ...]], None]) -> None:
    try:
        while True:
            handle(channel.recv())
    except (EOFError, OSError):
        return


class _Supervisor:
    """The supervisor's side: the plane, and a channel to each worker (`connect` replaces
    worker `i`'s, as a restart does)."""

    def __init__(self) -> None:
        self.ours: dict[int, Connection] = {}
        self.heard: Counter[str] = Counter()  # the kinds of the workers' messages
        self._ends: list[Connection] = []
        settings = ServerSettings(models=ModelServingSettings(drift=DRIFT))
        self.plane = DriftPlane(settings, CollectorRegistry(), None, lambda: dict(self.ours))
        self.plane.start()

    def connect(self, i: int) -> Connection:
        """A new channel for worker `i`; its worker end."""
        ours, theirs = multiprocessing.Pipe()
        self.ours[i] = ours
        self._ends += [ours, theirs]
        threading.Thread(
            target=_read, args=(ours, lambda m: self._receive(i, m)), daemon=True
        ).start()
        return theirs

    def _receive(self, worker: int, message: tuple[object, ...]) -> None:
        self.heard[str(message[0])] += 1
        self.plane.receive(worker, message)

    def close(self) -> None:
        self.plane.stop()
        for end in self._ends:
            end.close()


@pytest.fixture
def supervisor() -> Iterator[_Supervisor]:
    supervisor = _Supervisor()
    yield supervisor
    supervisor.close()


async def _until(check: Callable[[], object]) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class _Worker:
    """A worker's monitor that sketches (and its uplink), on the test's event loop."""

    def __init__(self, channel: Connection, seed: int) -> None:
        self.uplink = uplink = DriftUplink(channel, DRIFT.queue_size)
        self.monitor = DriftMonitor(DRIFT, CollectorRegistry(), poll_seconds=0.01, sink=uplink)
        uplink.attach(self.monitor, lambda model, version: "")
        threading.Thread(target=_read, args=(channel, uplink.receive), daemon=True).start()
        self.rng = np.random.default_rng(seed)
        self.task = asyncio.create_task(self.monitor.run())

    def serve(self, rows: int) -> None:
        assert self.monitor.observe("m", "1", *_rows(self.rng, rows))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _fingerprint(monitor: DriftMonitor) -> str | None:
    profile = monitor.profile_for("m", "1")
    return None if profile is None else profile_fingerprint(profile)


async def test_the_supervisor_learns_one_reference_from_learn_rows_of_all_workers_rows(
    supervisor: _Supervisor,
) -> None:
    judge = supervisor.plane
    workers = [_Worker(supervisor.connect(i), 10 + i) for i in range(2)]
    try:
        for worker in workers:
            worker.monitor.register("m", "1", None)
        # Half of learn_rows each: together they are enough.
        for worker in workers:
            worker.serve(DRIFT.learn_rows // 2)
        await _until(lambda: judge.monitor.profile_for("m", "1") is not None)
        judged = _fingerprint(judge.monitor)
        await _until(lambda: all(_fingerprint(w.monitor) == judged for w in workers))
        report = judge.monitor.report("m", "1")
        assert report is not None and report["reference"]["source"] == "learned"
        assert report["reference"]["rows"] == DRIFT.learn_rows
        assert report["rows_seen"] == DRIFT.learn_rows

        # From now on every row counts in the one window, whichever worker served it.
        for _ in range(10):
            for worker in workers:
                worker.serve(50)
        await _until(lambda: (judge.monitor.report("m", "1") or {})["rows_seen"] == 1400)
        report = judge.monitor.report("m", "1")
        assert report is not None and len(report["windows"]) == 1

        # And each worker answers with the supervisor's report, which both feed; asked of
        # a version the supervisor does not watch, with None.
        for worker in workers:
            assert await worker.uplink.judged_report("m", "1") == {**report, "workers": 2}
            assert await worker.uplink.judged_report("m", "2") is None

        # Many callers at once (a flood of GET .../drift) share one question.
        asked = supervisor.heard["drift?"]
        answers = await asyncio.gather(
            *(workers[0].uplink.judged_report("m", "1") for _ in range(100))
        )
        assert all(answer == {**report, "workers": 2} for answer in answers)
        assert supervisor.heard["drift?"] == asked + 1
    finally:
        for worker in workers:
            await worker.stop()


async def test_a_version_is_monitored_while_a_live_worker_watches_it(
    supervisor: _Supervisor, rng: np.random.Generator
) -> None:
    """Watched from registration (traffic or not) until retired or dead; a restarted worker
    joins the same windows; with no watcher left the version's state goes."""
    judge = supervisor.plane
    profile = build_profile(*_rows(rng, 2000))
    workers = [_Worker(supervisor.connect(i), 20 + i) for i in range(2)]
    try:
        for worker in workers:
            worker.monitor.register("m", "1", profile)
        workers[0].serve(300)  # only one of them serves traffic
        await _until(lambda: (judge.monitor.report("m", "1") or {}).get("rows_seen") == 300)

        async def watching(count: int | None) -> None:
            """Until worker 1 is told that `count` workers watch the version."""
            deadline = time.monotonic() + 20
            while True:
                report = await workers[1].uplink.judged_report("m", "1")
                if (None if report is None else report["workers"]) == count:
                    return
                assert time.monotonic() < deadline, f"not {count} watching in time"
                await asyncio.sleep(0.02)

        await watching(2)
        judge.lost(0)  # worker 0 died: worker 1 still serves the version, history and all
        await watching(1)
        assert (judge.monitor.report("m", "1") or {}).get("rows_seen") == 300

        await workers[0].stop()  # its replacement, on the same channel, joins the windows
        workers[0] = _Worker(supervisor.connect(0), 30)
        workers[0].monitor.register("m", "1", profile)
        await watching(2)
        workers[0].serve(200)
        await _until(lambda: (judge.monitor.report("m", "1") or {}).get("rows_seen") == 500)

        judge.lost(0)
        judge.lost(1)  # nobody serves it any more: monitoring stops
        await _until(lambda: judge.monitor.report("m", "1") is None)
        await watching(None)

        for worker in workers:  # loaded again, then retired everywhere
            worker.monitor.register("m", "1", profile)
        await watching(2)
        workers[0].monitor.unregister("m", "1")
        await watching(1)
        workers[1].monitor.unregister("m", "1")
        await _until(lambda: judge.monitor.report("m", "1") is None)
    finally:
        for worker in workers:
            await worker.stop()


async def test_a_report_the_supervisor_does_not_answer_in_time_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(drift_link, "STATS_SECONDS", 0.1)
    ours, theirs = multiprocessing.Pipe()  # nobody answers on `ours`
    with ours, theirs:
        uplink = DriftUplink(theirs, DRIFT.queue_size)
        with pytest.raises(InferenceError) as raised:
            await uplink.judged_report("m", "1")
        assert raised.value.code is ErrorCode.UNAVAILABLE
        assert ours.recv()[0] == "drift?"  # it was asked


async def test_a_full_uplink_drops_and_counts_and_never_waits(rng: np.random.Generator) -> None:
    """Nobody reads the supervisor's end: the pipe fills, then the uplink's queue, then
    the monitor drops sketches and counts them; serving goes on."""
    ours, theirs = multiprocessing.Pipe()
    uplink = DriftUplink(theirs, capacity=4)
    registry = CollectorRegistry()
    settings = DriftSettings(window_rows=200, queue_size=4096)
    monitor = DriftMonitor(settings, registry, poll_seconds=0.01, sink=uplink)
    monitor.register("m", "1", build_profile(*_rows(rng, 2000)))
    task = asyncio.create_task(monitor.run())
    try:
        for _ in range(400):
            monitor.observe("m", "1", *_rows(rng, 40))
            await asyncio.sleep(0)
        labels = {"model": "m", "version": "1"}
        name = "modelgate_drift_sketches_dropped_total"
        await _until(lambda: (registry.get_sample_value(name, labels) or 0) > 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ours.close()
        theirs.close()
