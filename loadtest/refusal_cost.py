"""What an HTTP answer costs the gateway's event loop: a request served (200) against one
refused at admission (503, its body unread), in CPU time per answer.

Under overload a process refuses most requests, so the cost of a refusal decides how much
of the loop is left for serving. CPU time of the loop's thread (/proc) is steadier on a
shared machine than a throughput.

For each repeat, two gateways one after the other (the light model): one serving, and one
started with `--max-inflight 1` (and `--shed-connections off`) whose only place is held by
a request whose body never completes, so that every other inference request is refused.
Against each, `--connections` keep-alive connections send V2 JSON requests pipelined
`--depth` at a time for `--seconds`.
Reported: answers by status, answers per second, and the loop's CPU microseconds per
answer; the median over `--repeat`.

    python -m loadtest.refusal_cost [--seconds 5] [--repeat 3] [--markdown]

JSON goes to loadtest/results/refusal_cost-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loadtest import bench, report
from loadtest.clients import http_requests
from loadtest.procs import cpu_seconds

# Refused: every request answered 503 on its kept-open connection (`--shed-connections off`;
# shedding would close each and have the kernel refuse the next: no per-request cost left).
REFUSED = ["--max-inflight", "1", "--body-timeout", "3600", "--shed-connections", "off"]
CASES = {"served": [], "refused": REFUSED}
HEADERS = ("case", "answers", "answers/s", "loop CPU us per answer (median)", "each repeat")


async def _pipeline(address: str, statuses: Counter[int], depth: int, until: float) -> None:
    """Requests `depth` at a time on one connection until `until`; statuses counted."""
    host, port = address.rsplit(":", 1)
    requests = http_requests(address)
    reader, writer = await asyncio.open_connection(host, int(port))
    sent = 0
    while time.monotonic() < until:
        writer.write(b"".join(requests[(sent + k) % len(requests)] for k in range(depth)))
        sent += depth
        for _ in range(depth):
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            statuses[int(head.split(b" ", 2)[1])] += 1
            if b"transfer-encoding: chunked" in head:
                await reader.readuntil(b"0\r\n\r\n")  # JSON holds no CRLF
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
    writer.close()


async def measure(
    address: str, pid: int, args: argparse.Namespace, hold: bool
) -> tuple[Counter[int], float, float]:
    """Answers by status, wall seconds and loop CPU seconds of one run against a gateway."""
    holder = None
    if hold:  # the only place, taken by a body that never completes
        host, port = address.rsplit(":", 1)
        _, holder = await asyncio.open_connection(host, int(port))
        request = http_requests(address)[0]
        holder.write(request[: request.index(b"\r\n\r\n") + 10])
        await asyncio.sleep(0.5)
    statuses: Counter[int] = Counter()
    cpu, start = cpu_seconds(pid, pid), time.monotonic()
    until = start + args.seconds
    await asyncio.gather(
        *(_pipeline(address, statuses, args.depth, until) for _ in range(args.connections))
    )
    cpu, wall = cpu_seconds(pid, pid) - cpu, time.monotonic() - start
    if holder is not None:
        holder.close()
    return statuses, wall, cpu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--seconds", type=float, default=5.0, help="per run")
    cli.add_argument("--repeat", type=int, default=3)
    cli.add_argument("--connections", type=int, default=8)
    cli.add_argument("--depth", type=int, default=16, help="requests pipelined at a time")
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    if args.seconds <= 0 or min(args.repeat, args.connections, args.depth) < 1:
        cli.error("--seconds must be positive; --repeat, --connections, --depth at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the cases `--repeat` times, alternating; print and save the results."""
    args = parse_args(argv)
    started = time.monotonic()
    header = report.machine()
    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    totals: dict[str, Counter[int]] = {case: Counter() for case in CASES}
    with tempfile.TemporaryDirectory(prefix="refusal-cost-") as tmp:
        workdir = Path(tmp)
        stores = bench.prepare_models(workdir, ["light"])[1]
        for _ in range(args.repeat):
            for case, flags in CASES.items():
                with bench.gateway(stores, workdir / "gateway.log", flags) as (server, urls):
                    statuses, wall, cpu = asyncio.run(
                        measure(urls["http"], server.pid, args, hold=case == "refused")
                    )
                answers = sum(statuses.values())
                totals[case] += statuses
                runs[case].append(
                    {"answers": answers, "seconds": wall, "cpu_us": 1e6 * cpu / max(answers, 1)}
                )
    rows: list[list[str]] = []
    for case, done in runs.items():
        each = [r["cpu_us"] for r in done]
        rate = sum(r["answers"] for r in done) / sum(r["seconds"] for r in done)
        answered = ", ".join(f"{k} x{v:,}" for k, v in sorted(totals[case].items()))
        rows.append(
            [case, answered, f"{rate:,.0f}", f"{statistics.median(each):.1f}",
             " / ".join(f"{x:.1f}" for x in each)]
        )  # fmt: skip
    header = report.finish_header(header, started)
    report.print_run(header, (HEADERS, rows, 2), [], args.markdown)
    out = args.out or report.results_path("refusal_cost")
    doc = {"header": header, "runs": runs, "statuses": {k: dict(v) for k, v in totals.items()}}
    report.write_json(out, doc)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
