"""Throughput with 1 and 2 serving processes (`--workers`), side by side.

The light model (loadtest/models.py), registered as the full benchmark registers it, served
by `modelgate serve --workers N` for each N, driven by perf_analyzer at one concurrency over
gRPC unary and HTTP JSON, one [1, 32] FP32 row per request; the runs of each N alternate,
so a busy machine's swings hit both alike. CPU is that of the whole process tree (the
supervisor and its workers).

    python -m loadtest.workers [--workers 1,2] [--repeat 2] [--window-ms 3000]
                               [--monitoring on,off]
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
    monitoring: str = "on",
) -> tuple[float, float, float, float]:
    """req/s, p50 ms, p99 ms and server CPU % (100 = one core) of one point."""
    log = workdir / f"gateway-{workers}-{protocol}-{monitoring}.log"
    flags = ["--workers", str(workers), "--monitoring", monitoring]
    with bench.gateway(stores, log, flags) as (server, urls):
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
    cli.add_argument("--monitoring", default="on", help="drift monitoring: on, off or on,off")
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
        runs: dict[tuple[str, int, str], list[tuple[float, float, float, float]]] = {}
        for _ in range(args.repeat):
            for protocol in protocols:
                for n in counts:
                    for on in args.monitoring.split(","):
                        try:
                            point = measure(n, protocol, stores, analyzer, args, workdir, on)
                        except perf.LoadGeneratorError as exc:  # a busy machine: once more
                            print(f"{protocol} workers={n}: again after {exc!s:.60}", flush=True)
                            point = measure(n, protocol, stores, analyzer, args, workdir, on)
                        runs.setdefault((protocol, n, on), []).append(point)
                        rps, p50, p99, cpu = point
                        print(f"{protocol} workers={n} monitoring={on}: {rps:,.0f} req/s, "
                              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, cpu {cpu:.0f}%",
                              flush=True)  # fmt: skip
    print("\n| protocol | workers | monitoring | req/s | p50 | p99 | server CPU |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for (protocol, n, on), points in runs.items():
        rps, p50, p99, cpu = (statistics.median(column) for column in zip(*points, strict=True))
        print(f"| {protocol} | {n} | {on} | {rps:,.0f} | {p50:.1f} ms | {p99:.1f} ms | "
              f"{cpu:.0f}% |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
