"""Load generation in worker processes, open or closed loop, for the overload and drain tools.

Open loop: arrival times are drawn before the run (Poisson, or evenly spaced) and each
request is sent at its time whatever happened to earlier ones, with a deadline `timeout`
seconds after that time. Latency counts from the scheduled time, so any wait on the client
side (a late generator, a full connection pool) is part of it; `dispatched` (the generator
handled it) and `sent` (it went on a connection) tell them apart: from `sent` on, the wait is
the server's (its socket buffers, its event loop, its queue).
Closed loop: `concurrency` users each send their next request when the last one is answered.

The workers are processes of their own (`Generators`), apart from the driver and the server;
each runs one `Job` at a time with the clients of loadtest/clients.py and returns its
`Outcomes`. A worker measures its own CPU and how late it dispatched, so a run where the
generator could not keep its schedule is visible as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import uvloop

from loadtest.clients import (
    MODEL,
    GrpcCalls,
    HttpPool,
    Outcome,
    Record,
    grpc_requests,
    http_requests,
)

_TICK = 0.01  # seconds between timeout sweeps while nothing is due


@dataclass(frozen=True, slots=True)
class Job:
    """What one worker does: one protocol against one address, for a bounded time."""

    protocol: str  # "http" | "grpc"
    address: str  # host:port
    start_at: float  # time.monotonic(): one clock for every process on Linux
    seconds: float  # dispatching stops after this; answers are awaited up to `timeout` more
    timeout: float  # each request's deadline, from its scheduled time
    rate: float = 0.0  # open loop: this worker's requests per second
    concurrency: int = 0  # closed loop (when rate is 0): users sending back to back
    poisson: bool = True  # open loop: exponential gaps, else even spacing
    connections: int = 512  # HTTP: the pool's bound
    pipeline: int = 1  # HTTP: requests a connection may carry unanswered
    channels: int = 1  # gRPC: connections, taken in turn
    seed: int = 0
    model: str = MODEL


@dataclass
class Outcomes:
    """A record of requests (one worker's, or merged): per request, in scheduled order, its
    times and how it ended."""

    scheduled: np.ndarray  # monotonic seconds
    dispatched: np.ndarray  # when the generator handled it (NaN: never, it stopped first)
    sent: np.ndarray  # when it went on a connection (HTTP: after any wait for one in the pool)
    finished: np.ndarray
    outcome: np.ndarray  # Outcome values, int8
    details: Counter[str]  # what the failures said (texts, digits folded)
    cpu_seconds: float  # the worker's CPU while it dispatched
    pool_waits: int = 0  # HTTP requests that waited for a pooled connection
    connections: int = 0  # HTTP connections opened

    @staticmethod
    def merge(parts: list[Outcomes]) -> Outcomes:
        """All workers' records as one, sorted by scheduled time."""
        scheduled = np.concatenate([p.scheduled for p in parts])
        order = np.argsort(scheduled, kind="stable")
        details: Counter[str] = Counter()
        for p in parts:
            details.update(p.details)
        return Outcomes(
            scheduled[order],
            np.concatenate([p.dispatched for p in parts])[order],
            np.concatenate([p.sent for p in parts])[order],
            np.concatenate([p.finished for p in parts])[order],
            np.concatenate([p.outcome for p in parts])[order],
            details,
            sum(p.cpu_seconds for p in parts),
            sum(p.pool_waits for p in parts),
            sum(p.connections for p in parts),
        )

    def count(self, outcome: Outcome, mask: np.ndarray | None = None) -> int:
        """Requests that ended in `outcome` (among `mask`)."""
        hits = self.outcome == outcome
        return int(np.count_nonzero(hits if mask is None else hits & mask))


def _outcomes(record: Record, upto: int, cpu: float) -> Outcomes:
    """The first `upto` requests of `record` (the rest were never dispatched) as arrays."""
    return Outcomes(
        np.array(record.scheduled[:upto], dtype=np.float64),
        np.array(record.dispatched[:upto], dtype=np.float64),
        np.array(record.sent[:upto], dtype=np.float64),
        np.array(record.finished[:upto], dtype=np.float64),
        np.array(record.outcome[:upto], dtype=np.int8),
        record.details,
        cpu,
    )


def schedule(job: Job) -> list[float]:
    """Open loop: every request's send time, drawn up front."""
    count = max(1, round(job.rate * job.seconds))
    if job.poisson:
        gaps = np.random.default_rng(job.seed).exponential(1.0 / job.rate, size=2 * count + 100)
        offsets = np.cumsum(gaps)
        offsets = offsets[offsets < job.seconds]
    else:
        offsets = np.arange(count) / job.rate
    return (job.start_at + offsets).tolist()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_job(job: Job, stop: asyncio.Event | None = None) -> Outcomes:
    """Run one job in this process; `stop` ends dispatching early."""
    stop = stop or asyncio.Event()
    record = Record(schedule(job) if job.rate > 0 else [])
    client: HttpPool | GrpcCalls
    if job.protocol == "http":
        client = HttpPool(
            job.address, record, http_requests(job.address, job.seed, job.model), job.connections,
            job.pipeline if job.rate > 0 else 1,
        )  # fmt: skip
    else:
        client = GrpcCalls(
            job.address, record, grpc_requests(job.seed, job.model), job.timeout, job.channels
        )
    inflight: deque[int] = deque()  # dispatched requests, oldest first

    def dispatch(index: int) -> None:
        if job.protocol == "http":
            record.dispatched[index] = time.monotonic()
        inflight.append(index)
        client.submit(index)

    await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
    cpu = _cpu()
    end = job.start_at + job.seconds
    if job.rate > 0:
        dispatched = await _open_loop(record, dispatch, inflight, client, job, stop)
    else:

        def next_user(_: int) -> None:
            if time.monotonic() < end and not stop.is_set():
                dispatch(record.add(time.monotonic()))

        client.on_finish = next_user
        for _ in range(job.concurrency):
            dispatch(record.add(time.monotonic()))
        while time.monotonic() < end and not stop.is_set():
            _expire(record, inflight, client, job.timeout)
            await asyncio.sleep(_TICK)
        client.on_finish = None
        dispatched = len(record.outcome)
    cpu = _cpu() - cpu
    while inflight:  # the stragglers, each until its deadline at most
        _expire(record, inflight, client, job.timeout)
        await asyncio.sleep(_TICK)
    await client.close()
    result = _outcomes(record, dispatched, cpu)
    result.pool_waits, result.connections = client.pool_waits, client.connections
    return result


async def _open_loop(
    record: Record,
    dispatch: Callable[[int], None],
    inflight: deque[int],
    client: HttpPool | GrpcCalls,
    job: Job,
    stop: asyncio.Event,
) -> int:
    """Dispatch every request at its scheduled time; how many were dispatched."""
    scheduled = record.scheduled
    total = len(scheduled)
    index = 0
    while index < total and not stop.is_set():
        now = time.monotonic()
        while index < total and scheduled[index] <= now:
            dispatch(index)
            index += 1
        _expire(record, inflight, client, job.timeout)
        if index < total:
            await asyncio.sleep(min(max(scheduled[index] - time.monotonic(), 0.0), _TICK))
    return index


def _expire(
    record: Record, inflight: deque[int], client: HttpPool | GrpcCalls, timeout: float
) -> None:
    """Time out requests whose deadline passed; forget finished ones at the front."""
    now = time.monotonic()
    while inflight:
        index = inflight[0]
        if record.outcome[index]:
            inflight.popleft()
        elif record.scheduled[index] + timeout <= now:
            inflight.popleft()
            record.finish(index, Outcome.TIMEOUT)
            client.abandon(index)
        else:
            break


def _worker(pipe: Connection, cpus: tuple[int, ...]) -> None:
    """A worker process: run jobs from the pipe until told to quit (None) or orphaned; on
    `cpus` only, when given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    while True:
        try:
            job = pipe.recv()
        except EOFError:
            return
        if job is None:
            return
        # grpc.aio runs on asyncio's own loop; HTTP on uvloop, the cheaper of the two.
        runner: Any = uvloop.run if job.protocol == "http" else asyncio.run
        pipe.send(runner(_run_from_pipe(job, pipe)))


async def _run_from_pipe(job: Job, pipe: Connection) -> Outcomes:
    stop = asyncio.Event()

    async def listen() -> None:  # for "stop"; EOF (the driver is gone) stops too
        while True:
            await asyncio.sleep(0.05)
            if pipe.poll():
                with contextlib.suppress(EOFError, OSError):
                    pipe.recv()
                stop.set()
                return

    listener = asyncio.get_running_loop().create_task(listen())
    try:
        return await run_job(job, stop)
    finally:
        listener.cancel()


@dataclass
class Generators:
    """Worker processes (spawned, so separate from the driver and the server) that run jobs.

    Use as a context manager; `start` hands each worker a job, `stop` ends their dispatching
    early, `results` waits for every worker's `Outcomes`."""

    count: int
    cpus: tuple[int, ...] = ()  # the only CPUs the workers may run on; () for any
    _pipes: list[Connection] = field(default_factory=list)
    _processes: list[Any] = field(default_factory=list)

    def __enter__(self) -> Generators:
        context = multiprocessing.get_context("spawn")
        for _ in range(self.count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs, self.cpus), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

    def start(self, jobs: list[Job]) -> None:
        """Give worker i `jobs[i]` (fewer jobs than workers leave the rest idle)."""
        assert len(jobs) <= self.count
        for pipe, job in zip(self._pipes, jobs, strict=False):
            pipe.send(job)
        self._running = len(jobs)

    def stop(self) -> None:
        """End dispatching now; requests in flight are still awaited."""
        for pipe in self._pipes[: self._running]:
            pipe.send("stop")

    def results(self) -> list[Outcomes]:
        """Block until every started job has finished; their records, in job order."""
        return [pipe.recv() for pipe in self._pipes[: self._running]]

    def run(self, jobs: list[Job]) -> list[Outcomes]:
        """`start` then `results`."""
        self.start(jobs)
        return self.results()


def shares(total: int, parts: int) -> list[int]:
    """`total` users shared out as evenly as possible over `parts` workers."""
    return [(total + part) // parts for part in range(parts)]
