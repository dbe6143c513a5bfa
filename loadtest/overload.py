"""Overload: offered load at 1x, 2x and 5x of the measured capacity against goodput, refusals,
latency of the accepted requests, server memory and recovery, over HTTP and gRPC.

For each protocol the tool starts a gateway (the light model, or `--model heavy`, registered
as loadtest/bench.py does), warms it up and measures its closed-loop capacity:
`--capacity-concurrency` users sending back to back for `--capacity-seconds`; capacity =
answered requests per second. Then each load level gets a fresh gateway (so one level's
leftovers do not colour the next) and an open-loop phase: Poisson arrivals at load x capacity
for `--seconds`, every request with a client deadline of `--timeout` seconds from its
scheduled time (see loadtest/openloop.py).

Per phase it reports:
- offered/s: the scheduled rate; sent/s: the rate the generator actually kept;
- goodput/s: requests answered 200/OK per second of the phase, and as a share of capacity;
- refused, timeout, lost: shares of the scheduled requests answered 503/RESOURCE_EXHAUSTED/
  UNAVAILABLE, not answered within the deadline, or lost (connection closed or reset without
  an answer, CANCELLED); "other" statuses are listed under the table;
- p50/p99 of the accepted (OK) requests, from their scheduled time (the client's view, with
  any wait in the generator), the p99 from when each went on a connection (the server's
  share: kernel buffers, event loop, queue, compute), and p99 of the refusals;
- queue p99: the bucket bound (ms) of the gateway's `modelgate_queue_wait_seconds` histogram
  within which 99% of the phase's computed requests waited in the micro-batcher: what the
  queue budget bounds, as the server saw it (scraped before and after the phase);
- server RSS at its peak (polled every 0.1 s from /proc) and `--rss-after` (5) seconds after
  sending stopped;
- recovery: from the end of sending until a probe request (one at a time, every 0.1 s)
  is back to normal: five probes in a row answered OK with their median within 2x the idle
  latency (the median of 15 probes, as spaced, before the phase); "> N" if not within
  `--recovery-limit` (the JSON keeps every probe);
- the server's CPU while sending (100 = one core: what the scheduler gave it);
- the generator's own health: its send rate against the schedule, p99 of its lag behind
  the schedule, its CPU (100 = one core), and how many HTTP requests waited for a pooled
  connection. A phase whose generator sent less than 95% of its schedule is flagged
  GENERATOR-LIMITED (a * by sent/s): its real offered load is sent/s, not offered/s. A
  large lag with the rate kept means burstier arrivals than scheduled (on a busy 2-core
  machine, the generator is not always on a core when a request is due).

    python -m loadtest.overload [--protocols http,grpc] [--loads 1,2,5] [--seconds 10]
                                [--timeout 10] [--workers 2] [--markdown]
    python -m loadtest.overload --gateway-args "--max-queue 256"   # the same, other settings
    python -m loadtest.overload --server-cpus 0 --generator-cpus 1  # each on its own core

On a machine with few cores the generator competes with the server: above 1x it may take
more CPU than the server, whose goodput then measures the split of the machine (see
docs/hardening.md). Pinning both gives the server the same core(s) throughout, capacity
included.

A full run (both protocols, three loads) takes about 3 minutes. JSON goes to
loadtest/results/overload-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest import bench, report
from loadtest.clients import MODEL, Outcome, Probe, probe_for
from loadtest.openloop import Generators, Job, Outcomes, shares
from loadtest.procs import PeakWatch, ServerProcess, rss_bytes

NAN = float("nan")
SENT_LIMIT = 0.95  # a generator that sent less than this share of its schedule is flagged
WARMUP_SECONDS = 1.0  # at most: no longer than a phase
PROBE_GAP = 0.1  # seconds between probes
IDLE_PROBES = 15
RECOVERY_PROBES = 5  # in a row, answered OK, median within RECOVERY_FACTOR x idle
RECOVERY_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The run's knobs, from the command line."""

    protocols: tuple[str, ...]
    loads: tuple[float, ...]
    seconds: float
    capacity_seconds: float
    capacity_concurrency: int
    timeout: float
    recovery_limit: float
    rss_after: float  # seconds after sending stopped
    workers: int
    connections: int  # HTTP connection pool bound, all workers together
    grpc_channels: int  # gRPC connections, all workers together
    pipeline: int
    poisson: bool
    gateway_args: tuple[str, ...]
    server_cpus: tuple[int, ...] = ()  # () for any
    generator_cpus: tuple[int, ...] = ()
    model: str = MODEL  # of loadtest/models.py


