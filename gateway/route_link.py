"""Stage changes over several workers: the supervisor follows the registry, every worker
switches its routes at the same moment.

Were each worker to follow the registry on its own, they would switch up to a poll
interval (plus a model's load) apart, and a request with a sticky `x-routing-key` would be
answered by the canary or by production depending on the worker its connection reached.
So under a supervisor (gateway/supervisor.py) the registry is followed once:

1. The supervisor's `RegistryFollower` polls the registry (`core.registry_watch`: backoff,
   one log line per failing streak) and hands each new generation's records to `RouteSync`.
2. Every worker is sent ("routes", generation, records). Its `RouteReceiver` prepares them
   (`Deployments.prepare`: loads and warms up what entered, routing unchanged) and answers
   ("prepared", generation) once each of those versions is READY or FAILED.
3. When every serving worker has prepared, the supervisor sends them all ("switch",
   generation, at): `at` is a moment on CLOCK_MONOTONIC (one clock for every process of
   the machine) SWITCH_LEAD seconds ahead, and each worker commits (`Deployments.commit`:
   reroute, drain what left) then. A worker that is slow to prepare holds the others back
   at most PEER_WAIT seconds after the first one prepared (PREPARE_CAP in all); then the
   switch goes out anyway and names the late ones in the log. A dead worker is no longer
   waited for.

A worker that (re)starts is sent the current records first; it commits as soon as it has
prepared them, and is not ready before (nothing routed: the readiness of a gateway that
has not read the registry yet). Until then it answers requests with the registry's last
error, as the supervisor saw it: ("registry", error), sent again on every change.

A version that failed to load is retried in step too. A worker's "prepared" says whether a
version failed (("prepared", generation, failed)); the supervisor then waits with the
backoff of a lone gateway (2, 4, 8 ... up to RETRY_MAX seconds) and sends every worker
the same records again as a new round ("<generation> retry <n>"), which each worker
prepares by loading its failed versions again: what loads is routed at that round's one
switch moment, on every worker together, never as each worker's own retry finishes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import Counter

from modelgate.gateway.core.deployments import RETRY_MAX, Deployments
from modelgate.gateway.core.registry_watch import RegistryWatch
from modelgate.gateway.loop_thread import LoopThread
from modelgate.registry.client import RegistryClient
from modelgate.registry.types import ModelVersion

log = logging.getLogger(__name__)

Message = tuple[Any, ...]

SWITCH_LEAD = 0.2  # seconds between sending a switch and its moment: every worker hears it
PEER_WAIT = 5.0  # how long prepared workers wait for the others
PREPARE_CAP = 120.0  # how long a switch waits for preparing at all


@dataclass(slots=True)
class _Worker:
    """What the supervisor told one worker, and what it answered."""

    staged: str | None = None  # the generation it was sent to prepare
    staged_at: float = 0.0
    prepared: str | None = None  # the last generation it prepared
    switched: str | None = None  # the last generation it was told to switch to
    told_error: str = ""  # the registry error it was told last


class RouteSync:
    """The supervisor's decisions: which worker is sent which records, and when each
    switches (see the module docstring). Pure: `due` says what to send; the caller sends.
    """

    def __init__(self) -> None:
        self._generation: str | None = None  # the registry's, last read
        # What workers are sent: the records of `_generation`, labelled by the round.
        self._latest: tuple[str, list[ModelVersion]] | None = None
        self._workers: dict[int, _Worker] = {}
        self._first_prepared: float | None = None  # of the current generation, by any worker
        self._retries = 0  # rounds sent again for versions that failed to load
        self._retry_at: float | None = None  # when the next round is due, if one is
        self._error = ""  # the registry's last read error ("" while it reads)

    def read(self, generation: str, records: list[ModelVersion]) -> None:
        """The registry's records at `generation` (every stage)."""
        if self._generation != generation:
            self._generation = generation
            self._latest = (generation, records)
            self._first_prepared = None
            self._retries, self._retry_at = 0, None

    def registry_failed(self, error: str) -> None:
        """The registry's read error ("" once it reads again); workers are told it."""
        self._error = error

    def joined(self, worker: int) -> None:
        """Worker `worker` listens (started, or started again): it starts from nothing."""
        self._workers[worker] = _Worker()

    def left(self, worker: int) -> None:
        """Worker `worker` died: nobody waits for it."""
        self._workers.pop(worker, None)

    def prepared(self, worker: int, generation: str, now: float, failed: bool = False) -> None:
        """Worker `worker` has loaded (or failed to load) every version of `generation`;
        `failed`: one of them failed (so a retry round is due after the backoff)."""
        state = self._workers.get(worker)
        if state is None:
            return
        state.prepared = generation
        current = self._latest is not None and generation == self._latest[0]
        if current and self._first_prepared is None:
            self._first_prepared = now
        if current and failed and self._retry_at is None:
            self._retry_at = now + min(RETRY_MAX, 2.0 ** (self._retries + 1))

    def _retry(self, now: float) -> None:
        """Start the next retry round, if one is due and every worker switched to the last."""
        if self._retry_at is None or now < self._retry_at or self._latest is None:
            return
        label = self._latest[0]
        if not self._workers or any(s.switched != label for s in self._workers.values()):
            return
        self._retries += 1
        self._retry_at = None
        self._latest = (f"{self._generation} retry {self._retries}", self._latest[1])
        self._first_prepared = None
        log.info(
            "loading the versions that failed to load again on every worker (registry "
            "generation %s, retry %d)",
            self._generation,
            self._retries,
        )

    def due(self, now: float) -> list[tuple[int, Message]]:
        """The messages to send now, to which worker."""
        sends: list[tuple[int, Message]] = []
        for worker, state in self._workers.items():
            if state.told_error != self._error:
                sends.append((worker, ("registry", self._error)))
                state.told_error = self._error
        self._retry(now)
        if self._latest is None:
            return sends
        generation, records = self._latest
        for worker, state in self._workers.items():
            if state.staged != generation:
                sends.append((worker, ("routes", generation, records)))
                state.staged, state.staged_at = generation, now
        behind = {w: s for w, s in self._workers.items() if s.switched != generation}
        # A worker that never switched serves nothing yet: it waits for nobody.
        for worker, state in list(behind.items()):
            if state.switched is None:
                del behind[worker]
                if state.prepared == generation or now >= state.staged_at + PREPARE_CAP:
                    sends.append((worker, ("switch", generation, now)))
                    state.switched = generation
        if not behind:
            return sends
        late = [w for w, s in behind.items() if s.prepared != generation]
        first = self._first_prepared
        if late and not (
            (first is not None and now >= first + PEER_WAIT)
            or now >= min(s.staged_at for s in behind.values()) + PREPARE_CAP
        ):
            return sends
        if late:
            log.warning(
                "switching to registry generation %s without worker(s) %s: not prepared in "
                "time (they route each version once it is loaded)",
                generation,
                ", ".join(map(str, sorted(late))),
            )
        at = now + SWITCH_LEAD
        for worker, state in behind.items():
            sends.append((worker, ("switch", generation, at)))
            state.switched = generation
        return sends


