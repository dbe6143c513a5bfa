"""Drain under load: SIGTERM a gateway while HTTP and gRPC clients keep sending, and count
the requests it lost.

Each round starts a gateway (the light model; `--drain-delay` and `--drain-seconds` passed
on, the server's own defaults unless given) and sends it open-loop Poisson load from two
generator processes: HTTP V2 JSON over a pool of keep-alive connections at `--http-rate`,
gRPC unary calls at `--grpc-rate` (see loadtest/openloop.py). After `--lead` seconds it sends
SIGTERM and keeps sending until the gateway has exited (waiting at most until the grace end,
SIGTERM + drain delay + drain seconds, plus 5 s) and `--tail` seconds more. Every request
scheduled before the grace end (or before sending stopped, if that came first) is counted as:

- answered: HTTP 200, gRPC OK;
- refused: HTTP 503 (or 429), gRPC UNAVAILABLE or RESOURCE_EXHAUSTED, or a connection
  refused once the listener has closed. The client knows it was not served and can retry;
- lost: the connection closed or was reset with the request unanswered, CANCELLED,
  UNAVAILABLE for a broken connection, or no answer within `--timeout` seconds;
- other: any other status.

"lost at" gives the first and last loss (or other failure), seconds after SIGTERM; a loss
before SIGTERM means the load itself was too much for the gateway at the time (a warning
says so).
What the failures said (statuses, error texts) is listed under the table.

Exit status 1 if any request was lost or ended otherwise, so the tool can serve as a check.

    python -m loadtest.drain [--rounds 3] [--http-rate 1000] [--grpc-rate 500] [--markdown]

A full run (3 rounds at the server's defaults) takes about a minute. JSON goes to
loadtest/results/drain-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest import bench, report
from loadtest.clients import Outcome
from loadtest.openloop import Generators, Job, Outcomes
from loadtest.procs import ServerProcess
from modelgate.gateway.settings import ServerSettings

EXIT_MARGIN = 5.0  # seconds past the grace end to wait for the gateway to exit


@dataclass
class Tally:
    """One protocol's requests in one round."""

    round: int
    protocol: str
    before_sigterm: int
    after_sigterm: int  # and before the grace end
    answered: int
    refused: int
    lost: int
    other: int
    lost_before_sigterm: int  # ended before SIGTERM: the load, not the drain, lost them
    exit_seconds: float | None  # from SIGTERM to the gateway's exit; None: not in time
    exit_code: int | None
    lost_at: tuple[float, float] | None  # first and last loss, seconds after SIGTERM
    details: dict[str, int] = field(default_factory=dict)


def tally(
    number: int,
    protocol: str,
    o: Outcomes,
    sigterm: float,
    grace_end: float,
    exited: tuple[float | None, int | None],
) -> Tally:
    """Count the requests of one protocol scheduled before the grace end."""
    counted = o.scheduled < grace_end
    failed = counted & np.isin(o.outcome, (Outcome.LOST, Outcome.TIMEOUT, Outcome.ERROR))
    ended = o.finished[failed] - sigterm
    lost_at = (float(ended.min()), float(ended.max())) if ended.size else None
    lost = o.count(Outcome.LOST, counted) + o.count(Outcome.TIMEOUT, counted)
    return Tally(
        number,
        protocol,
        int(np.count_nonzero(o.scheduled < sigterm)),
        int(np.count_nonzero(counted & (o.scheduled >= sigterm))),
        o.count(Outcome.OK, counted),
        o.count(Outcome.REFUSED, counted),
        lost,
        o.count(Outcome.ERROR, counted),
        int(np.count_nonzero(failed & (o.finished < sigterm))),
        *exited,
        lost_at,
        dict(o.details.most_common()),
    )


async def wait_exit(server: ServerProcess, until: float) -> int | None:
    """The gateway's exit status once it has exited, or None at `until`."""
    while server.returncode is None and time.monotonic() < until:
        await asyncio.sleep(0.01)
    return server.returncode


async def one_round(
    number: int, args: argparse.Namespace, stores: dict[str, Path], workdir: Path, gens: Generators
) -> list[Tally]:
    """Load, SIGTERM, wait for the exit, count."""
    grace = args.drain_delay + args.drain_seconds
    flags = ["--drain-delay", f"{args.drain_delay:g}", "--drain-seconds", f"{args.drain_seconds:g}"]
    flags += shlex.split(args.gateway_args)
    log = workdir / f"gateway-{number}.log"
    with bench.gateway(stores, log, flags) as (server, urls):
        start = time.monotonic() + 0.3
        longest = args.lead + grace + EXIT_MARGIN + args.tail  # sending stops earlier as a rule
        jobs = [
            Job("http", urls["http"], start, longest, args.timeout, rate=args.http_rate,
                connections=args.connections, seed=number),
            Job("grpc", urls["grpc"], start, longest, args.timeout, rate=args.grpc_rate,
                seed=number),
        ]  # fmt: skip
        gens.start(jobs)
        results = asyncio.ensure_future(asyncio.to_thread(gens.results))
        try:
            await asyncio.sleep(max(0.0, start + args.lead - time.monotonic()))
            sigterm = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            grace_end = sigterm + grace
            code = await wait_exit(server, grace_end + EXIT_MARGIN)
            exited = time.monotonic() - sigterm if code is not None else None
            await asyncio.sleep(args.tail)  # new connections now meet a closed port
        finally:
            gens.stop()
            http, grpc_ = await results
    counted_until = min(grace_end, time.monotonic())
    return [
        tally(number, "http", http, sigterm, counted_until, (exited, code)),
        tally(number, "grpc", grpc_, sigterm, counted_until, (exited, code)),
    ]


