"""The modelgate benchmark: gateway vs bare reference servers vs in-process ONNX Runtime.

One run builds the two benchmark models (loadtest/models.py), registers each in its own
temporary registry store through the `modelgate registry` CLI, then starts every server
under test as a subprocess on 127.0.0.1 and drives it with Triton's perf_analyzer, one
[1, 32] FP32 row per request:

    gateway, light model, batching on  (defaults)             gRPC + HTTP JSON, c = 1, 16, 64
    gateway, light model, batching off (--max-batch-size 1)   gRPC + HTTP JSON, c = 64
    gateway, light model, drift monitoring off                gRPC + HTTP JSON, c = 64
    bare_grpc light (grpc.aio asyncio; uvloop, sync pool)     gRPC, c = 1, 64; variants c = 64
    bare_http light (uvicorn + httptools + uvloop)            HTTP JSON, c = 1, 64
    gateway, heavy model, batching on and off                 gRPC c = 1, 16, 64; HTTP c = 64

The light model is registered with a reference profile (a sample of its training
distribution), so the drift monitor works as in production; the heavy one learns its
reference from its first live rows. The monitoring-off gateway gives monitoring's cost.
It also measures both models' in-process ceiling (loadtest/ceiling.py) with the gateway's
session options. For each point it prints req/s, p50/p99 and the CPU used by perf_analyzer
and by the server (100% = one core), then the ratios the targets are stated in.

    bash loadtest/install_perf_analyzer.sh          # once: perf_analyzer in /tmp/pa-venv
    python -m loadtest.bench --quick                 # smoke run, about 1.5 minutes
    python -m loadtest.bench --repeat 3 --markdown   # medians of 3 full runs, docs/performance.md
    python -m loadtest.bench --only light --protocols grpc

Results (every run and the medians) go to loadtest/results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import ceiling, perf, report
from loadtest.models import MODELS
from loadtest.procs import ServerError, ServerProcess, running

REPO = Path(__file__).resolve().parent.parent
GATEWAY_LINE = r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)"
BARE_LINE = r"listening on (\S+:\d+)"
READY_TIMEOUT = 180.0  # the heavy model takes a while to load and warm up on a busy machine


@dataclass(frozen=True, slots=True)
class Profile:
    """How long each measurement takes: full runs for numbers, quick ones for smoke tests."""

    window_ms: int
    trials: int
    warmup_ms: int
    ceiling_seconds: float
    ceiling_batches: tuple[int, ...]


FULL = Profile(3000, 3, 1000, 1.0, ceiling.BATCH_SIZES)
QUICK = Profile(1000, 3, 300, 0.3, (1, 16, 64, 128))


@dataclass(frozen=True, slots=True)
class ServerPlan:
    """One server process under test and the (protocol, concurrency) points it gets."""

    model: str
    server: str  # gateway | bare_grpc | bare_grpc/uvloop | bare_grpc/sync | bare_http
    batching: str  # on | off | - (bare servers do not batch)
    points: tuple[tuple[str, int], ...]


def build_plan(quick: bool, only: str | None, protocols: set[str]) -> list[ServerPlan]:
    """The servers and points of one run, filtered by model and protocol."""
    levels = (1, 64) if quick else (1, 16, 64)
    light_on = tuple((p, c) for p in ("grpc", "http") for c in levels)
    plans = [
        ServerPlan("light", "gateway", "on", light_on),
        ServerPlan("light", "gateway", "off", (("grpc", 64), ("http", 64))),
        ServerPlan("light", "gateway/monitoring-off", "on", (("grpc", 64), ("http", 64))),
        ServerPlan("light", "bare_grpc", "-", tuple(("grpc", c) for c in levels if c != 16)),
        ServerPlan("light", "bare_http", "-", tuple(("http", c) for c in levels if c != 16)),
    ]
    if not quick:
        plans.insert(3, ServerPlan("light", "bare_grpc/uvloop", "-", (("grpc", 64),)))
        plans.insert(4, ServerPlan("light", "bare_grpc/sync", "-", (("grpc", 64),)))
    heavy = (("grpc", 64),) if quick else (*(("grpc", c) for c in levels), ("http", 64))
    plans += [ServerPlan("heavy", "gateway", b, heavy) for b in ("on", "off")]
    result = []
    for plan in plans:
        points = tuple((p, c) for p, c in plan.points if p in protocols)
        if points and (only is None or plan.model == only):
            result.append(dataclasses.replace(plan, points=points))
    return result


def server_argv(plan: ServerPlan, stores: dict[str, Path], queue_budget: bool = False) -> list[str]:
    """The command line that starts `plan`'s server on free ports of 127.0.0.1.

    A gateway runs without its queue budget unless `queue_budget`: perf_analyzer stops at
    the first refused request, and on a loaded machine a closed loop of 64 users can make a
    request wait past the budget on the event loop. Throughput benchmarks measure serving,
    not shedding; the overload tools keep the budget."""
    python = sys.executable
    if plan.server.startswith("gateway"):
        argv = [python, "-m", "modelgate", "serve", "--store", str(stores[plan.model])]
        argv += ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
        argv += ["--metrics-port", "0", "--drain-delay", "0"]
        if not queue_budget:
            argv += ["--queue-budget-ms", "0"]
        if plan.server.endswith("/monitoring-off"):
            argv += ["--monitoring", "off"]
        return argv + (["--max-batch-size", "1"] if plan.batching == "off" else [])
    module, _, variant = plan.server.partition("/")
    argv = [python, "-m", f"loadtest.{module}", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--model", plan.model]
    return argv + {"": [], "uvloop": ["--loop", "uvloop"], "sync": ["--sync"]}[variant]


def wait_ready(plan: ServerPlan, server: ServerProcess) -> dict[str, str]:
    """Block until the server serves `plan.model`; its host:port per protocol."""
    if plan.server.startswith("gateway"):
        found = server.wait_for_line(GATEWAY_LINE, READY_TIMEOUT)
        urls = {"http": found.group(1), "grpc": found.group(2), "metrics": found.group(3)}
        server.wait_http_ok(f"http://{urls['http']}/v2/models/{plan.model}/ready", READY_TIMEOUT)
        return urls
    address = server.wait_for_line(BARE_LINE, READY_TIMEOUT).group(1)
    return {"grpc" if plan.server.startswith("bare_grpc") else "http": address}


@contextlib.contextmanager
def gateway(
    stores: dict[str, Path],
    log: Path,
    flags: Sequence[str] = (),
    model: str = "light",
    queue_budget: bool = True,
    cpus: Sequence[int] = (),
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A gateway serving `model` (registered by `prepare_models`) with the benchmark's flags
    plus `flags` (a flag given again wins), ready; its host:port per protocol. Always stopped.
    `queue_budget` False for a tool that drives it with perf_analyzer (see `server_argv`).
    `cpus`: the only CPUs it may run on (util-linux's `taskset`, so every thread is bound)."""
    plan = ServerPlan(model, "gateway", "on", ())
    argv = [*server_argv(plan, stores, queue_budget), *flags]
    if cpus:
        argv = ["taskset", "--cpu-list", ",".join(map(str, cpus)), *argv]
    with running(argv, log, cwd=REPO) as server:
        yield server, wait_ready(plan, server)


