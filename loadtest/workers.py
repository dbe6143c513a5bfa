"""`modelgate serve --workers N` against bare servers sharing one port, and 1 worker against 2.

The light model (loadtest/models.py), registered as the full benchmark registers it, driven
by perf_analyzer at c=64, one [1, 32] FP32 row per request, over gRPC streaming
(ModelStreamInfer, `perf_analyzer --streaming`), gRPC unary and HTTP JSON. One run measures:

    modelgate --workers 2, monitoring off     stream, grpc, http
    modelgate --workers 2 (monitoring on)     stream, grpc, http
    bare_grpc x2 (one port, SO_REUSEPORT)     stream, grpc
    bare_http x2 (one port, SO_REUSEPORT)     http
    bare_grpc x1                              stream, grpc
    modelgate --workers 1                     stream, grpc, http

The bare references are loadtest/bare_grpc.py (grpc.aio) and loadtest/bare_http.py (uvicorn),
N processes started with `--reuse-port`, so the kernel spreads perf_analyzer's connections
between them as it does between the gateway's workers. Each repeat runs the servers in the
order above and the next one in reverse, so a busy machine's swings hit gateway and
reference alike. Server CPU is the whole server: the supervisor and its workers, or every
bare process (100% = one core).

It reports each point's medians (req/s, p50, p99, server CPU and CPU time per request,
perf_analyzer's own CPU on the same cores, and the busiest serving process's share of the
connections: SO_REUSEPORT hashes connections, and perf_analyzer opens only about one gRPC
connection per 6 concurrency slots, so 2 processes often split them 7/4 or 8/3) and
the issue's targets: each ratio is the median over repeats of gateway / reference measured
in the same repeat (>= 0.9 against the bare servers, >= 0.95 monitoring on / off), p99
below 25 ms, and 2 workers against 1 (no target).

    python -m loadtest.workers [--repeat 3] [--window-ms 2000] [--markdown]
    python -m loadtest.workers --protocols stream      # one protocol's rows only

A default run (3 repeats of 14 points over 6 server starts, 3 windows of 2 s per point)
takes about 7 minutes on two cores; more on a busy machine, as the load generator's windows
are fixed but start-up is not. JSON (every run, the medians, the targets) goes to
loadtest/results/workers-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import bench, perf, report
from loadtest.procs import ServerProcess, connections_by_process, cpu_seconds, running

PROTOCOLS = ("stream", "grpc", "http")  # stream: gRPC ModelStreamInfer
P99_TARGET_MS = 25.0


@dataclass(frozen=True, slots=True)
class Server:
    """One server under test: the gateway with N workers, or N bare processes on one port."""

    kind: str  # modelgate | bare_grpc | bare_http
    processes: int
    monitoring: str = "on"  # the gateway's drift monitoring; bare servers have none
    protocols: tuple[str, ...] = PROTOCOLS

    @property
    def label(self) -> str:
        if self.kind != "modelgate":
            return f"{self.kind} x{self.processes}"
        off = ", monitoring off" if self.monitoring == "off" else ""
        return f"modelgate --workers {self.processes}{off}"


GATEWAY_2 = Server("modelgate", 2)
GATEWAY_2_QUIET = Server("modelgate", 2, "off")
GATEWAY_1 = Server("modelgate", 1)
BARE_GRPC_2 = Server("bare_grpc", 2, protocols=("stream", "grpc"))
BARE_GRPC_1 = Server("bare_grpc", 1, protocols=("stream", "grpc"))
BARE_HTTP_2 = Server("bare_http", 2, protocols=("http",))
# Each gateway is next to (or one away from) what it is compared with, so the two see much
# the same machine; none of them is always first or last.
PLAN = (GATEWAY_2_QUIET, GATEWAY_2, BARE_GRPC_2, BARE_HTTP_2, BARE_GRPC_1, GATEWAY_1)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: `server` / `against` req/s on `protocol` (at least `target`),
    or with `against` None, `server`'s p99 (below `target` ms); no target: shown only."""

    protocol: str
    server: Server
    against: Server | None
    target: float | None

    @property
    def name(self) -> str:
        if self.against is None:
            return f"p99 of {self.server.label}"
        return f"{self.server.label} / {self.against.label}"


