"""`modelgate serve --workers N`: one supervising process over N serving processes.

The supervisor reserves the HTTP and gRPC ports (modelgate.listen.reserve), serves the
merged metrics view (gateway/metrics_view.py), runs the drift monitor over every worker's
sketches (gateway/drift_link.py) and spawns N workers (gateway/worker.py),
each a whole gateway listening on the shared ports with SO_REUSEPORT: the kernel spreads
connections over them. It does no serving itself. It follows the registry once, for all
workers, and has them switch to each new set of stages at the same moment
(gateway/route_link.py). A worker that dies is started again after
a backoff (`RestartPolicy`, counted in `modelgate_worker_restarts`); one that keeps dying
stops the server with status 1 and the reason. SIGTERM or SIGINT drains every worker at
once (each turns not-ready, answers what it accepted, stops) and waits for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from modelgate.gateway.controlplane import ControlPlane, guard_wanted
from modelgate.gateway.drift_link import DriftPlane, StatisticsRequests
from modelgate.gateway.metrics_endpoint import MetricsThread
from modelgate.gateway.metrics_view import WorkersView
from modelgate.gateway.route_link import RegistryFollower, RouteSync
from modelgate.gateway.security import Security
from modelgate.gateway.server import _open_registry, _store_dir
from modelgate.gateway.settings import ServerSettings
from modelgate.gateway.worker import serve_worker
from modelgate.listen import address, listen, reserve
from modelgate.registry.client import RegistryClient
from modelgate.registry.errors import RegistryError

log = logging.getLogger(__name__)

# Beyond the drain itself (drain_delay + drain_seconds): unloading models, closing files.
_STOP_MARGIN = 10.0
_TICK = 0.2
_READS_PER_TURN = 64  # messages from one worker before the others get a turn


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a worker that died starts again, and when the server gives up on it.

    The n-th death within `window` seconds waits `first_delay * 2**(n-1)` seconds (at most
    `max_delay`) before the restart; a death beyond `max_deaths` within the window means
    the worker cannot live, and the server stops.
    """

    window: float = 60.0
    max_deaths: int = 5
    first_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, deaths: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the restart, given the worker's deaths (monotonic times,
        the latest included); None: give up."""
        recent = sum(1 for t in deaths if now - t <= self.window)
        if recent > self.max_deaths:
            return None
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, recent - 1)))


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in words."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


@dataclass(slots=True)
class _Slot:
    """One worker's place: its current process and its history."""

    index: int
    process: BaseProcess | None = None
    channel: Connection | None = None
    metrics: str | None = None  # its metrics endpoint, once it listens
    started_once: bool = False
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    restart_at: float | None = None


