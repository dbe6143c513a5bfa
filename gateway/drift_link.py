"""A worker's link to the supervisor: drift monitoring and statistics over all workers.

Drift: the workers sketch, the supervisor judges.

A worker's drift monitor only sketches its batches; its sketches travel to the supervisor
over the worker's channel (`DriftUplink`). The supervisor runs one drift monitor for all of
them (`DriftPlane`): one window per model version, filled by every worker's rows, and the
webhook outbox, so one drift is one event. A worker's `GET .../drift` asks the supervisor
for its report: the same view whichever worker takes the call, and nothing sent while nobody
asks.

A version is monitored while at least one live worker watches it: a worker watches from
the moment it registers the version (it serves it, traffic or not) until it forgets it
(retired) or dies. The plane keeps, per version, the set of workers watching it; a dead or
restarted worker's watches are dropped at once (the restarted one watches again as it loads
the version), and the version with no watcher left is unregistered: its windows stop and its
state is freed. While a survivor watches, nothing is lost, and a restarted worker's sketches
merge into the same windows, so a drift stays one episode (one webhook).

A version without a reference is learned by the supervisor, from `learn_rows` rows of all
workers' traffic: each worker forwards copies of its rows (at most `learn_rows`) instead of
sketches; the supervisor builds the profile and sends it to every worker watching the
version ("adopt"), which sketch against it from then on (a worker that starts later gets it
when it watches). The learned reference lives in the supervisor, as a registered one lives in
the registry: one reference per version, so every worker's sketches merge.

Nothing here waits on the request path: the monitor hands sketches to the uplink from its
own task, the uplink queues at most `capacity` of them and drops (and counts) the rest,
and a sender thread writes them to the channel.

Messages, worker to supervisor: ("listening", metrics address), ("watch", model, version,
profile JSON or None, learned, feature names) when it registers a version, ("url", model,
version, webhook URL) before the version's first sketch or rows, ("sketches", [(model,
version, sketch bytes or (inputs, outputs) to learn from), ...]), ("forget", model, version),
("drift?", id, model, version) for `GET .../drift`. Supervisor to worker: ("drift!", id,
report, or None when it does not watch the version), ("adopt", model, version, profile
JSON): the reference the supervisor judges the version by, when the worker has none or
another one. The same channel carries the stage changes the supervisor pushes
(gateway/route_link.py): ("routes", ...), ("switch", ...) and the worker's ("prepared", ...).

Statistics (the statistics extension answers for all workers): the worker that takes the
call sends ("stats?", id, model, version); the supervisor asks the other workers
("stats?", (origin, id), model, version), they answer ("stats", (origin, id), statistics),
and the supervisor sends the origin their sum, ("stats!", id, statistics), at the latest
after STATS_SECONDS (a worker that does not answer in time is left out, as in /metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from modelgate.gateway.alerting import DriftAlerts, notifier_for
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.service import InferenceService
from modelgate.gateway.core.statistics import merged_statistics
from modelgate.gateway.core.types import ModelStatistics
from modelgate.gateway.loop_thread import LoopThread
from modelgate.gateway.settings import ServerSettings
from modelgate.monitor.drift import DriftEvent
from modelgate.monitor.monitor import DriftMonitor, RawBatch
from modelgate.monitor.profile import ReferenceProfile
from modelgate.monitor.sketch import profile_fingerprint

log = logging.getLogger(__name__)

Message = tuple[Any, ...]
Key = tuple[str, str]

STATS_SECONDS = 1.0  # how long the supervisor waits for the workers' statistics
_UNANSWERED = object()  # a question the supervisor did not answer in time


class DriftUplink:
    """A worker's `SketchSink`: sketches to the supervisor, never blocking the caller.

    At most `capacity` sketches wait for the sender thread; beyond that `send` drops.
    `post` sends any other message (it may block: for the rare ones, off the event loop).
    """

    def __init__(self, channel: Connection, capacity: int) -> None:
        self._channel = channel
        self._capacity = capacity
        self._lock = threading.Lock()  # several threads send on the channel
        self._control: deque[Message] = deque()
        self._sketches: deque[tuple[str, str, bytes | tuple[Any, Any]]] = deque()
        self._wake = threading.Event()
        self._with_url: set[Key] = set()  # versions whose webhook URL was sent
        self._monitor: DriftMonitor | None = None
        self._url_for: Callable[[str, str], str] = lambda model, version: ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service: InferenceService | None = None
        self._asked = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}  # questions to the supervisor
        self._asking: dict[Key, asyncio.Future[Any]] = {}  # drift reports asked for
        threading.Thread(target=self._run, name="drift-uplink", daemon=True).start()

    def attach(self, monitor: DriftMonitor, url_for: Callable[[str, str], str]) -> None:
        """The worker's monitor (it takes the supervisor's reports) and its webhook URLs."""
        self._monitor, self._url_for = monitor, url_for

    def serving(self, service: InferenceService) -> None:
        """The worker's service, on its running event loop: its statistics go to the other
        workers, and it asks for theirs."""
        self._service, self._loop = service, asyncio.get_running_loop()
        service.peer_statistics = self._peer_statistics
        service.judged_report = self.judged_report

    async def _peer_statistics(
        self, model: str | None, version: str | None
    ) -> list[ModelStatistics]:
        stats: list[ModelStatistics] = await self._ask("stats?", model, version, [])
        return stats  # [] when the supervisor is stopping: this worker's own counts

    async def judged_report(self, model: str, version: str) -> dict[str, Any] | None:
        """The supervisor's drift report of a version, the same for every worker; None when
        it does not watch the version (yet); UNAVAILABLE when it does not answer in time.
        Callers asking while a question about the version is out share its answer: a flood
        of `GET .../drift` costs the supervisor one report per round trip, and the worker
        one waiting question."""
        key = (model, version)
        asking = self._asking.get(key)
        if asking is None:
            asking = asyncio.ensure_future(self._ask("drift?", model, version, _UNANSWERED))
            self._asking[key] = asking
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
        report = await asyncio.shield(asking)  # one caller gone (a client that hangs up)
        if report is _UNANSWERED:  # does not end the others' question
            raise InferenceError(
                ErrorCode.UNAVAILABLE,
                "the drift monitor (in the supervising process) did not answer in time; retry",
            )
        return cast(dict[str, Any] | None, report)

    async def _ask(self, kind: str, model: str | None, version: str | None, late: Any) -> Any:
        """The supervisor's answer to a question, or `late` after 2 * STATS_SECONDS."""
        asked = next(self._asked)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[asked] = answer
        self.enqueue((kind, asked, model, version))
        try:
            return await asyncio.wait_for(answer, 2 * STATS_SECONDS)
        except TimeoutError:
            return late
        finally:
            self._waiting.pop(asked, None)

    def _answer(self, key: object, model: str | None, version: str | None) -> None:
        assert self._service is not None
        try:
            stats = self._service.model_statistics(model, version)
        except InferenceError:  # not (or not yet) served here: nothing to add
            stats = []
        self.enqueue(("stats", key, stats))

    def _answered(self, asked: int, result: Any) -> None:
        answer = self._waiting.get(asked)
        if answer is not None and not answer.done():
            answer.set_result(result)

    def enqueue(self, message: Message) -> None:
        """Queue a message for the sender thread (never blocks: for the event loop)."""
        self._control.append(message)
        self._wake.set()

    # -- SketchSink, on the worker's event loop -------------------------------------------

    def watch(
        self,
        model: str,
        version: str,
        profile: ReferenceProfile | None,
        learned: bool,
        names: Mapping[str, Sequence[str]] | None,
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the supervisor's "adopt" comes on this loop
            self._loop = asyncio.get_running_loop()
        self._with_url.discard((model, version))
        as_json = None if profile is None else profile.to_json()
        self.enqueue(("watch", model, version, as_json, learned, names))

    def send(self, model: str, version: str, sketch: bytes) -> bool:
        return self._queue(model, version, sketch)

    def learn(self, model: str, version: str, batch: RawBatch) -> bool:
        return self._queue(model, version, (dict(batch.inputs), dict(batch.outputs)))

    def _queue(self, model: str, version: str, item: bytes | tuple[Any, Any]) -> bool:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        key = (model, version)
        if key not in self._with_url:  # serving by now: its tags are known
            self._control.append(("url", model, version, self._url_for(model, version)))
            self._with_url.add(key)
        if len(self._sketches) >= self._capacity:
            return False
        self._sketches.append((model, version, item))
        self._wake.set()
        return True

    def forget(self, model: str, version: str) -> None:
        self._with_url.discard((model, version))
        self.enqueue(("forget", model, version))

    # -- the channel ----------------------------------------------------------------------

    def post(self, message: Message) -> None:
        """Send one message now (blocking while the channel is full)."""
        with self._lock:
            self._channel.send(message)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while self._control:
                    self.post(self._control.popleft())
                if self._sketches:
                    batch = [self._sketches.popleft() for _ in range(len(self._sketches))]
                    self.post(("sketches", batch))
        except (OSError, ValueError):  # the supervisor has gone: the worker drains anyway
            return

    def receive(self, message: Message) -> None:
        """A message from the supervisor (on the thread that reads the channel)."""
        monitor, loop = self._monitor, self._loop
        if monitor is None or loop is None:
            return
        if message[0] == "stats?":
            loop.call_soon_threadsafe(self._answer, *message[1:])
        elif message[0] in ("stats!", "drift!"):
            loop.call_soon_threadsafe(self._answered, *message[1:])
        elif message[0] == "adopt":
            _, model, version, profile = message
            reference = ReferenceProfile.from_json(profile)
            loop.call_soon_threadsafe(monitor.adopt, model, version, reference)


class DriftPlane:
    """The supervisor's drift monitor over every worker's sketches, with the webhook outbox,
    on a thread with its own event loop. `receive` takes the workers' messages (from any
    thread), `lost` a worker's death, `channels()` names the workers' current channels for
    the replies. A version is monitored while a live worker watches it (module docstring);
    its report says how many do (`"workers"`)."""

    def __init__(
        self,
        settings: ServerSettings,
        registry: CollectorRegistry,
        store_dir: Path | None,
        channels: Callable[[], dict[int, Connection]],
    ) -> None:
        self._notifier = notifier_for(settings, registry, store_dir)
        self._channels = channels
        self._urls: dict[Key, str] = {}
        self._watchers: dict[Key, set[int]] = {}  # the live workers watching each version
        self.monitor = DriftMonitor(
            settings.models.drift,
            registry,
            overrides={name: m.drift for name, m in settings.model_overrides.items()},
            resume=self._was_drifting if self._notifier is not None else None,
        )
        self._alerts = DriftAlerts(self._notifier, self._url)
        self.monitor.on_change = self._on_change
        self._thread = LoopThread("drift-plane", self._run)
        self._loop = self._thread.loop
        self._sending = threading.Lock()  # the supervisor's thread sends to workers too

    def _was_drifting(self, model: str, version: str) -> bool:
        assert self._notifier is not None
        return self._notifier.outbox.episode(model, version).drifting

    def _url(self, model: str, version: str) -> str:
        return self._urls.get((model, version), "")

    def start(self) -> None:
        self._thread.start()

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self.monitor.run())]
        if self._notifier is not None:
            tasks.append(asyncio.create_task(self._notifier.run()))
        try:
            await asyncio.gather(*tasks)
        finally:
            await self.monitor.close()
            if self._notifier is not None:
                await self._notifier.close()

    def stop(self) -> None:
        """Stop monitoring and delivering; wait for the thread."""
        self._thread.stop()

    # -- from the supervisor's thread -----------------------------------------------------

    def receive(self, worker: int, message: Message) -> None:
        """One message of worker `worker`, handled in order on the plane's loop."""
        self._loop.call_soon_threadsafe(self._handle, worker, message)

    def lost(self, worker: int) -> None:
        """Worker `worker` died: it watches nothing until it says so again."""
        self._loop.call_soon_threadsafe(self._lose, worker)

    # -- on the plane's loop --------------------------------------------------------------

    def _handle(self, worker: int, message: Message) -> None:
        kind = message[0]
        if kind == "sketches":
            for model, version, item in message[1]:
                if isinstance(item, tuple):  # rows to learn the reference from
                    item = RawBatch(*item)
                self.monitor.offer(model, version, item)
        elif kind == "watch":
            _, model, version, profile_json, learned, names = message
            profile = None if profile_json is None else ReferenceProfile.from_json(profile_json)
            self._watch(worker, model, version, profile, learned, names)
        elif kind == "url":
            _, model, version, url = message
            if (model, version) in self._watchers:
                self._urls[(model, version)] = url
        elif kind == "forget":
            _, model, version = message
            self._unwatch(worker, (model, version))
        elif kind == "drift?":
            _, asked, model, version = message
            self.send(worker, ("drift!", asked, self._report(model, version)))

    def _report(self, model: str, version: str) -> dict[str, Any] | None:
        """The version's drift report, with how many workers watch it."""
        watchers = self._watchers.get((model, version))
        report = self.monitor.report(model, version)
        if watchers is None or report is None:
            return None
        return {**report, "workers": len(watchers)}

    def _watch(
        self,
        worker: int,
        model: str,
        version: str,
        profile: ReferenceProfile | None,
        learned: bool,
        names: Mapping[str, Sequence[str]] | None,
    ) -> None:
        key = (model, version)
        watchers = self._watchers.setdefault(key, set())
        first = not watchers
        watchers.add(worker)
        judged = self.monitor.profile_for(model, version)
        if first or (judged is None and profile is not None):
            # The first watcher's reference (or, None, the rows it forwards) decides; a
            # reference arriving while the supervisor learns one replaces the learning.
            self.monitor.register(model, version, profile, names=names, learned=learned)
            if profile is not None:
                self._share(model, version, profile, watchers - {worker})
        elif judged is not None and (
            profile is None or profile_fingerprint(judged) != profile_fingerprint(profile)
        ):
            self._share(model, version, judged, {worker})

    def _unwatch(self, worker: int, key: Key) -> None:
        """`worker` no longer watches `key`; with no watcher left, the version's windows
        stop and its state goes."""
        watchers = self._watchers.get(key)
        if watchers is None:
            return
        watchers.discard(worker)
        if not watchers:
            del self._watchers[key]
            self._urls.pop(key, None)
            self.monitor.unregister(*key)

    def _lose(self, worker: int) -> None:
        # A restarted worker watches again as it loads its versions; meanwhile the others'
        # watches keep the versions they serve (and their windows) as they are.
        for key in list(self._watchers):
            self._unwatch(worker, key)

    def _share(
        self, model: str, version: str, profile: ReferenceProfile, workers: set[int]
    ) -> None:
        """Have `workers` sketch `model` `version` against `profile`, the one judged by."""
        message = ("adopt", model, version, profile.to_json())
        for worker in workers:
            self.send(worker, message)

    async def _on_change(self, event: DriftEvent) -> None:
        if event.kind == "learned":  # from every worker's rows: now they all sketch by it
            profile = self.monitor.profile_for(event.model, event.version)
            watchers = self._watchers.get((event.model, event.version), set())
            if profile is not None:
                self._share(event.model, event.version, profile, watchers)
        await self._alerts(event)

    def send(self, worker: int, message: Message) -> None:
        """Send a worker a message (from any thread); nothing when it is not there."""
        channel = self._channels().get(worker)
        if channel is None:
            return
        try:
            with self._sending:
                channel.send(message)
        except (OSError, ValueError) as exc:  # it is ending; a restarted one hears again
            log.debug("worker %d: %s", worker, exc)