def measure_server(
    plan: ServerPlan,
    stores: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    profile: Profile,
    workdir: Path,
) -> list[report.PointResult]:
    """Start one server, warm it up, run each of its points, stop it."""
    name = plan.server.replace("/", "-")
    log = workdir / f"{plan.model}-{name}-{plan.batching}.log"
    blank = [
        report.PointResult(plan.model, plan.server, p, plan.batching, c) for p, c in plan.points
    ]
    with running(server_argv(plan, stores), log, cwd=REPO) as server:
        try:
            urls = wait_ready(plan, server)
            protocol, _ = plan.points[0]
            warmup = perf.LoadSpec(plan.model, urls[protocol], protocol, 64, profile.warmup_ms, 3)
            perf.run(analyzer, warmup, workdir, workdir / "input.json")
        except (ServerError, perf.LoadGeneratorError) as exc:
            return [dataclasses.replace(p, error=str(exc).splitlines()[0]) for p in blank]
        return [measure_point(p, urls, server, analyzer, profile, workdir) for p in blank]


def measure_point(
    point: report.PointResult,
    urls: dict[str, str],
    server: ServerProcess,
    analyzer: perf.PerfAnalyzer,
    profile: Profile,
    workdir: Path,
    extra: Sequence[str] = (),
) -> report.PointResult:
    """One perf_analyzer run against a ready server, with both sides' CPU use; `extra`:
    more perf_analyzer options."""
    spec = perf.LoadSpec(
        point.model,
        urls[point.protocol],
        point.protocol,
        point.concurrency,
        profile.window_ms,
        profile.trials,
        extra=tuple(extra),
    )
    server_before = server.cpu_seconds()
    try:
        load = perf.run(analyzer, spec, workdir, workdir / "input.json")
    except perf.LoadGeneratorError as exc:
        return dataclasses.replace(point, error=str(exc).replace("\n", " | "))
    server_cpu = server.cpu_seconds() - server_before
    result = dataclasses.replace(
        point,
        requests_per_second=load.requests_per_second,
        p50_ms=load.p50_us / 1000,
        p99_ms=load.p99_us / 1000,
        loadgen_cpu_percent=100 * load.cpu_seconds / load.wall_seconds,
        server_cpu_percent=100 * server_cpu / load.wall_seconds,
    )
    print(f"  {report.text_table([result]).splitlines()[-1]}", flush=True)
    return result


