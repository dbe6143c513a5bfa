"""The drift monitor: one asyncio task folding every model version's sketches into windows.

Producers never block and never sketch. A batch worker hands each batch's arrays, by
reference, to its version's bounded queue (`tap`, or `observe`); a receiver of sketches from
other serving processes calls `offer`. A full queue drops the item and counts it against its
model version. The consumer (`run`) drains the queues every `poll_seconds` instead of being
woken per item, so a producer never pays for a cross-thread wake-up, and sketches the queued
batches stacked, in one vectorised pass. Every few dozen batches, the producer stacks the
queued ones itself (`_compact`), so that a poll interval's worth of small per-request
objects is never held at once.

A sketch (and, in a worker, sending it on) costs about the same whatever its rows, so under
light traffic, where batches hold one row, the consumer does not sketch at every poll: a
version's tapped batches wait until a sketch's worth of them is queued or the oldest has
waited `hold_seconds`, then go into one sketch. Every row is still sketched (windows fill
at the full traffic rate), at most `hold_seconds` (plus a poll) after it was served; the
queue's bound and its counted drops are unchanged: the batches never wait for more than
half of it.

A version registered without a reference profile learns one: until `learn_rows` live rows
have arrived, `sketcher_for` answers None and producers offer `RawBatch`es (copies) instead
of sketches; the monitor profiles them with `build_profile`, in a worker thread, then hands
out the version's `Sketcher` and says so (a "learned" event, and `reference.source` in the
report).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelgate.monitor.calibration import size_warning
from modelgate.monitor.drift import DriftEvent, DriftSettings, VersionMonitor, calibrated_for
from modelgate.monitor.profile import ReferenceProfile, build_profile
from modelgate.monitor.sketch import FLAGS, Sketch, Sketcher, SketchMismatch, profile_fingerprint

log = logging.getLogger(__name__)

OnChange = Callable[[DriftEvent], Awaitable[None] | None]


class SketchSink(Protocol):
    """Where a serving process's sketches go when another process's monitor judges them
    (several serving processes, one monitor: gateway/drift_link.py). That judge also learns
    the reference of a version that has none, from every process's rows, and hands it back
    (`DriftMonitor.adopt`): so a learned reference takes `learn_rows` rows of all traffic."""

    def watch(
        self,
        model: str,
        version: str,
        profile: ReferenceProfile | None,
        learned: bool,
        names: Mapping[str, Sequence[str]] | None,
    ) -> None:
        """This process serves the version from now on, sketching against `profile`; None:
        it has none and forwards its rows (`learn`) until the judge adopts one."""

    def send(self, model: str, version: str, sketch: bytes) -> bool:
        """Pass one sketch on without blocking; False: dropped."""

    def learn(self, model: str, version: str, batch: RawBatch) -> bool:
        """Pass on rows to learn the version's reference from, without blocking; False:
        dropped."""

    def forget(self, model: str, version: str) -> None:
        """This process no longer serves the version."""


@dataclass(slots=True)
class RawBatch:
    """A batch's tensors as a batch worker offers them: by reference, to be sketched in
    bulk by the consumer; copied while the version learns its reference."""

    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]


@dataclass(slots=True)
class _Learning:
    needed: int
    names: Mapping[str, Sequence[str]] | None
    batches: list[RawBatch] = field(default_factory=list)
    rows: int = 0
    building: bool = False
    late: list[RawBatch] = field(default_factory=list)  # came while building
    late_rows: int = 0


_Tapped = tuple[Mapping[str, np.ndarray], Sequence[np.ndarray], tuple[str, ...]]


@dataclass(slots=True)
class _Version:
    """Everything the monitor keeps for one model version."""

    model: str
    version: str
    settings: DriftSettings
    source: str  # "registered" or "learned" (or "learning" until it is)
    window: VersionMonitor | None = None
    sketcher: Sketcher | None = None
    learning: _Learning | None = None
    rows: int = 0
    sketches: int = 0
    dropped: int = 0
    refused: int = 0  # sketches built against another profile
    flag_totals: np.ndarray | None = None  # cumulative `Sketch.flags`
    other_totals: np.ndarray | None = None  # cumulative "other" bucket per feature
    # Batches a `tap` queued while sketching: (inputs, outputs in model order, output names),
    # and groups of them already stacked into one (`_compact`).
    tapped: deque[_Tapped] = field(default_factory=deque)
    compacted: deque[_Tapped] = field(default_factory=deque)
    compacted_batches: int = 0  # tapped batches in `compacted` (under the monitor's lock)
    held_since: float | None = None  # when the consumer first saw tapped batches waiting


class DriftMonitor:
    """Per model version drift windows fed by a bounded, never-blocking queue.

    `settings` apply to every model unless `overrides` names it; the queue's size is
    `settings.queue_size`. `on_change` is called (and awaited if it returns an awaitable) on
    the consumer task for every `DriftEvent`; its failures are logged and do not stop the
    monitor. `clock` times the windows (monotonic; tests inject their own). Tapped batches
    wait up to `hold_seconds` (real time) to be sketched together (module docstring).

    With a `sink`, this monitor only sketches: its sketches go to the sink, windows are
    judged elsewhere (the judge reports on them), `report` says only what this process
    sketched and dropped, and its metrics are only the sketches it dropped. A version
    without a reference forwards its rows to the sink (at most `learn_rows`) until the
    judge hands it the reference it learned from every process's rows (`adopt`).
    """

    def __init__(
        self,
        settings: DriftSettings,
        registry: CollectorRegistry,
        *,
        overrides: Mapping[str, DriftSettings] | None = None,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_seconds: float = 0.05,
        hold_seconds: float = 0.25,
        resume: Callable[[str, str], bool] | None = None,
        sink: SketchSink | None = None,
    ) -> None:
        self._settings = settings
        self._overrides = dict(overrides or {})
        self.on_change = on_change  # may be set after construction
        # Whether a version was drifting when the last process stopped (the webhook outbox
        # knows): a restarted monitor carries the episode on, so its end is announced.
        self.resume = resume
        self._clock = clock
        self._sink = sink
        self._poll = poll_seconds
        self._hold = hold_seconds
        self._queue: deque[tuple[str, str, Sketch | RawBatch | bytes]] = deque()
        self._capacity = settings.queue_size
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _Version] = {}
        self._metrics = _DriftCollector(self)
        registry.register(self._metrics)
        self._tasks: set[asyncio.Task[Any]] = set()

    def settings_for(self, model: str) -> DriftSettings:
        return self._overrides.get(model, self._settings)

    # -- lifecycle, from the event loop ---------------------------------------------------

    def register(
        self,
        model: str,
        version: str,
        profile: ReferenceProfile | None,
        *,
        names: Mapping[str, Sequence[str]] | None = None,
        learned: bool = False,
    ) -> None:
        """Watch a version from now on; with no profile it learns one from live rows
        (`names` then names the learned features per tensor, as in `build_profile`);
        `learned`: the profile given was learned from live rows (by another process)."""
        settings = self.settings_for(model)
        source = "learning" if profile is None else "learned" if learned else "registered"
        state = _Version(model, version, settings, source)
        if profile is None:
            state.learning = _Learning(settings.learn_rows, names)
        else:  # calibrated here if not yet for these settings (`prepare` does it off-loop)
            self._install(state, profile)
        self._versions[(model, version)] = state
        if self._sink is not None:
            self._sink.watch(model, version, profile, learned, names)

    def prepare(self, model: str, profile: ReferenceProfile) -> ReferenceProfile:
        """`profile` calibrated for `model`'s settings: for a worker thread before
        `register`, which otherwise calibrates on the caller's (serving) loop."""
        return calibrated_for(profile, self.settings_for(model))

    def unregister(self, model: str, version: str) -> None:
        """Stop watching a version (its queued items are dropped when they come up)."""
        if self._versions.pop((model, version), None) is not None and self._sink is not None:
            self._sink.forget(model, version)

    def adopt(self, model: str, version: str, profile: ReferenceProfile) -> None:
        """Sketch a watched version against `profile` from now on: the reference another
        process learned, so that every process's sketches merge (from the event loop)."""
        state = self._versions.get((model, version))
        if state is None or (
            state.window is not None
            and state.window.sketcher.fingerprint == profile_fingerprint(profile)
        ):
            return
        self._install(state, profile)
        state.source, state.learning = "learned", None

    def sketcher_for(self, model: str, version: str) -> Sketcher | None:
        """The version's sketcher, or None while it learns its reference (or is unknown)."""
        state = self._versions.get((model, version))
        return None if state is None else state.sketcher

    # -- the producers' side: any thread, never blocks ------------------------------------

    def observe(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> bool:
        """Offer one batch's tensors; the call for a batch worker after each run.

        The arrays are queued by reference (the caller must not write to them again:
        ONNX Runtime's outputs and a batch's inputs never are) and sketched by the consumer,
        many batches at a time: a sketch costs tens of microseconds whatever its size, so
        one per batch of one row would cost more than serving the row. False when it was
        dropped or the version is not watched.
        """
        state = self._versions.get((model, version))
        if state is None:
            return False
        if state.sketcher is not None:
            return self._queue_tapped(state, (inputs, list(outputs.values()), tuple(outputs)))
        learning = state.learning
        if learning is None or learning.building or learning.rows >= learning.needed:
            return False
        copies = RawBatch(  # kept until the profile is built: the monitor's own copies
            {k: np.array(v) for k, v in inputs.items()},
            {k: np.array(v) for k, v in outputs.items()},
        )
        return self.offer(model, version, copies)

    def tap(
        self, model: str, version: str, output_names: Sequence[str]
    ) -> Callable[[Mapping[str, np.ndarray], Sequence[np.ndarray]], bool]:
        """`observe` bound to one version, for its batch worker: outputs come as the model's
        list, in `output_names` order. The common case (sketching) is one look-up and an
        append of the arrays as they are, to the version's own queue (and, every
        `_COMPACT_EVERY`-th time, stacking what is queued); the consumer names them."""
        key = (model, version)
        names = tuple(output_names)
        versions = self._versions

        def observe(inputs: Mapping[str, np.ndarray], outputs: Sequence[np.ndarray]) -> bool:
            state = versions.get(key)
            if state is None or state.sketcher is None:  # unknown, or learning: copies
                return self.observe(model, version, inputs, dict(zip(names, outputs, strict=True)))
            return self._queue_tapped(state, (inputs, outputs, names))

        return observe

    def _queue_tapped(self, state: _Version, batch: _Tapped) -> bool:
        tapped = state.tapped
        if len(tapped) + state.compacted_batches < self._capacity:  # no lock: deque appends
            tapped.append(batch)  # are atomic, and the bound may be off by a racing batch
            if len(tapped) >= _COMPACT_EVERY:
                self._compact(state)
            return True
        with self._lock:  # counts from several threads
            state.dropped += 1
        return False

    def _compact(self, state: _Version) -> None:
        """Stack the version's tapped batches into one, in the producer.

        Each tapped batch holds a few small objects (a dict, a list, arrays and the request
        bytes under them): hundreds of them held for a poll interval spill out of the CPU
        caches, and the requests served meanwhile pay for it (1,024 held cost 2.5 µs a request
        in a warm loop; 64, nothing measurable). Stacked, the same rows are a few arrays.
        """
        taken = _taken(state.tapped, _COMPACT_EVERY)
        stacked = _stacked(taken)
        with self._lock:  # the count must not lose a producer's or the consumer's update
            state.compacted.extend(stacked)
            state.compacted_batches += len(taken)

    def offer(self, model: str, version: str, item: Sketch | RawBatch | bytes) -> bool:
        """Queue a sketch (or its `to_bytes` form, from another process) or a learning batch.

        Never blocks; False when the queue is full, and the drop is counted.
        """
        queue = self._queue
        if len(queue) < self._capacity:  # deque appends are atomic: no lock on this path
            queue.append((model, version, item))
            return True
        state = self._versions.get((model, version))
        if state is not None:
            with self._lock:  # counts from several threads
                state.dropped += 1
        return False

    # -- the consumer ---------------------------------------------------------------------

    async def run(self) -> None:
        """The one consumer task: drain, fold, close windows by time; until cancelled."""
        while True:
            try:
                await self._drain(hold=True)
            except Exception:  # one bad fold must not end monitoring for good
                log.exception("drift monitor: draining the queue failed")
            await asyncio.sleep(self._poll)

    async def drain(self) -> None:
        """Fold everything queued so far, then close windows whose time is up."""
        await self._drain(hold=False)

    async def _drain(self, *, hold: bool) -> None:
        """`drain`; with `hold`, a version's tapped batches stay queued until a sketch's
        worth of them waits or they have waited `hold_seconds`."""
        now = self._clock()
        queue = self._queue
        items = [queue.popleft() for _ in range(len(queue))]  # producers may append meanwhile
        for model, version, item in items:
            state = self._versions.get((model, version))
            if state is None:
                continue
            if type(item) is not RawBatch:
                await self._emit(self._fold(state, item, now))  # type: ignore[arg-type]
            elif state.sketcher is None:
                self._learn(state, item)
            else:  # a learning copy that came up after its profile was built
                await self._fold_batch(state, item, now)
        for state in list(self._versions.values()):
            if hold and self._holding(state):
                continue
            with self._lock:
                taken = _taken(state.compacted, len(state.compacted))
                state.compacted_batches = 0
            taken += _taken(state.tapped, len(state.tapped))
            if taken:
                for inputs, outputs, names in _stacked(taken):
                    batch = RawBatch(inputs, dict(zip(names, outputs, strict=True)))
                    await self._fold_batch(state, batch, now)
        for state in list(self._versions.values()):
            if state.window is not None:
                await self._emit(state.window.tick(now))

    def _holding(self, state: _Version) -> bool:
        """Whether the version's tapped batches wait for more: fewer than a sketch's worth
        (a batch holds a row at least) and than half the queue's bound (holding must not
        make it drop), and for less than `hold_seconds`."""
        waiting = len(state.tapped) + state.compacted_batches
        enough = max(1, min(_sketch_rows(state.settings), self._capacity // 2))
        if waiting == 0:
            state.held_since = None
            return True
        now = time.monotonic()
        if state.held_since is None:
            state.held_since = now
        if waiting < enough and now - state.held_since < self._hold:
            return True
        state.held_since = None
        return False

    async def _fold_batch(self, state: _Version, batch: RawBatch, now: float) -> None:
        """Sketch `batch` in chunks of a twentieth of a window, at most `_SKETCH_ROWS` rows
        (so that windows still close near their row count), and fold each sketch in."""
        sketcher = state.sketcher
        assert sketcher is not None
        chunk = _sketch_rows(state.settings)
        for start in range(0, max(_rows(batch), 1), chunk):
            end = start + chunk
            try:
                sketch = sketcher.sketch(
                    {k: v[start:end] for k, v in batch.inputs.items()},
                    {k: v[start:end] for k, v in batch.outputs.items()},
                    at=time.time(),
                )
            except Exception:  # a sketcher bug never stops the monitor: counted, skipped
                log.exception("%s/%s: sketching rows %d-%d failed", state.model,
                              state.version, start, end)  # fmt: skip
                state.refused += 1
                continue
            await self._emit(self._fold(state, sketch, now))
            await asyncio.sleep(0)  # this runs on the serving loop: let requests through

    def _fold(self, state: _Version, item: Sketch | bytes, now: float) -> list[DriftEvent]:
        window = state.window
        if window is None:  # still learning: a sketch cannot be judged yet
            return []
        if self._sink is not None:
            assert isinstance(item, Sketch)  # a forwarding monitor is offered none as bytes
            if not self._sink.send(state.model, state.version, item.to_bytes()):
                with self._lock:
                    state.dropped += 1
            return []
        try:
            sketch = Sketch.from_bytes(item) if isinstance(item, bytes) else item
            events = window.add(sketch, now)
        except (SketchMismatch, ValueError) as exc:
            state.refused += 1
            log.warning("%s/%s: sketch refused: %s", state.model, state.version, exc)
            return []
        state.rows += sketch.rows
        state.sketches += 1
        assert state.flag_totals is not None and state.other_totals is not None
        state.flag_totals += sketch.flags
        state.other_totals += sketch.bins[window.sketcher.last_bins]
        return events

    def _learn(self, state: _Version, batch: RawBatch) -> None:
        learning = state.learning
        if learning is None:
            return
        rows = _rows(batch)
        if learning.building:  # folded once the reference is built (learn_rows at most)
            if learning.late_rows < learning.needed:
                learning.late.append(batch)
                learning.late_rows += rows
            else:
                with self._lock:
                    state.dropped += 1
            return
        if self._sink is not None:  # the judge learns from every process's rows
            if self._sink.learn(state.model, state.version, batch):
                learning.rows += rows
                state.rows += rows
            else:
                with self._lock:
                    state.dropped += 1
            return
        learning.batches.append(batch)
        learning.rows += rows
        state.rows += rows
        if learning.rows >= learning.needed:
            learning.building = True
            task = asyncio.get_running_loop().create_task(self._build(state, learning))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _build(self, state: _Version, learning: _Learning) -> None:
        try:
            profile = await asyncio.to_thread(
                _profile_of, learning.batches, learning.names, state.settings
            )
        except Exception:
            # Inconsistent batches (a changed model?): start learning again from scratch.
            log.exception("%s/%s: learning a reference failed", state.model, state.version)
            state.learning = _Learning(learning.needed, learning.names)
            return
        if self._versions.get((state.model, state.version)) is not state:
            return  # unregistered meanwhile
        self._install(state, profile)
        state.source, state.learning = "learned", None
        warning = size_warning(profile)
        if warning is not None:
            log.warning("%s/%s: %s", state.model, state.version, warning)
        await self._emit([DriftEvent(state.model, state.version, "learned", None)])
        now = self._clock()
        for batch in learning.late:
            await self._fold_batch(state, batch, now)

    def _install(self, state: _Version, profile: ReferenceProfile) -> None:
        state.window = VersionMonitor(
            state.model, state.version, profile, state.settings, self._clock()
        )
        if self.resume is not None:
            try:
                state.window.drifting = self.resume(state.model, state.version)
            except Exception:  # an unreadable outbox: start clear, as with none
                log.exception("%s/%s: could not read the previous drift state", state.model,
                              state.version)  # fmt: skip
        state.sketcher = state.window.sketcher
        state.flag_totals = np.zeros((len(profile.features()), len(FLAGS)), dtype=np.int64)
        state.other_totals = np.zeros(len(profile.features()), dtype=np.int64)

    async def _emit(self, events: list[DriftEvent]) -> None:
        for event in events:
            if event.kind == "still_drifting":
                level = logging.DEBUG
            else:
                level = logging.WARNING if event.kind == "drifting" else logging.INFO
            log.log(level, "%s/%s: %s", event.model, event.version, event.kind)
            if self.on_change is None:
                continue
            try:
                result = self.on_change(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("drift event handler failed")

    async def close(self) -> None:
        """Wait for reference profiles being built (call after cancelling `run`)."""
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    # -- readers --------------------------------------------------------------------------

    def profile_for(self, model: str, version: str) -> ReferenceProfile | None:
        """The reference a version is judged against (learned or registered), if any yet."""
        state = self._versions.get((model, version))
        return None if state is None or state.window is None else state.window.profile

    def report(self, model: str, version: str) -> dict[str, Any] | None:
        """The version's state and its last windows' reports (newest first), as JSON;
        None when the version is not watched."""
        state = self._versions.get((model, version))
        if state is None:
            return None
        window, learning = state.window, state.learning
        reference: dict[str, Any] = {"source": state.source}
        if learning is not None:
            reference.update(rows_learned=learning.rows, rows_needed=learning.needed)
        elif window is not None:
            reference.update(rows=window.profile.rows, fingerprint=window.sketcher.fingerprint)
            calibration = window.profile.calibration
            if calibration is not None and window.limits is not None:
                reference["calibration"] = {
                    "window_rows": calibration.window_rows,
                    "false_alarm_rate": calibration.false_alarm_rate,
                    "resamples": calibration.resamples,
                    "min_reference_rows": calibration.min_reference_rows,
                    "warning": size_warning(window.profile),
                }
        return {
            "model": model,
            "version": version,
            "reference": reference,
            "drifting": bool(window and window.drifting),
            "rows_seen": state.rows,
            "sketches": state.sketches,
            "sketches_dropped": state.dropped,
            "sketches_refused": state.refused,
            "pending_rows": window.pending_rows if window else 0,
            "settings": {
                "window_rows": state.settings.window_rows,
                "window_seconds": state.settings.window_seconds,
                "min_drifted_features": state.settings.min_drifted_features,
                "consecutive_windows": state.settings.consecutive_windows,
                "outputs_count": state.settings.outputs_count,
                "threshold_mode": state.settings.threshold_mode,
                "false_alarm_rate": state.settings.false_alarm_rate,
                "thresholds": state.settings.thresholds(),
            },
            "windows": window.recent_json() if window else [],
        }

    def _states(self) -> list[_Version]:
        return list(self._versions.values())


_SKETCH_ROWS = 512
_COMPACT_EVERY = 32  # tapped batches a producer stacks into one


def _sketch_rows(settings: DriftSettings) -> int:
    """Rows in one sketch at most: a twentieth of a window, so that windows still close near
    their row count, and at most `_SKETCH_ROWS`."""
    return min(_SKETCH_ROWS, max(1, settings.window_rows // 20))


def _taken(queue: deque[_Tapped], most: int) -> list[_Tapped]:
    """Up to `most` batches from the front of `queue`; fewer when another thread takes the
    rest first (producers and the consumer both take from `tapped`)."""
    taken: list[_Tapped] = []
    with contextlib.suppress(IndexError):
        for _ in range(most):
            taken.append(queue.popleft())
    return taken


def _stacked(tapped: list[_Tapped]) -> list[_Tapped]:
    """Queued batches as one, stacked along the rows, so that they are sketched in one
    vectorised pass; as they were when their shapes do not stack (or there are none)."""
    if len(tapped) < 2:
        return tapped
    inputs = [item[0] for item in tapped]
    outputs = [item[1] for item in tapped]
    names = tapped[0][2]
    try:
        stacked_inputs = {n: np.concatenate([t[n] for t in inputs]) for n in inputs[0]}
        stacked_outputs = [np.concatenate([o[i] for o in outputs]) for i in range(len(names))]
    except (ValueError, KeyError, IndexError):
        return tapped
    return [(stacked_inputs, stacked_outputs, names)]


def _rows(batch: RawBatch) -> int:
    for part in (batch.inputs, batch.outputs):
        for tensor in part.values():
            shape = getattr(tensor, "shape", None)
            if shape is None:
                shape = np.shape(tensor)
            return int(shape[0]) if shape else 1
    return 0


def _profile_of(
    batches: list[RawBatch], names: Mapping[str, Sequence[str]] | None, settings: DriftSettings
) -> ReferenceProfile:
    def joined(part: str) -> dict[str, np.ndarray]:
        tensors = [getattr(b, part) for b in batches]
        return {name: np.concatenate([t[name] for t in tensors]) for name in tensors[0]}

    profile = build_profile(joined("inputs"), joined("outputs"), names=names)
    return calibrated_for(profile, settings)  # here, in the worker thread


class _DriftCollector(Collector):
    """The monitor's series, read from its state at scrape time (so an unregistered version
    disappears, and the consumer pays nothing per sketch for metrics)."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        mv, mvf = ["model", "version"], ["model", "version", "feature"]
        scores = {
            name: GaugeMetricFamily(f"modelgate_drift_{name}", text, labels=mvf)
            for name, text in (
                ("psi", "Population stability index of the last closed window."),
                ("js", "Jensen-Shannon distance (base 2) of the last closed window."),
                ("ks", "Binned Kolmogorov-Smirnov statistic of the last closed window."),
                (
                    "wasserstein",
                    "Binned Wasserstein distance, in reference standard deviations, of the "
                    "last closed window.",
                ),
            )
        }
        drifted = GaugeMetricFamily(
            "modelgate_drift_feature_drifted",
            "1 when the feature crossed a threshold in the last closed window.",
            labels=mvf,
        )
        drifting = GaugeMetricFamily(
            "modelgate_drift_drifting",
            "1 while the version is drifting (K features in M consecutive windows).",
            labels=mv,
        )
        rows = CounterMetricFamily("modelgate_drift_rows", "Rows the monitor folded.", labels=mv)
        windows = CounterMetricFamily(
            "modelgate_drift_windows", "Drift windows closed and scored.", labels=mv
        )
        dropped = CounterMetricFamily(
            "modelgate_drift_sketches_dropped",
            "Sketches dropped because the monitor's queue was full (serving never waits).",
            labels=mv,
        )
        refused = CounterMetricFamily(
            "modelgate_drift_sketches_refused",
            "Sketches refused: built against another reference profile, or malformed.",
            labels=mv,
        )
        invalid = CounterMetricFamily(
            "modelgate_drift_invalid_values",
            "Values that are missing (NaN, None, empty, absent), +/-Inf, outside the reference "
            "range, invalid (not a number where one belongs) or an unseen category (other).",
            labels=[*mvf, "kind"],
        )
        if self._monitor._sink is not None:  # the judging process reports the rest
            for state in self._monitor._states():
                dropped.add_metric([state.model, state.version], state.dropped)
            yield dropped
            return
        for state in self._monitor._states():
            labels = [state.model, state.version]
            drifting.add_metric(labels, float(bool(state.window and state.window.drifting)))
            rows.add_metric(labels, state.rows)
            windows.add_metric(labels, state.window.windows if state.window else 0)
            dropped.add_metric(labels, state.dropped)
            refused.add_metric(labels, state.refused)
            if state.window is None:
                continue
            features = state.window.sketcher.features
            flag_totals, other_totals = state.flag_totals, state.other_totals
            if flag_totals is not None and other_totals is not None:
                flags, others = flag_totals.copy(), other_totals.copy()
                for i, feature in enumerate(features):
                    for j, kind in enumerate(FLAGS):
                        invalid.add_metric([*labels, feature.name, kind], int(flags[i, j]))
                    if feature.kind == "categorical":
                        invalid.add_metric([*labels, feature.name, "other"], int(others[i]))
            last = state.window.reports[-1] if state.window.reports else None
            for score in last.features if last else ():
                feature_labels = [*labels, score.name]
                for name, family in scores.items():
                    value = getattr(score, name)
                    if value is not None:
                        family.add_metric(feature_labels, value)
                drifted.add_metric(feature_labels, float(score.drifted))
        yield from (*scores.values(), drifted, drifting, rows, windows, dropped, refused, invalid)