CHECKS = (
    Check("stream", GATEWAY_2, BARE_GRPC_2, 0.9),
    Check("stream", GATEWAY_1, BARE_GRPC_1, 0.9),
    Check("grpc", GATEWAY_2, BARE_GRPC_2, 0.9),
    Check("http", GATEWAY_2, BARE_HTTP_2, 0.9),
    Check("grpc", GATEWAY_1, BARE_GRPC_1, None),
    *(Check(p, GATEWAY_2, None, P99_TARGET_MS) for p in PROTOCOLS),
    Check("stream", GATEWAY_1, None, P99_TARGET_MS),
    *(Check(p, GATEWAY_2, GATEWAY_2_QUIET, 0.95) for p in PROTOCOLS),
    *(Check(p, GATEWAY_2, GATEWAY_1, None) for p in PROTOCOLS),
)


@dataclass(frozen=True, slots=True)
class Point:
    """One perf_analyzer run against one server; NaN figures with an error."""

    server: str  # Server.label
    protocol: str
    requests_per_second: float = report.NAN
    p50_ms: float = report.NAN
    p99_ms: float = report.NAN
    server_cpu_percent: float = report.NAN
    loadgen_cpu_percent: float = report.NAN  # perf_analyzer's, on the same cores
    # The share of perf_analyzer's connections held by the serving process holding most
    # (SO_REUSEPORT hashes connections, it does not balance them): 0.5 is an even split
    # between 2 processes, 1.0 one process; sampled while the load runs.
    busiest_share: float = report.NAN
    load_average: float = report.NAN  # the machine's 1-minute load average after the run
    error: str = ""


def _tree(pid: int) -> list[int]:
    """`pid` and its children (a supervisor's workers)."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children, while they run."""
    return sum(cpu_seconds(each) for each in _tree(pid))


class ConnectionSampler:
    """Counts, while the load runs, how the serving processes `pids` share the connections
    to `port`; `busiest_share` is the busiest one's share at the moment most were open."""

    def __init__(self, pids: Sequence[int], port: int) -> None:
        self._pids = pids
        self._port = port
        self._most: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.25):
            counts = connections_by_process(self._pids, self._port)
            if sum(counts.values()) > sum(self._most.values()):
                self._most = counts

    @property
    def busiest_share(self) -> float:
        total = sum(self._most.values())
        return max(self._most.values()) / total if total else report.NAN


@contextlib.contextmanager
def started(
    server: Server, stores: dict[str, Path], workdir: Path
) -> Iterator[tuple[list[ServerProcess], dict[str, str]]]:
    """`server` running and ready: its processes and host:port per protocol. Always stopped."""
    if server.kind == "modelgate":
        log = workdir / f"modelgate-{server.processes}-{server.monitoring}.log"
        flags = ["--workers", str(server.processes), "--monitoring", server.monitoring]
        with bench.gateway(stores, log, flags, queue_budget=False) as (gateway, urls):
            for _ in range(20):  # every worker: each new connection may reach another
                gateway.wait_http_ok(f"http://{urls['http']}/v2/models/light/ready", 60)
            yield [gateway], {"stream": urls["grpc"], "grpc": urls["grpc"], "http": urls["http"]}
        return
    argv = [sys.executable, "-m", f"loadtest.{server.kind}", "--host", "127.0.0.1"]
    argv += ["--model", "light", "--reuse-port"]
    with contextlib.ExitStack() as stack:
        processes: list[ServerProcess] = []
        port = "0"  # the first picks a free port, the others join it
        for index in range(server.processes):
            log = workdir / f"{server.kind}-{server.processes}-{index}.log"
            process = stack.enter_context(running([*argv, "--port", port], log, bench.REPO))
            address = process.wait_for_line(bench.BARE_LINE, bench.READY_TIMEOUT).group(1)
            port = address.rsplit(":", 1)[1]
            processes.append(process)
        yield processes, {p: address for p in server.protocols}


def load_spec(protocol: str, url: str, args: argparse.Namespace, window_ms: int) -> perf.LoadSpec:
    """perf_analyzer's point for `protocol` (stream is gRPC with `--streaming`)."""
    wire = "http" if protocol == "http" else "grpc"
    return perf.LoadSpec(
        "light", url, wire, args.concurrency, window_ms, args.trials, streaming=protocol == "stream"
    )


def measure_point(
    server: Server,
    protocol: str,
    url: str,
    cpu: Callable[[], float],
    pids: Sequence[int],
    analyzer: perf.PerfAnalyzer,
    args: argparse.Namespace,
    workdir: Path,
) -> Point:
    """One point; once more if perf_analyzer fails (a busy machine), then an error row."""
    spec = load_spec(protocol, url, args, args.window_ms)
    failure = ""
    for _ in range(2):
        before = cpu()
        try:
            with ConnectionSampler(pids, int(url.rsplit(":", 1)[1])) as connections:
                load = perf.run(analyzer, spec, workdir, workdir / "input.json")
        except perf.LoadGeneratorError as exc:
            failure = str(exc).replace("\n", " | ")
            print(f"  {protocol} {server.label}: {failure:.120}", flush=True)
            continue
        return Point(
            server.label,
            protocol,
            load.requests_per_second,
            load.p50_us / 1000,
            load.p99_us / 1000,
            100 * (cpu() - before) / load.wall_seconds,
            100 * load.cpu_seconds / load.wall_seconds,
            connections.busiest_share,
            os.getloadavg()[0],
        )
    return Point(server.label, protocol, error=failure)


