"""CPU per request at a fixed request rate: the gateway against the bare gRPC server.

Throughput at a saturating concurrency moves by ±15% from run to run on a small shared
machine, more than the few percent separating the gateway from the bare server. At a fixed
rate below saturation both servers do the same work per second, and the CPU time each
spends per request is steadier: the event loop's thread (the bottleneck once saturated) and
the whole process, read from /proc around one perf_analyzer run. Servers alternate within
each repeat; the report gives medians.

    python -m loadtest.cpu_cost                      # light model over gRPC, 3,500 req/s, 3 repeats
    python -m loadtest.cpu_cost --rate 3000 --repeat 5

Requests are counted as the rate times the run's wall time, start-up included, so the
figures read a few percent low, the same for every server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loadtest import perf
from loadtest.bench import REPO, ServerPlan, prepare_models, server_argv, wait_ready
from loadtest.procs import ServerError, cpu_seconds, running

SERVERS = ("gateway", "gateway/monitoring-off", "bare_grpc/uvloop", "bare_grpc")


def measure(
    server_name: str,
    store: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    rate: int,
    window_ms: int,
    workdir: Path,
) -> tuple[float, float]:
    """(loop thread, whole process) CPU microseconds per request for one server."""
    plan = ServerPlan("light", server_name, "on" if "gateway" in server_name else "-", ())
    log = workdir / f"{server_name.replace('/', '-')}.log"
    with running(server_argv(plan, store), log, cwd=REPO) as server:
        url = wait_ready(plan, server)["grpc"]
        spec = perf.LoadSpec("light", url, "grpc", 1, window_ms, 3, request_rate=rate)
        warm = perf.LoadSpec("light", url, "grpc", 1, 1000, 3, request_rate=rate)
        perf.run(analyzer, warm, workdir, workdir / "input.json")
        loop_before, all_before = cpu_seconds(server.pid, server.pid), cpu_seconds(server.pid)
        started = time.monotonic()
        perf.run(analyzer, spec, workdir, workdir / "input.json")
        requests = rate * (time.monotonic() - started)
        loop = cpu_seconds(server.pid, server.pid) - loop_before
        whole = cpu_seconds(server.pid) - all_before
    return loop / requests * 1e6, whole / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--perf-analyzer", type=Path, default=perf.DEFAULT_PATH)
    cli.add_argument("--rate", type=int, default=3500, help="requests/s (below saturation)")
    cli.add_argument("--repeat", type=int, default=3)
    cli.add_argument("--window-ms", type=int, default=3000)
    args = cli.parse_args(argv)
    try:
        analyzer = perf.find_perf_analyzer(args.perf_analyzer)
    except perf.LoadGeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SERVERS}
    rate, window_ms = args.rate, args.window_ms
    with tempfile.TemporaryDirectory(prefix="modelgate-cpu-") as tmp:
        workdir = Path(tmp)
        perf.write_input_data(workdir / "input.json")
        _, stores = prepare_models(workdir, ["light"])
        for index in range(args.repeat):
            for name in SERVERS:
                try:
                    loop, whole = measure(name, stores, analyzer, rate, window_ms, workdir)
                except (ServerError, perf.LoadGeneratorError) as exc:
                    print(f"run {index + 1} {name}: failed: {exc}", flush=True)
                    continue
                results[name].append((loop, whole))
                print(f"run {index + 1} {name:24s} loop thread {loop:6.1f} µs/request, "
                      f"process {whole:6.1f}", flush=True)  # fmt: skip
    print(f"\nlight model, gRPC, {args.rate} req/s, medians of {args.repeat}:")
    medians = {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in results.items()
        if runs
    }
    for name, (loop, whole) in medians.items():
        print(f"  {name:24s} loop thread {loop:6.1f} µs/request, process {whole:6.1f}")
    bare = min((medians[n][0] for n in ("bare_grpc/uvloop", "bare_grpc") if n in medians),
               default=None)  # fmt: skip
    if bare is not None and "gateway" in medians:
        gateway = medians["gateway"][0]
        print(f"gateway loop thread / cheaper bare server's: {gateway / bare:.3f} "
              f"(the ratio of throughputs it implies: {bare / gateway:.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