def prepare_models(workdir: Path, models: list[str]) -> tuple[dict[str, bytes], dict[str, Path]]:
    """Build each model, write it to disk and register it (stage production) in its own
    store through the registry CLI; returns the ONNX bytes and the store per model."""
    built, stores = {}, {}
    for name in models:
        built[name] = MODELS[name]()
        path = workdir / f"{name}.onnx"
        path.write_bytes(built[name])
        stores[name] = workdir / f"store-{name}"
        register = [sys.executable, "-m", "modelgate", "registry", "--store"]
        register += [str(stores[name]), "register", name, str(path), "--stage", "production"]
        if name == "light":
            from loadtest.drift_quality import REFERENCE_ROWS, LightTraffic

            sample = workdir / "light-reference.npy"
            inputs, _ = LightTraffic().rows(np.random.default_rng(0), REFERENCE_ROWS)
            np.save(sample, inputs["input"])
            register += ["--reference", str(sample)]
        subprocess.run(register, check=True, capture_output=True, timeout=120, cwd=REPO)
    return built, stores


def measure_ceilings(built: dict[str, bytes], profile: Profile) -> list[report.CeilingResult]:
    """Each model's in-process ORT throughput, one intra-op thread like the gateway's default."""
    results = []
    for name, model in built.items():
        points = ceiling.measure(model, profile.ceiling_batches, profile.ceiling_seconds)
        top = ceiling.best(points)
        at_64 = next((p.rows_per_second for p in points if p.batch_size == 64), report.NAN)
        results.append(report.CeilingResult(name, top.rows_per_second, top.batch_size, at_64))
        print(f"  ceiling {report.ceiling_lines(results[-1:])[0]}", flush=True)
    return results