@dataclass(frozen=True, slots=True)
class Capacity:
    """Closed-loop throughput of a fresh gateway on one protocol."""

    protocol: str
    concurrency: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    failed: int


@dataclass
class Phase:
    """One protocol at one multiple of its capacity; see the module docstring."""

    protocol: str
    load: float
    capacity: float
    offered_per_second: float
    sent_per_second: float
    goodput_per_second: float
    goodput_share: float  # of capacity
    scheduled: int
    ok: int
    refused: int
    timeout: int
    lost: int
    error: int
    p50_ms: float
    p99_ms: float
    refused_p99_ms: float
    idle_ms: float
    recovery_seconds: float | None  # None: not within the limit
    rss_start_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    server_cpu_percent: float
    generator_lag_p99_ms: float
    generator_cpu_percent: float
    pool_waits: int
    connections: int
    sent_p99_ms: float = NAN  # accepted requests, from when each went on a connection
    queue_p99_ms: float = NAN  # a bucket bound: the batcher queue's wait, the server's view
    details: dict[str, int] = field(default_factory=dict)
    recovery_probes: list[tuple[float, str, float]] = field(default_factory=list)

    @property
    def generator_limited(self) -> bool:
        return self.sent_per_second < SENT_LIMIT * self.offered_per_second

    def share(self, count: int) -> float:
        return count / self.scheduled if self.scheduled else NAN


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    """The q-th percentile in milliseconds; NaN for no values."""
    return float(np.percentile(seconds, q)) * 1000 if seconds.size else NAN