class Supervisor:
    """Runs N workers on shared ports until a signal, or until one keeps dying."""

    def __init__(
        self,
        settings: ServerSettings,
        count: int,
        registry: RegistryClient,
        policy: RestartPolicy | None = None,
        security: Security | None = None,
    ) -> None:
        self.settings = settings
        # The metrics port's TLS and tokens (the workers serve the rest themselves).
        self._security = security or Security(None, None, None)
        self._registry = registry
        self.count = count
        self.policy = policy or RestartPolicy()
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(count)]
        self._stop_requested = False
        self._status = 0
        own = CollectorRegistry()  # the supervisor's metrics, merged with the workers'
        self._restarts = Counter(
            "modelgate_worker_restarts",
            "Serving processes started again after they died, by worker.",
            ["worker"],
            registry=own,
        )
        self._alive = Gauge("modelgate_workers", "Serving processes running.", registry=own)
        self._rollbacks = Counter(
            "modelgate_guard_rollbacks",
            "Versions the rollout guard archived, by the rule that tripped.",
            ["model", "version", "rule"],
            registry=own,
        )
        polls = Counter(
            "modelgate_registry_polls",
            "Registry change checks by outcome (ok, error: the gateway keeps serving).",
            ["outcome"],
            registry=own,
        )
        # The registry follower's records arrive on `_records`; `_routes` decides who gets what.
        self._records, records_in = self._context.Pipe(duplex=False)
        self._follower = RegistryFollower(registry, settings.poll_interval, polls, records_in)
        self._routes = RouteSync()
        self._view = WorkersView(self._metrics_urls, own)
        self._drift = DriftPlane(settings, own, _store_dir(settings), self._channels)
        self._stats = StatisticsRequests(self._drift.send)
        self.registry = CollectorRegistry()  # what the metrics endpoint serves
        self.registry.register(self._view)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (then 0) or a worker that keeps dying (then 1); a
        worker refusing the settings at its first start ends the server with its status 2.

        Raises BindError when a port cannot be had.
        """
        s = self.settings
        with contextlib.ExitStack() as stack:
            http = reserve(s.host, s.http_port, setting="http_port", flag="--http-port")
            stack.callback(http.close)
            grpc = reserve(s.host, s.grpc_port, setting="grpc_port", flag="--grpc-port")
            stack.callback(grpc.close)
            metrics_sock = listen(
                s.host, s.metrics_port, setting="metrics_port", flag="--metrics-port", backlog=128
            )
            metrics = MetricsThread(self.registry, metrics_sock, s, self._security)
            metrics.start()
            stack.callback(metrics.stop)
            stack.callback(self._view.close)
            self._worker_settings = dataclasses.replace(
                s, http_port=_port(http), grpc_port=_port(grpc), metrics_port=0, workers="1"
            )
            addresses = (
                address(s.host, _port(http)),
                address(s.host, _port(grpc)),
                address(s.host, metrics.port),
            )
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            self._drift.start()
            stack.callback(self._drift.stop)
            self._follower.start()
            stack.callback(self._follower.stop)
            for slot in self._slots:
                self._start(slot)
            if guard_wanted(s):
                plane = ControlPlane(s, self._registry, self._view.families, self._rollbacks)
                plane.start()
                stack.callback(plane.stop)
            self._supervise(addresses)
            self._stop_all()
        return self._status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _supervise(self, addresses: tuple[str, str, str]) -> None:
        announced = False
        while not self._stop_requested:
            now = time.monotonic()
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
            wait(self._waitables(), timeout=_TICK)
            while self._records.poll():
                message = self._records.recv()
                if message[0] == "records":
                    self._routes.read(*message[1:])
                else:
                    self._routes.registry_failed(message[1])
            for slot in self._slots:
                self._read(slot)
                dead = slot.process is not None and slot.process.exitcode is not None
                if dead and not self._buried(slot):
                    return
            for worker, message in self._routes.due(time.monotonic()):
                self._drift.send(worker, message)
            self._stats.expire(time.monotonic())
            if not announced and all(slot.metrics for slot in self._slots):
                log.info(
                    "modelgate listening http=%s grpc=%s metrics=%s workers=%d", *addresses,
                    self.count,
                )  # fmt: skip
                announced = True

    def _waitables(self) -> list[Any]:
        found: list[Any] = [self._records]
        for slot in self._slots:
            if slot.process is not None:
                found.append(slot.process.sentinel)
            if slot.channel is not None:
                found.append(slot.channel)
        return found

    def _start(self, slot: _Slot) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve_worker,
            args=(self._worker_settings, slot.index, theirs),
            name=f"modelgate-worker-{slot.index}",
        )
        process.start()
        theirs.close()
        slot.process, slot.channel, slot.metrics, slot.restart_at = process, ours, None, None
        self._alive.set(sum(1 for s in self._slots if s.process is not None))
        log.info("worker %d started (pid %d)", slot.index, process.pid)

    def _read(self, slot: _Slot) -> None:
        """The worker's messages: its metrics address once it listens, then its answers
        to pushed stages (gateway/route_link.py) and drift monitoring's
        (gateway/drift_link.py); a bounded number per turn."""
        for _ in range(_READS_PER_TURN):
            if slot.channel is None or not slot.channel.poll():
                return
            try:
                message = slot.channel.recv()
            except (EOFError, OSError):  # it is ending; its sentinel says how
                slot.channel.close()
                slot.channel = None
                return
            if message[0] == "listening":
                slot.metrics = _loopback(message[1])
                slot.started_once = True
                self._routes.joined(slot.index)
            elif message[0] == "prepared":
                self._routes.prepared(slot.index, message[1], time.monotonic(), message[2])
            elif message[0] == "stats?":
                self._stats.ask(slot.index, message, list(self._channels()), time.monotonic())
            elif message[0] == "stats":
                self._stats.answer(slot.index, message, time.monotonic())
            else:
                self._drift.receive(slot.index, message)

    def _buried(self, slot: _Slot) -> bool:
        """Account for a dead worker; False when the server must stop."""
        assert slot.process is not None
        exitcode = slot.process.exitcode
        pid = slot.process.pid
        slot.process.close()
        self._drift.lost(slot.index)
        self._routes.left(slot.index)
        if slot.channel is not None:
            slot.channel.close()
        slot.process, slot.channel, slot.metrics = None, None, None
        self._alive.set(sum(1 for s in self._slots if s.process is not None))
        if exitcode == 2 and not slot.started_once:
            # It refused the settings (and said why, in one line): restarting cannot help.
            self._status = 2
            return False
        now = time.monotonic()
        slot.deaths.append(now)
        delay = self.policy.delay(slot.deaths, now)
        if delay is None:
            reason = (
                f"worker {slot.index} keeps dying ({len(slot.deaths)} times, the last "
                f"{len([t for t in slot.deaths if now - t <= self.policy.window])} within "
                f"{self.policy.window:g} s; it {exit_reason(exitcode)}); stopping"
            )
            log.error("%s", reason)
            print(f"modelgate: {reason}", file=sys.stderr, flush=True)
            self._status = 1
            return False
        log.warning(
            "worker %d (pid %s) %s; starting it again in %.2f s",
            slot.index, pid, exit_reason(exitcode), delay,
        )  # fmt: skip
        self._restarts.labels(str(slot.index)).inc()
        slot.restart_at = now + delay
        return True

    def _stop_all(self) -> None:
        """Drain every worker at once and wait for them (within the drain's own limits)."""
        s = self.settings
        log.info("modelgate draining %d workers", self.count)
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + s.drain_delay + s.drain_seconds + _STOP_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("worker (pid %s) did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.close()
        log.info("modelgate stopped")

    def _channels(self) -> dict[int, Connection]:
        return {slot.index: slot.channel for slot in self._slots if slot.channel is not None}

    def _metrics_urls(self) -> list[str]:
        return [f"http://{slot.metrics}/metrics" for slot in self._slots if slot.metrics]


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _loopback(endpoint: str) -> str:
    """Where this machine reaches `endpoint` (a wildcard address is not one to connect to)."""
    host, _, port = endpoint.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"{host}:{port}"


def run(settings: ServerSettings) -> int:
    """Entry point of `modelgate serve --workers N` (N > 1); returns the exit status."""
    try:
        # Once, before any worker: certificates and tokens that cannot serve, and a registry
        # that cannot be opened, are one line (rather than N workers saying it at once);
        # the store is created when asked to; the control plane's guard archives through it.
        security = Security.of(settings)
        registry = _open_registry(settings)
    except (RegistryError, ValueError, OSError) as exc:
        print(f"modelgate: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        count = settings.worker_count()
        supervisor = Supervisor(settings, count, registry, security=security)
    except (ValueError, OSError) as exc:  # the webhook's settings
        print(f"modelgate: {exc}", file=sys.stderr, flush=True)
        registry_close = getattr(registry, "close", None)
        if registry_close is not None:
            registry_close()
        return 2
    try:
        return supervisor.run()
    finally:
        close = getattr(registry, "close", None)
        if close is not None:
            close()