HEADERS = (
    "round", "proto", "sent before SIGTERM", "sent after", "answered", "refused", "lost",
    "other", "lost at s", "gateway exit s", "exit code",
)  # fmt: skip
LEFT = 2


def cells(t: Tally) -> list[str]:
    exit_seconds = "-" if t.exit_seconds is None else f"{t.exit_seconds:.2f}"
    lost_at = "-" if t.lost_at is None else "{:.2f} to {:.2f}".format(*t.lost_at)
    return [
        str(t.round), t.protocol, f"{t.before_sigterm:,}", f"{t.after_sigterm:,}",
        f"{t.answered:,}", f"{t.refused:,}", f"{t.lost:,}", f"{t.other:,}", lost_at, exit_seconds,
        "-" if t.exit_code is None else str(t.exit_code),
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    defaults = ServerSettings()
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--lead", type=float, default=3.0, help="seconds of load before SIGTERM")
    cli.add_argument("--tail", type=float, default=1.0, help="seconds of load after the exit")
    cli.add_argument("--http-rate", type=float, default=1000.0, help="requests/s")
    cli.add_argument("--grpc-rate", type=float, default=500.0, help="calls/s")
    cli.add_argument("--connections", type=int, default=256, help="HTTP pool bound")
    cli.add_argument("--drain-delay", type=float, default=defaults.drain_delay)
    cli.add_argument("--drain-seconds", type=float, default=defaults.drain_seconds)
    cli.add_argument("--timeout", type=float, help="client deadline (default: grace + 5 s)")
    cli.add_argument("--gateway-args", default="", help="extra `modelgate serve` flags")
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    if args.timeout is None:
        args.timeout = args.drain_delay + args.drain_seconds + EXIT_MARGIN
    rates = (args.http_rate, args.grpc_rate, args.lead, args.timeout)
    if args.rounds < 1 or args.connections < 1 or min(rates) <= 0 or args.tail < 0:
        cli.error("--rounds and --connections must be at least 1; rates and times positive")
    if args.drain_delay < 0 or args.drain_seconds < 0:
        cli.error("--drain-delay and --drain-seconds must not be negative")
    return args


async def run(args: argparse.Namespace, stores: dict[str, Path], workdir: Path) -> list[Tally]:
    """Every round, one after another."""
    tallies: list[Tally] = []
    with Generators(2) as gens:
        for number in range(1, args.rounds + 1):
            tallies += await one_round(number, args, stores, workdir, gens)
            for t in tallies[-2:]:
                print("  " + report.table_row(HEADERS, cells(t), LEFT), flush=True)
    return tallies


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the counts; 1 if any request was lost."""
    args = parse_args(argv)
    started = time.monotonic()
    machine = report.machine()
    with tempfile.TemporaryDirectory(prefix="modelgate-drain-") as tmp:
        workdir = Path(tmp)
        _, stores = bench.prepare_models(workdir, ["light"])
        tallies = asyncio.run(run(args, stores, workdir))
    header = {
        **machine,
        "load": f"HTTP {args.http_rate:g}/s (pool of {args.connections}), gRPC "
        f"{args.grpc_rate:g}/s, Poisson; SIGTERM after {args.lead:g} s; deadline "
        f"{args.timeout:g} s",
        "gateway": f"light model, --drain-delay {args.drain_delay:g} --drain-seconds "
        f"{args.drain_seconds:g} {args.gateway_args}".rstrip(),
    }
    header = report.finish_header(header, started)
    said = [
        f"round {t.round} {t.protocol}: "
        + "; ".join(f"{text} x{count}" for text, count in t.details.items())
        for t in tallies
        if t.lost or t.other
    ]
    report.print_run(header, (HEADERS, [cells(t) for t in tallies], LEFT), said, args.markdown)
    lost = sum(t.lost + t.other for t in tallies)
    early = sum(t.lost_before_sigterm for t in tallies)
    if early:
        print(
            f"\nwarning: {early} of them failed before SIGTERM: the load was too much for the "
            "gateway on this machine at the time; lower --http-rate/--grpc-rate"
        )
    print(f"\n{'FAIL' if lost else 'ok'}: {lost} request(s) lost in {args.rounds} drain(s)")
    out = args.out or report.results_path("drain")
    report.write_json(
        out,
        {
            "header": header,
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "rounds": [dataclasses.asdict(t) for t in tallies],
        },
    )
    print(f"results: {out}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