class StatisticsRequests:
    """The supervisor's side of the statistics over workers: a worker's question goes to
    the others, and their sum back to it (all on the supervisor's thread)."""

    def __init__(self, send: Callable[[int, Message], None]) -> None:
        self._send = send
        # (origin, its id) -> workers not answered yet, the answers, the deadline
        self._open: dict[tuple[int, int], tuple[set[int], list[list[ModelStatistics]], float]] = {}

    def ask(self, origin: int, message: Message, workers: list[int], now: float) -> None:
        """Worker `origin` asks ("stats?", id, model, version); `workers` are alive."""
        _, asked, model, version = message
        others = {w for w in workers if w != origin}
        self._open[(origin, asked)] = (others, [], now + STATS_SECONDS)
        for worker in others:
            self._send(worker, ("stats?", (origin, asked), model, version))
        self.expire(now)

    def answer(self, worker: int, message: Message, now: float) -> None:
        """Worker `worker` answers ("stats", (origin, id), statistics)."""
        _, key, stats = message
        entry = self._open.get(key)
        if entry is not None:
            entry[0].discard(worker)
            entry[1].append(stats)
        self.expire(now)

    def expire(self, now: float) -> None:
        """Answer every question whose workers have all answered, or whose time is up."""
        for key, (waiting, parts, deadline) in list(self._open.items()):
            if not waiting or now >= deadline:
                del self._open[key]
                origin, asked = key
                self._send(origin, ("stats!", asked, merged_statistics(parts)))
