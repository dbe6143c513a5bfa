"""CPU per request at a fixed request rate: the gateway against the bare servers.

Throughput at a saturating concurrency moves by ±15% from run to run on a small shared
machine, more than the few percent separating the gateway from the bare server. At a fixed
rate below saturation both servers do the same work per second, and the CPU time each
spends per request is steadier: the event loop's thread (the bottleneck once saturated) and
the whole process, read from /proc around one perf_analyzer run. Servers alternate within
each repeat; the report gives medians.

    python -m loadtest.cpu_cost                      # light model over gRPC, 3,500 req/s, 3 repeats
    python -m loadtest.cpu_cost --rate 3000 --repeat 5
    python -m loadtest.cpu_cost --protocol http      # V2 JSON against bare uvicorn
    python -m loadtest.cpu_cost --protocol http --baseline /tmp/old   # and an older checkout

`--baseline DIR` adds "gateway@baseline": the gateway of another checkout (DIR, for example
`git worktree add /tmp/old main`), measured in the same repeats, so a change's effect is a
ratio taken on the same machine at the same moment.

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

SERVERS = {
    "grpc": ("gateway", "gateway/monitoring-off", "bare_grpc/uvloop", "bare_grpc"),
    "http": ("gateway", "gateway/monitoring-off", "bare_http/uvloop"),
}
BASELINE = "gateway@baseline"


def measure(
    server_name: str,
    store: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    protocol: str,
    rate: int,
    window_ms: int,
    workdir: Path,
    baseline: Path | None = None,
) -> tuple[float, float]:
    """(loop thread, whole process) CPU microseconds per request for one server; the
    gateway of the checkout `baseline` for `BASELINE`."""
    name, code = server_name, REPO
    if server_name == BASELINE:
        assert baseline is not None
        name, code = "gateway", baseline
    plan = ServerPlan("light", name, "on" if "gateway" in name else "-", ())
    log = workdir / f"{server_name.replace('/', '-').replace('@', '-')}.log"
    with running(server_argv(plan, store), log, cwd=code, env={"PYTHONPATH": str(code)}) as server:
        url = wait_ready(plan, server)[protocol]
        spec = perf.LoadSpec("light", url, protocol, 1, window_ms, 3, request_rate=rate)
        warm = perf.LoadSpec("light", url, protocol, 1, 1000, 3, request_rate=rate)
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
    cli.add_argument("--protocol", choices=sorted(SERVERS), default="grpc")
    cli.add_argument("--baseline", type=Path, help="another checkout whose gateway to add")
    cli.add_argument("--rate", type=int, default=3500, help="requests/s (below saturation)")
    cli.add_argument("--repeat", type=int, default=3)
    cli.add_argument("--window-ms", type=int, default=3000)
    args = cli.parse_args(argv)
    try:
        analyzer = perf.find_perf_analyzer(args.perf_analyzer)
    except perf.LoadGeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    servers = SERVERS[args.protocol] + ((BASELINE,) if args.baseline else ())
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    rate, window_ms = args.rate, args.window_ms
    with tempfile.TemporaryDirectory(prefix="modelgate-cpu-") as tmp:
        workdir = Path(tmp)
        perf.write_input_data(workdir / "input.json")
        _, stores = prepare_models(workdir, ["light"])
        for index in range(args.repeat):
            # Reversed every other repeat: a machine getting busier hits every server alike.
            for name in servers if index % 2 == 0 else servers[::-1]:
                try:
                    loop, whole = measure(
                        name, stores, analyzer, args.protocol, rate, window_ms, workdir,
                        args.baseline,
                    )  # fmt: skip
                except (ServerError, perf.LoadGeneratorError) as exc:
                    print(f"run {index + 1} {name}: failed: {exc}", flush=True)
                    continue
                results[name].append((loop, whole))
                print(f"run {index + 1} {name:24s} loop thread {loop:6.1f} µs/request, "
                      f"process {whole:6.1f}", flush=True)  # fmt: skip
    print(f"\nlight model, {args.protocol}, {args.rate} req/s, medians of {args.repeat}:")
    medians = {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in results.items()
        if runs
    }
    for name, (loop, whole) in medians.items():
        print(f"  {name:24s} loop thread {loop:6.1f} µs/request, process {whole:6.1f}")
    bare = min((medians[n][0] for n in medians if n.startswith("bare")), default=None)
    if bare is not None and "gateway" in medians:
        gateway = medians["gateway"][0]
        print(f"gateway loop thread / cheaper bare server's: {gateway / bare:.3f} "
              f"(the ratio of throughputs it implies: {bare / gateway:.3f})")  # fmt: skip
    if BASELINE in medians and "gateway" in medians:
        print(f"gateway / baseline gateway, loop thread: "
              f"{medians['gateway'][0] / medians[BASELINE][0]:.3f}, "
              f"process: {medians['gateway'][1] / medians[BASELINE][1]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