def run_once(
    plans: list[ServerPlan],
    built: dict[str, bytes],
    stores: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    profile: Profile,
    workdir: Path,
) -> tuple[list[report.PointResult], list[report.CeilingResult]]:
    """Every server plan, then the ceilings (with no server running)."""
    points: list[report.PointResult] = []
    for plan in plans:
        print(f"{plan.model} {plan.server} batching={plan.batching}", flush=True)
        points += measure_server(plan, stores, analyzer, profile, workdir)
    return points, measure_ceilings(built, profile)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--perf-analyzer", type=Path, default=perf.DEFAULT_PATH)
    cli.add_argument("--quick", action="store_true", help="short windows, fewer points")
    cli.add_argument("--only", choices=sorted(MODELS), help="benchmark one model only")
    cli.add_argument("--protocols", default="grpc,http", help="comma list: grpc,http")
    cli.add_argument("--repeat", type=int, default=1, help="runs; the report shows medians")
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    args.protocols = {p.strip() for p in args.protocols.split(",") if p.strip()}
    if not args.protocols <= {"grpc", "http"} or args.repeat < 1:
        cli.error("--protocols takes grpc and/or http; --repeat must be at least 1")
    if args.out is None:
        args.out = report.results_path("bench")
    return args


def print_report(
    points: list[report.PointResult],
    ceilings: list[report.CeilingResult],
    header: dict[str, Any],
    markdown: bool,
) -> None:
    """The final tables, ratios and targets."""
    print()
    for key, value in header.items():
        print(f"{key}: {value}")
    print()
    print(report.text_table(points))
    print()
    for line in [*report.ceiling_lines(ceilings), *report.ratios(points, ceilings)]:
        print(line)
    print()
    print("\n".join(report.targets(points, ceilings)))
    if markdown:
        print()
        print(report.markdown_table(points))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark `--repeat` times and report medians; 2 if perf_analyzer is missing."""
    started = perf.command_line(parse_args, argv)
    if started is None:
        return 2
    args, analyzer = started
    profile = QUICK if args.quick else FULL
    plans = build_plan(args.quick, args.only, args.protocols)
    models = sorted({p.model for p in plans} | ({args.only} if args.only else set()))
    header: dict[str, Any] = {
        **report.machine(),
        "load generator": f"{analyzer.version()} ({analyzer.path})",
        "loadgen/server CPU %": "user+system time over the run's wall time; 100 = one core",
        "per point": f"{profile.trials} windows of {profile.window_ms} ms, stability check off",
        "repeats": f"{args.repeat} (numbers are medians)" if args.repeat > 1 else "1",
    }
    runs: list[list[report.PointResult]] = []
    ceiling_runs: list[list[report.CeilingResult]] = []
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        workdir = Path(tmp)
        perf.write_input_data(workdir / "input.json")
        built, stores = prepare_models(workdir, models)
        for index in range(args.repeat):
            print(f"=== run {index + 1} of {args.repeat}", flush=True)
            points, ceilings = run_once(plans, built, stores, analyzer, profile, workdir)
            runs.append(points)
            ceiling_runs.append(ceilings)
    points = report.median_points(runs)
    ceilings = report.median_ceilings(ceiling_runs)
    print_report(points, ceilings, header, args.markdown)
    write_json(args.out, header, runs, ceiling_runs, points, ceilings)
    print(f"\nresults: {args.out}")
    return 0


def write_json(
    path: Path,
    header: dict[str, Any],
    runs: list[list[report.PointResult]],
    ceiling_runs: list[list[report.CeilingResult]],
    points: list[report.PointResult],
    ceilings: list[report.CeilingResult],
) -> None:
    """Every run's raw numbers plus the medians, ratios and targets."""
    doc = {
        "machine": header,
        "runs": [[dataclasses.asdict(p) for p in run] for run in runs],
        "ceiling_runs": [[dataclasses.asdict(c) for c in run] for run in ceiling_runs],
        "median": [dataclasses.asdict(p) for p in points],
        "median_ceilings": [dataclasses.asdict(c) for c in ceilings],
        "ratios": report.ratios(points, ceilings),
        "targets": report.targets(points, ceilings),
    }
    report.write_json(path, doc)


if __name__ == "__main__":
    sys.exit(main())