class RegistryFollower:
    """The supervisor's one registry follower, on a thread with its own event loop; each
    new generation's records are sent on `out` (the supervisor waits on its other end) as
    ("records", generation, records), and each new read error as ("error", error)."""

    def __init__(
        self, registry: RegistryClient, interval: float, polls: Counter, out: Connection
    ) -> None:
        self._watch = RegistryWatch(registry, interval, polls)
        self._out = out
        self._thread = LoopThread("registry-follower", self._follow)

    def start(self) -> None:
        self._thread.start()

    def _send(self, generation: str, records: list[ModelVersion]) -> None:
        self._out.send(("records", generation, records))

    def _failed(self, error: str) -> None:
        self._out.send(("error", error))

    async def _follow(self) -> None:
        await self._watch.run(self._send, trouble=self._failed)

    def stop(self) -> None:
        """Stop following and wait for the thread."""
        self._thread.stop()


class RouteReceiver:
    """A worker's side: prepares the records the supervisor pushes and switches when told.

    `receive` takes the supervisor's messages on the thread that reads the channel; `run`
    acts on them on the gateway's event loop; `tell` queues a message to the supervisor
    without blocking.
    """

    KINDS = ("routes", "switch", "registry")  # the supervisor's messages it takes

    def __init__(self, tell: Callable[[Message], None]) -> None:
        self._tell = tell
        self._lock = threading.Lock()
        self._early: list[Message] = []  # messages before `run` started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[Message] | None = None
        self._staged: tuple[str, list[ModelVersion]] | None = None
        self._preparing: asyncio.Task[None] | None = None

    def receive(self, message: Message) -> None:
        with self._lock:
            if self._loop is None or self._inbox is None:
                self._early.append(message)
                return
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, message)

    async def run(self, deployments: Deployments) -> None:
        """Act on the supervisor's messages until cancelled."""
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        with self._lock:
            self._loop, self._inbox = asyncio.get_running_loop(), inbox
            for message in self._early:
                inbox.put_nowait(message)
            self._early.clear()
        try:
            while True:
                message = await inbox.get()
                if message[0] == "routes":
                    self._prepare(deployments, message[1], message[2])
                elif message[0] == "switch":
                    self._switch(deployments, message[1], message[2])
                elif message[0] == "registry":
                    deployments.registry_failed(message[1])
        finally:
            if self._preparing is not None:
                self._preparing.cancel()

    def _prepare(
        self, deployments: Deployments, generation: str, records: list[ModelVersion]
    ) -> None:
        self._staged = (generation, records)
        deployments.prepare(records, retry=True)  # the supervisor paces the retries
        if self._preparing is not None:
            self._preparing.cancel()
        self._preparing = asyncio.create_task(self._report(deployments, generation))

    async def _report(self, deployments: Deployments, generation: str) -> None:
        await deployments.prepared()
        self._tell(("prepared", generation, deployments.failed()))

    def _switch(self, deployments: Deployments, generation: str, at: float) -> None:
        def commit() -> None:
            # A newer generation prepared meanwhile is switched to by its own message.
            if self._staged is not None and self._staged[0] == generation:
                deployments.commit()

        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, at - time.monotonic()), commit)
