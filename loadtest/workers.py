"""Throughput with 1 and 2 serving processes (`--workers`), side by side.

The light model (loadtest/models.py), registered as the full benchmark registers it, served
by `modelgate serve --workers N` for each N, driven by perf_analyzer at one concurrency over
gRPC unary and HTTP JSON, one [1, 32] FP32 row per request; the runs of each N alternate,
so a busy machine's swings hit both alike. CPU is that of the whole process tree (the
supervisor and its workers).

    python -m loadtest.workers [--workers 1,2] [--repeat 2] [--window-ms 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtest import bench, perf
from loadtest.procs import cpu_seconds


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (the workers), while they run."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def measure(
    workers: int,
    protocol: str,
    stores: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[float, float, float, float]:
    """req/s, p50 ms, p99 ms and server CPU % (100 = one core) of one point."""
    log = workdir / f"gateway-{workers}-{protocol}.log"
    with bench.gateway(stores, log, ["--workers", str(workers)]) as (server, urls):
        for _ in range(20):  # every worker: each new connection may reach another
            server.wait_http_ok(f"http://{urls['http']}/v2/models/light/ready", 60)
        spec = perf.LoadSpec("light", urls[protocol], protocol, args.concurrency, 500, 3)
        perf.run(analyzer, spec, workdir, workdir / "input.json")  # warm-up
        spec = perf.LoadSpec(
            "light", urls[protocol], protocol, args.concurrency, args.window_ms, args.trials
        )
        before = _tree_cpu(server.pid)
        load = perf.run(analyzer, spec, workdir, workdir / "input.json")
        cpu = 100 * (_tree_cpu(server.pid) - before) / load.wall_seconds
    return load.requests_per_second, load.p50_us / 1000, load.p99_us / 1000, cpu


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--workers", default="1,2", help="comma list of worker counts")
    cli.add_argument("--protocols", default="grpc,http")
    cli.add_argument("--concurrency", type=int, default=64)
    cli.add_argument("--window-ms", type=int, default=3000)
    cli.add_argument("--trials", type=int, default=3)
    cli.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    cli.add_argument("--perf-analyzer", type=Path, default=perf.DEFAULT_PATH)
    args = cli.parse_args(argv)
    analyzer = perf.find_perf_analyzer(args.perf_analyzer)
    counts = [int(n) for n in args.workers.split(",")]
    protocols = args.protocols.split(",")
    with tempfile.TemporaryDirectory(prefix="modelgate-workers-") as tmp:
        workdir = Path(tmp)
        perf.write_input_data(workdir / "input.json")
        _, stores = bench.prepare_models(workdir, ["light"])
        runs: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
        for _ in range(args.repeat):
            for protocol in protocols:
                for n in counts:
                    try:
                        point = measure(n, protocol, stores, analyzer, args, workdir)
                    except perf.LoadGeneratorError as exc:  # a busy machine: once more
                        print(f"{protocol} workers={n}: again after {exc!s:.60}", flush=True)
                        point = measure(n, protocol, stores, analyzer, args, workdir)
                    runs.setdefault((protocol, n), []).append(point)
                    rps, p50, p99, cpu = point
                    print(f"{protocol} workers={n}: {rps:,.0f} req/s, p50 {p50:.1f} ms, "
                          f"p99 {p99:.1f} ms, cpu {cpu:.0f}%", flush=True)  # fmt: skip
    print("\n| protocol | workers | req/s | p50 | p99 | server CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for (protocol, n), points in runs.items():
        rps, p50, p99, cpu = (statistics.median(column) for column in zip(*points, strict=True))
        print(f"| {protocol} | {n} | {rps:,.0f} | {p50:.1f} ms | {p99:.1f} ms | {cpu:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