def measure_server(
    server: Server,
    protocols: Sequence[str],
    stores: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    args: argparse.Namespace,
    workdir: Path,
) -> list[Point]:
    """Start `server`, warm it up, measure each of its protocols in `protocols`, stop it."""
    with started(server, stores, workdir) as (processes, urls):

        def cpu() -> float:
            return sum(_tree_cpu(p.pid) for p in processes)

        pids = [pid for p in processes for pid in _tree(p.pid)]

        warmup = load_spec(protocols[0], urls[protocols[0]], args, 500)
        with contextlib.suppress(perf.LoadGeneratorError):  # a failed warm-up: points tell
            perf.run(analyzer, warmup, workdir, workdir / "input.json")
        points = []
        for protocol in protocols:
            point = measure_point(
                server, protocol, urls[protocol], cpu, pids, analyzer, args, workdir
            )
            print(f"  {_progress(point)}", flush=True)
            points.append(point)
    return points


def _progress(p: Point) -> str:
    if p.error:
        return f"{p.protocol} {p.server}: error"
    return (
        f"{p.protocol} {p.server}: {p.requests_per_second:,.0f} req/s, p50 {p.p50_ms:.1f} ms, "
        f"p99 {p.p99_ms:.1f} ms, cpu {p.server_cpu_percent:.0f}% (perf_analyzer "
        f"{p.loadgen_cpu_percent:.0f}%), busiest {p.busiest_share:.2f}, load {p.load_average:.1f}"
    )


# --- the report -------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else report.NAN


def _find(run: Sequence[Point], server: Server, protocol: str) -> Point | None:
    return next((p for p in run if p.server == server.label and p.protocol == protocol), None)


def median_points(runs: Sequence[Sequence[Point]]) -> list[Point]:
    """One point per (server, protocol), in first-run order, each figure the median of runs."""
    keys = list(dict.fromkeys((p.server, p.protocol) for run in runs for p in run))
    medians = []
    for server, protocol in keys:
        same = [p for run in runs for p in run if (p.server, p.protocol) == (server, protocol)]
        errors = "; ".join(p.error for p in same if p.error)
        figures = {
            field: _median([getattr(p, field) for p in same])
            for field in (
                "requests_per_second",
                "p50_ms",
                "p99_ms",
                "server_cpu_percent",
                "loadgen_cpu_percent",
                "busiest_share",
            )
        }
        loads = _median([p.load_average for p in same])
        medians.append(Point(server, protocol, **figures, load_average=loads, error=errors))
    return medians


def check_values(check: Check, runs: Sequence[Sequence[Point]]) -> list[float]:
    """The check's value in each run: the ratio of two points of that run, or a p99 in ms."""
    values = []
    for run in runs:
        point = _find(run, check.server, check.protocol)
        if check.against is None:
            values.append(point.p99_ms if point else report.NAN)
            continue
        other = _find(run, check.against, check.protocol)
        if point is None or other is None or not other.requests_per_second > 0:
            values.append(report.NAN)
        else:
            values.append(point.requests_per_second / other.requests_per_second)
    return values


def check_rows(runs: Sequence[Sequence[Point]], protocols: Sequence[str]) -> list[dict[str, Any]]:
    """Every check of `protocols`: per-run values, their median, the target and the verdict."""
    rows = []
    for check in CHECKS:
        if check.protocol not in protocols:
            continue
        values = check_values(check, runs)
        median = _median(values)
        if check.target is None or math.isnan(median):
            met = None
        elif check.against is None:
            met = median < check.target
        else:
            met = median >= check.target
        rows.append({
            "check": check.name,
            "protocol": check.protocol,
            "runs": values,
            "median": median,
            "target": check.target,
            "kind": "p99_ms" if check.against is None else "ratio",
            "met": met,
        })  # fmt: skip
    return rows