def queue_waits(metrics_address: str) -> dict[float, float]:
    """The gateway's `modelgate_queue_wait_seconds` histogram, every model version together:
    cumulative count per bucket bound (seconds)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "modelgate_queue_wait_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def bucket_percentile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound, in ms, within which q% of the waits observed between two
    scrapes fell (an upper bound on their q-th percentile); NaN for none observed."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return NAN
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= q / 100 * counts[-1]) * 1e3


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def idle_latency(probe: Probe, count: int = IDLE_PROBES) -> float:
    """The median latency of `count` probes, in seconds, on an idle server, spaced as the
    recovery probes are (back to back they come out faster: a waiting loop wakes slower)."""
    latencies = []
    for _ in range(count):
        sent = time.monotonic()
        outcome, seconds = await probe(5.0)
        if outcome is Outcome.OK:
            latencies.append(seconds)
        await sleep_until(sent + PROBE_GAP)
    return statistics.median(latencies) if latencies else NAN


async def recovery(
    probe: Probe, idle: float, since: float, limit: float
) -> tuple[float | None, list[tuple[float, str, float]]]:
    """Seconds from `since` until probes are back to normal (see the module docstring), None
    if not within `limit` seconds; and every probe: (sent after `since` s, outcome, ms)."""
    window: deque[tuple[float, bool, float]] = deque(maxlen=RECOVERY_PROBES)
    trace: list[tuple[float, str, float]] = []
    deadline = since + limit
    while time.monotonic() < deadline:
        sent = time.monotonic()
        outcome, seconds = await probe(max(0.1, min(5.0, deadline - sent)))
        trace.append((round(sent - since, 3), outcome.name, round(seconds * 1000, 3)))
        window.append((sent, outcome is Outcome.OK, seconds))
        full = len(window) == RECOVERY_PROBES and all(ok for _, ok, _ in window)
        if full and statistics.median(s for _, _, s in window) <= RECOVERY_FACTOR * idle:
            return max(0.0, window[0][0] - since), trace
        await sleep_until(sent + PROBE_GAP)
    return None, trace


class Run:
    """Gateways, generators and the run's settings; measures capacities and phases."""

    def __init__(
        self, settings: Settings, stores: dict[str, Path], workdir: Path, gens: Generators
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.workdir = workdir
        self.gens = gens
        self._servers = 0

    def _gateway(self) -> AbstractContextManager[tuple[ServerProcess, dict[str, str]]]:
        self._servers += 1
        log = self.workdir / f"gateway-{self._servers}.log"
        settings = self.settings
        return bench.gateway(
            self.stores, log, settings.gateway_args, settings.model, cpus=settings.server_cpus
        )

    def _closed_jobs(self, protocol: str, address: str, users: int, seconds: float) -> list[Job]:
        start = time.monotonic() + 0.3
        per_worker = shares(users, self.settings.workers)
        return [
            Job(
                protocol,
                address,
                start,
                seconds,
                self.settings.timeout,
                concurrency=n,
                seed=i,
                model=self.settings.model,
            )
            for i, n in enumerate(per_worker)
            if n > 0
        ]

    async def _warm_up(self, protocol: str, address: str) -> None:
        seconds = min(WARMUP_SECONDS, self.settings.seconds, self.settings.capacity_seconds)
        jobs = self._closed_jobs(protocol, address, 16, seconds)
        await asyncio.to_thread(self.gens.run, jobs)

    async def capacity(self, protocol: str) -> Capacity:
        s = self.settings
        with self._gateway() as (_, urls):
            await self._warm_up(protocol, urls[protocol])
            jobs = self._closed_jobs(
                protocol, urls[protocol], s.capacity_concurrency, s.capacity_seconds
            )
            result = Outcomes.merge(await asyncio.to_thread(self.gens.run, jobs))
        ok = result.outcome == Outcome.OK
        latency = (result.finished - result.scheduled)[ok]
        return Capacity(
            protocol,
            s.capacity_concurrency,
            result.count(Outcome.OK) / s.capacity_seconds,
            percentile_ms(latency, 50),
            percentile_ms(latency, 99),
            int(np.count_nonzero(~ok)),
        )

    async def phase(self, protocol: str, load: float, capacity: float) -> Phase:
        with self._gateway() as (server, urls):
            address = urls[protocol]
            await self._warm_up(protocol, address)
            probe = probe_for(protocol, address, model=self.settings.model)
            try:
                waits = await asyncio.to_thread(queue_waits, urls["metrics"])
                phase = await self._measure(server, protocol, address, probe, load, capacity)
            finally:
                await probe.close()
            waited = await asyncio.to_thread(queue_waits, urls["metrics"])
        phase.queue_p99_ms = bucket_percentile_ms(waits, waited, 99)
        return phase

    async def _measure(
        self,
        server: ServerProcess,
        protocol: str,
        address: str,
        probe: Probe,
        load: float,
        capacity: float,
    ) -> Phase:
        s = self.settings
        idle = await idle_latency(probe)
        rate = load * capacity
        start = time.monotonic() + 0.5
        end = start + s.seconds
        jobs = [
            Job(protocol, address, start, s.seconds, s.timeout, rate=rate / s.workers,
                poisson=s.poisson, connections=max(1, s.connections // s.workers),
                pipeline=s.pipeline, channels=max(1, s.grpc_channels // s.workers),
                seed=100 + i, model=s.model)
            for i in range(s.workers)
        ]  # fmt: skip
        rss_start = rss_bytes(server.pid)
        self.gens.start(jobs)
        results = asyncio.ensure_future(asyncio.to_thread(self.gens.results))
        memory = PeakWatch(server.pid)
        await sleep_until(start)
        cpu_start = server.cpu_seconds()
        await sleep_until(end)
        server_cpu = server.cpu_seconds() - cpu_start
        recovered = asyncio.ensure_future(recovery(probe, idle, end, s.recovery_limit))
        await sleep_until(end + s.rss_after)
        rss_after = rss_bytes(server.pid)
        recovery_seconds, probes = await recovered
        outcomes = Outcomes.merge(await results)
        rss_peak, _ = await memory.stop()
        phase = summarize(
            protocol, load, capacity, s, outcomes, start, idle, recovery_seconds,
            (rss_start, rss_peak, rss_after), 100 * server_cpu / s.seconds,
        )  # fmt: skip
        phase.recovery_probes = probes
        return phase


def summarize(
    protocol: str,
    load: float,
    capacity: float,
    s: Settings,
    o: Outcomes,
    start: float,
    idle: float,
    recovery_seconds: float | None,
    rss: tuple[int, int, int],
    server_cpu_percent: float,
) -> Phase:
    """A phase's figures from its requests' record."""
    latency = o.finished - o.scheduled
    ok = o.outcome == Outcome.OK
    refused = o.outcome == Outcome.REFUSED
    dispatched = ~np.isnan(o.dispatched)
    lag = (o.dispatched - o.scheduled)[dispatched]
    last = float(np.max(o.dispatched[dispatched])) if dispatched.any() else start
    sending = max(s.seconds, last - start)
    mb = 1 / 2**20
    return Phase(
        protocol=protocol,
        load=load,
        capacity=capacity,
        offered_per_second=load * capacity,
        sent_per_second=int(np.count_nonzero(dispatched)) / sending,
        goodput_per_second=o.count(Outcome.OK) / s.seconds,
        goodput_share=o.count(Outcome.OK) / s.seconds / capacity,
        scheduled=len(o.outcome),
        ok=o.count(Outcome.OK),
        refused=o.count(Outcome.REFUSED),
        timeout=o.count(Outcome.TIMEOUT),
        lost=o.count(Outcome.LOST),
        error=o.count(Outcome.ERROR),
        p50_ms=percentile_ms(latency[ok], 50),
        p99_ms=percentile_ms(latency[ok], 99),
        sent_p99_ms=percentile_ms((o.finished - o.sent)[ok], 99),
        refused_p99_ms=percentile_ms(latency[refused], 99),
        idle_ms=idle * 1000,
        recovery_seconds=recovery_seconds,
        rss_start_mb=rss[0] * mb,
        rss_peak_mb=rss[1] * mb,
        rss_after_mb=rss[2] * mb,
        server_cpu_percent=server_cpu_percent,
        generator_lag_p99_ms=percentile_ms(lag, 99),
        generator_cpu_percent=100 * o.cpu_seconds / sending,
        pool_waits=o.pool_waits,
        connections=o.connections,
        details=dict(o.details.most_common()),
    )


# --- report -------------------------------------------------------------------------------

HEADERS = (
    "proto", "load", "offered/s", "sent/s", "goodput/s", "of capacity", "refused", "timeout",
    "lost", "p50 ms", "p99 ms", "p99 from send ms", "queue p99 <= ms", "refused p99 ms",
    "RSS peak MB",
    "RSS after MB", "recovery s",
    "server CPU %", "gen lag p99 ms", "gen CPU %", "waited for conn",
)  # fmt: skip
LEFT = 2


def _num(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN: not measured


def _bound(value: float) -> str:
    return "-" if value != value else f"{value:g}"  # a bucket bound: 0.25, 50, inf


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def cells(p: Phase, limit: float) -> list[str]:
    recovered = f"> {limit:g}" if p.recovery_seconds is None else f"{p.recovery_seconds:.1f}"
    sent = _num(p.sent_per_second) + (" *" if p.generator_limited else "")
    return [
        p.protocol, f"{p.load:g}x", _num(p.offered_per_second), sent,
        _num(p.goodput_per_second), _pct(p.goodput_share), _pct(p.share(p.refused)),
        _pct(p.share(p.timeout)), _pct(p.share(p.lost)), _num(p.p50_ms, 1), _num(p.p99_ms, 1),
        _num(p.sent_p99_ms, 1), _bound(p.queue_p99_ms), _num(p.refused_p99_ms, 1),
        _num(p.rss_peak_mb), _num(p.rss_after_mb), recovered,
        _num(p.server_cpu_percent), _num(p.generator_lag_p99_ms, 1), _num(p.generator_cpu_percent),
        _pct(p.share(p.pool_waits)),
    ]  # fmt: skip


LIMITED_NOTE = (
    "* GENERATOR-LIMITED: the generator sent less than 95% of its schedule; the real offered "
    "load is sent/s"
)


def notes(capacities: list[Capacity], phases: list[Phase]) -> list[str]:
    """What goes under the table: the flag's meaning and what the failures said."""
    lines = [LIMITED_NOTE] if any(p.generator_limited for p in phases) else []
    for p in phases:
        if p.details:
            said = "; ".join(f"{text} x{count}" for text, count in p.details.items())
            lines.append(f"{p.protocol} {p.load:g}x failures: {said}")
    return lines


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    """The command line described in the module docstring."""
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--protocols", default="http,grpc", help="comma list: http,grpc")
    cli.add_argument("--loads", default="1,2,5", help="multiples of the measured capacity")
    cli.add_argument("--seconds", type=float, default=10.0, help="sending time per phase")
    cli.add_argument("--capacity-seconds", type=float, default=5.0)
    cli.add_argument("--capacity-concurrency", type=int, default=64)
    cli.add_argument("--timeout", type=float, default=10.0, help="client deadline, seconds")
    cli.add_argument("--recovery-limit", type=float, default=30.0, help="seconds")
    cli.add_argument("--rss-after", type=float, default=5.0, help="seconds after sending")
    cli.add_argument("--workers", type=int, default=2, help="generator processes")
    cli.add_argument(
        "--connections", type=int, default=1024, help="HTTP connection pool bound (all workers)"
    )
    cli.add_argument("--grpc-channels", type=int, default=32, help="gRPC connections (all workers)")
    cli.add_argument("--pipeline", type=int, default=1, help="HTTP requests in a row per conn.")
    cli.add_argument("--even", action="store_true", help="constant rate instead of Poisson")
    cli.add_argument(
        "--model", choices=("light", "heavy"), default="light",
        help="the served model (loadtest/models.py): light is I/O-bound, heavy compute-bound",
    )  # fmt: skip
    cli.add_argument("--gateway-args", default="", help="extra `modelgate serve` flags")
    cli.add_argument(
        "--server-cpus", default="", help="CPUs the gateway may use, e.g. 0 (default: any)"
    )
    cli.add_argument(
        "--generator-cpus", default="", help="CPUs the generators may use, e.g. 1 (default: any)"
    )
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    try:
        loads = tuple(float(x) for x in args.loads.split(","))
    except ValueError:
        cli.error(f"--loads takes numbers separated by commas, not {args.loads!r}")
    usable = os.sched_getaffinity(0)
    cpus: dict[str, tuple[int, ...]] = {}
    for flag, given in (
        ("--server-cpus", args.server_cpus),
        ("--generator-cpus", args.generator_cpus),
    ):
        try:
            cpus[flag] = tuple(int(x) for x in given.split(",")) if given else ()
        except ValueError:
            cli.error(f"{flag} takes CPU numbers separated by commas, not {given!r}")
        if not set(cpus[flag]) <= usable:
            cli.error(f"{flag}: this process may use CPUs {sorted(usable)} only, not {given}")
    if not protocols or not set(protocols) <= {"http", "grpc"}:
        cli.error("--protocols takes http and/or grpc")
    positive = (args.seconds, args.capacity_seconds, args.timeout, args.recovery_limit, *loads)
    positive += (args.rss_after,)
    counts = (
        args.capacity_concurrency, args.workers, args.connections, args.pipeline,
        args.grpc_channels,
    )  # fmt: skip
    if min(positive) <= 0 or min(counts) < 1 or args.connections < args.workers:
        cli.error("times and loads must be positive; counts at least 1 (connections >= workers)")
    settings = Settings(
        protocols, loads, args.seconds, args.capacity_seconds, args.capacity_concurrency,
        args.timeout, args.recovery_limit, args.rss_after, args.workers, args.connections,
        args.grpc_channels, args.pipeline,
        not args.even, tuple(shlex.split(args.gateway_args)),
        cpus["--server-cpus"], cpus["--generator-cpus"], args.model,
    )  # fmt: skip
    return settings, args


async def measure(
    settings: Settings, stores: dict[str, Path], workdir: Path
) -> tuple[list[Capacity], list[Phase]]:
    """Per protocol: its capacity, then a phase per load, in the order given."""
    capacities: list[Capacity] = []
    phases: list[Phase] = []
    with Generators(settings.workers, settings.generator_cpus) as gens:
        run = Run(settings, stores, workdir, gens)
        for protocol in settings.protocols:
            capacity = await run.capacity(protocol)
            capacities.append(capacity)
            print(f"{protocol}: capacity {capacity.requests_per_second:,.0f} req/s", flush=True)
            if capacity.requests_per_second <= 0:
                print(f"{protocol}: no request answered while measuring capacity; no phases")
                continue
            for load in settings.loads:
                phase = await run.phase(protocol, load, capacity.requests_per_second)
                phases.append(phase)
                row = cells(phase, settings.recovery_limit)
                print("  " + report.table_row(HEADERS, row, LEFT), flush=True)
    return capacities, phases


def _cpu_list(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus)) if cpus else "any"


def main(argv: list[str] | None = None) -> int:
    """Measure capacities, then every (protocol, load) phase; print and save the results."""
    settings, args = parse_args(argv)
    started = time.monotonic()
    header = {
        **report.machine(),
        "phases": f"{settings.seconds:g} s open loop ("
        f"{'Poisson' if settings.poisson else 'constant rate'}), deadline {settings.timeout:g} s,"
        f" {settings.workers} generator processes, HTTP pool {settings.connections}"
        f" connections x {settings.pipeline} in a row, {settings.grpc_channels} gRPC connections",
        "gateway": f"{settings.model} model, loadtest defaults "
        + (shlex.join(settings.gateway_args) if settings.gateway_args else "(no extra flags)"),
        "cpus": f"gateway {_cpu_list(settings.server_cpus)}, generators "
        f"{_cpu_list(settings.generator_cpus)}",
    }
    with tempfile.TemporaryDirectory(prefix="modelgate-overload-") as tmp:
        workdir = Path(tmp)
        _, stores = bench.prepare_models(workdir, [settings.model])
        capacities, phases = asyncio.run(measure(settings, stores, workdir))
    for c in capacities:
        header[f"capacity {c.protocol}"] = (
            f"{c.requests_per_second:,.0f} req/s closed loop at c={c.concurrency} (p50 "
            f"{c.p50_ms:.1f} ms, p99 {c.p99_ms:.1f} ms, {c.failed} failed)"
        )
    header = report.finish_header(header, started)
    rows = [cells(p, settings.recovery_limit) for p in phases]
    report.print_run(header, (HEADERS, rows, LEFT), notes(capacities, phases), args.markdown)
    out = args.out or report.results_path("overload")
    report.write_json(
        out,
        {
            "header": header,
            "settings": dataclasses.asdict(settings),
            "capacities": [dataclasses.asdict(c) for c in capacities],
            "phases": [
                {**dataclasses.asdict(p), "generator_limited": p.generator_limited} for p in phases
            ],
        },
    )
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