def point_table(points: Sequence[Point], runs: Sequence[Sequence[Point]]) -> tuple[Any, ...]:
    """(headers, rows, left columns) of the points' medians, with each run's req/s."""
    headers = ["protocol", "server", "req/s", "runs req/s", "p50 ms", "p99 ms", "server CPU"]
    headers.append("CPU us/req")  # on a busy machine the steadier figure: cost, not rate
    headers += ["perf_analyzer CPU", "busiest share"]
    rows = []
    for p in points:
        each = [q.requests_per_second for run in runs for q in run if q.server == p.server
                and q.protocol == p.protocol]  # fmt: skip
        rows.append([
            p.protocol,
            p.server,
            _num(p.requests_per_second, ",.0f"),
            ", ".join(_num(v, ",.0f") for v in each),
            _num(p.p50_ms, ".1f"),
            _num(p.p99_ms, ".1f"),
            _num(p.server_cpu_percent, ".0f") + "%",
            _num(p.server_cpu_percent * 10_000 / p.requests_per_second, ".0f"),
            _num(p.loadgen_cpu_percent, ".0f") + "%",
            _num(p.busiest_share, ".2f"),
        ])  # fmt: skip
    return headers, rows, 2


def check_table(rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
    """(headers, rows, left columns) of the checks."""
    headers = ["protocol", "check", "runs", "median", "target", "met"]
    cells = []
    for row in rows:
        ms = row["kind"] == "p99_ms"
        digits = ".1f" if ms else ".2f"
        target = "" if row["target"] is None else (
            f"< {row['target']:.0f} ms" if ms else f">= {row['target']:.2f}"
        )  # fmt: skip
        met = {None: "", True: "yes", False: "NO"}[row["met"]]
        cells.append([
            row["protocol"],
            row["check"],
            ", ".join(_num(v, digits) for v in row["runs"]),
            _num(row["median"], digits) + (" ms" if ms else ""),
            target,
            met,
        ])  # fmt: skip
    return headers, cells, 2


def _num(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--protocols", default=",".join(PROTOCOLS), help="of stream,grpc,http")
    cli.add_argument("--concurrency", type=int, default=64)
    cli.add_argument("--window-ms", type=int, default=2000)
    cli.add_argument("--trials", type=int, default=3, help="perf_analyzer windows per point")
    cli.add_argument("--repeat", type=int, default=3, help="runs; the report shows medians")
    cli.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    cli.add_argument("--perf-analyzer", type=Path, default=perf.DEFAULT_PATH)
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    args.protocols = [p for p in PROTOCOLS if p in args.protocols.split(",")]
    if not args.protocols or args.repeat < 1:
        cli.error("--protocols takes stream, grpc and/or http; --repeat must be at least 1")
    if args.out is None:
        args.out = report.results_path("workers")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every server `--repeat` times and report medians; 2 if perf_analyzer is missing."""
    started = perf.command_line(parse_args, argv)
    if started is None:
        return 2
    args, analyzer = started
    header: dict[str, Any] = {
        **report.machine(),
        "revision": report.revision(),
        "load generator": f"{analyzer.version()} ({analyzer.path})",
        "per point": f"c={args.concurrency}, {args.trials} windows of {args.window_ms} ms",
        "repeats": f"{args.repeat} (medians; servers in reverse order every other run)",
    }
    runs: list[list[Point]] = []
    with tempfile.TemporaryDirectory(prefix="modelgate-workers-") as tmp:
        workdir = Path(tmp)
        perf.write_input_data(workdir / "input.json")
        _, stores = bench.prepare_models(workdir, ["light"])
        for index in range(args.repeat):
            print(f"=== run {index + 1} of {args.repeat}", flush=True)
            order = PLAN if index % 2 == 0 else PLAN[::-1]
            run: list[Point] = []
            for server in order:
                protocols = [p for p in server.protocols if p in args.protocols]
                if protocols:
                    run += measure_server(server, protocols, stores, analyzer, args, workdir)
            runs.append(run)
    header["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    points = median_points(runs)
    points.sort(key=lambda p: (PROTOCOLS.index(p.protocol), p.server))
    checks = check_rows(runs, args.protocols)
    print()
    for key, value in header.items():
        print(f"{key}: {value}")
    for grid in (report.text_grid, *((report.markdown_grid,) if args.markdown else ())):
        print()
        print(grid(*point_table(points, runs)))
        print()
        print(grid(*check_table(checks)))
    for p in points:
        if p.error:
            print(f"error: {p.protocol} {p.server}: {p.error}")
    doc = {
        "machine": header,
        "runs": [[dataclasses.asdict(p) for p in run] for run in runs],
        "median": [dataclasses.asdict(p) for p in points],
        "checks": checks,
    }
    report.write_json(args.out, doc)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
