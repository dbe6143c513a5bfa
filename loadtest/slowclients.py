"""Connection exhaustion and slow clients: what a gateway does with connections that send
nothing, trickle their headers or their body, or send huge headers, and whether a normal
request still gets through meanwhile.

Scenarios, one after another, each held for `--hold` seconds, against one gateway started
for the run (the light model) or a running one given by `--http`, `--grpc` and `--pid`:

- idle-http: `--connections` TCP connections to the HTTP port that send nothing;
- idle-grpc: the same against the gRPC port;
- idle-metrics: the same against the metrics port;
- slowloris: `--connections` HTTP connections that send a request line, then one more header
  line every `--trickle` seconds and never end the header block;
- slow-body: `--connections` HTTP connections that send a complete head announcing a 1 MiB
  body, then one body byte every `--trickle` seconds;
- huge-headers: `--huge-connections` HTTP connections that each send a whole V2 infer request
  whose header block is `--header-bytes` long (8 KiB lines).

Meanwhile, every 0.5 s, a normal HTTP request and a normal gRPC call, each on a new
connection, as a newly arriving client would (timeout 5 s). Reported per scenario: the
connections opened; how many the server closed within the hold and when (median and last,
seconds after opening); what it answered on them; the probes answered of those sent and the
slowest; the server's open file descriptors (/proc/<pid>/fd) and RSS before, at the peak and
2 s (at most the hold) after this tool closed its connections.

This process raises its own open-file soft limit to the hard limit (after starting the
gateway, which keeps the limit it was started with, shown in the header).

    python -m loadtest.slowclients [--connections 1000] [--hold 30] [--scenarios ...]
    python -m loadtest.slowclients --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 \
        --metrics 127.0.0.1:8002 --pid 1234

A full run (six scenarios of 30 s) takes about 4 minutes. JSON goes to
loadtest/results/slowclients-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest import bench, report
from loadtest.clients import Outcome, http_requests, probe_for
from loadtest.procs import PeakWatch, open_fds, rss_bytes

SCENARIOS = ("idle-http", "idle-grpc", "idle-metrics", "slowloris", "slow-body", "huge-headers")
PROBE_GAP = 0.5
PROBE_TIMEOUT = 5.0
SETTLE = 2.0  # seconds after closing our connections before the "after" figures
BODY_BYTES = 2**20  # announced by slow-body


@dataclass
class Result:
    """One scenario's figures (see the module docstring)."""

    scenario: str
    connections: int
    opened: int
    closed_by_server: int
    closed_median_s: float | None
    closed_last_s: float | None
    replies: dict[str, int]
    http_probes: tuple[int, int]  # answered OK, sent
    grpc_probes: tuple[int, int]
    slowest_probe_ms: float
    fds: tuple[int, int, int]  # before, peak, after
    rss_mb: tuple[float, float, float]
    open_errors: dict[str, int] = field(default_factory=dict)


class Held(asyncio.Protocol):
    """One connection this tool holds open; records what the server does with it."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.opened = time.monotonic()
        self.closed: float | None = None
        self.reply = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if len(self.reply) < 64:
            self.reply += data[:64]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = time.monotonic()

    def write(self, data: bytes) -> None:
        if self.closed is None and self.transport is not None:
            self.transport.write(data)

    def reply_summary(self) -> str | None:
        """What the server sent first: an HTTP status ("HTTP 431"), "HTTP/2 SETTINGS" (a gRPC
        server's greeting) or "other bytes"; None for nothing."""
        reply = self.reply
        if not reply:
            return None
        if reply.startswith(b"HTTP/"):
            return "HTTP " + reply.split(b" ", 2)[1].decode("ascii", "replace")
        return "HTTP/2 SETTINGS" if reply[3:4] == b"\x04" else "other bytes"


@dataclass(frozen=True, slots=True)
class Pattern:
    """What each connection of a scenario sends: once at the start, then per trickle tick."""

    port: str  # "http" | "grpc" | "metrics"
    first: Callable[[int], bytes]
    trickle: Callable[[int, int], bytes] | None = None  # (connection, tick) -> bytes


def _head(address: str, extra: str = "", length: int | None = None) -> str:
    head = f"POST /v2/models/light/infer HTTP/1.1\r\nHost: {address}\r\n"
    if length is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    return head + extra


def patterns(address: str, header_bytes: int) -> dict[str, Pattern]:
    """Each scenario's bytes, for the HTTP `address`."""
    request = http_requests(address)[0]
    _, body = request.split(b"\r\n\r\n", 1)
    line = "X-Pad-{}: " + "a" * 8180 + "\r\n"  # 8 KiB a line
    pad = "".join(line.format(i) for i in range(max(1, header_bytes // 8192)))
    huge = (_head(address, pad, len(body)) + "\r\n").encode("latin-1") + body
    return {
        "idle-http": Pattern("http", lambda _: b""),
        "idle-grpc": Pattern("grpc", lambda _: b""),
        "idle-metrics": Pattern("metrics", lambda _: b""),
        "slowloris": Pattern(
            "http",
            lambda _: _head(address).encode("latin-1"),
            lambda conn, tick: f"X-Slow-{tick}: {conn}\r\n".encode("latin-1"),
        ),
        "slow-body": Pattern(
            "http",
            lambda _: (_head(address, length=BODY_BYTES) + "\r\n{").encode("latin-1"),
            lambda _, tick: b" ",
        ),
        "huge-headers": Pattern("http", lambda _: huge),
    }


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft open-file limit to the hard one if `wanted` needs it; the
    soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted and soft != resource.RLIM_INFINITY:
        soft = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def open_files_limit(pid: int) -> str:
    """A process's open-file limit as /proc/<pid>/limits states it (soft / hard)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft} / {hard}"
    return "unknown"


async def probes(protocol: str, address: str, until: float) -> tuple[int, int, float]:
    """New-connection probes every PROBE_GAP until `until`: answered OK, sent, slowest (s)."""
    probe = probe_for(protocol, address, fresh=True)
    ok = sent = 0
    slowest = 0.0
    try:
        while time.monotonic() < until:
            start = time.monotonic()
            outcome, seconds = await probe(PROBE_TIMEOUT)
            sent += 1
            ok += outcome is Outcome.OK
            slowest = max(slowest, seconds)
            await asyncio.sleep(max(0.0, start + PROBE_GAP - time.monotonic()))
    finally:
        await probe.close()
    return ok, sent, slowest


async def open_all(address: str, count: int, errors: Counter[str], batch: int = 100) -> list[Held]:
    """`count` connections to `address`, `batch` at a time; failures counted in `errors`."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()

    async def one() -> Held | None:
        try:
            async with asyncio.timeout(5.0):
                _, held = await loop.create_connection(Held, host, int(port))
        except (OSError, TimeoutError) as exc:
            errors[getattr(exc, "strerror", None) or type(exc).__name__] += 1
            return None
        return held

    held: list[Held] = []
    for start in range(0, count, batch):
        done = await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
        held += [h for h in done if h is not None]
    return held


async def scenario(
    name: str,
    pattern: Pattern,
    count: int,
    urls: dict[str, str],
    pid: int,
    args: argparse.Namespace,
) -> Result:
    """Open, send, hold (probing and watching), close; the figures."""
    fds_before, rss_before = open_fds(pid), rss_bytes(pid)
    watch = PeakWatch(pid, interval=0.2)
    errors: Counter[str] = Counter()
    held = await open_all(urls[pattern.port], count, errors)
    for index, connection in enumerate(held):
        connection.write(pattern.first(index))
    until = time.monotonic() + args.hold
    checks = [asyncio.ensure_future(probes(p, urls[p], until)) for p in ("http", "grpc")]
    tick = 0
    while time.monotonic() < until:
        await asyncio.sleep(min(args.trickle, max(0.0, until - time.monotonic())))
        tick += 1
        if pattern.trickle is not None:
            for index, connection in enumerate(held):
                connection.write(pattern.trickle(index, tick))
    (http_ok, http_sent, http_slow), (grpc_ok, grpc_sent, grpc_slow) = await asyncio.gather(*checks)
    closed = sorted(c.closed - c.opened for c in held if c.closed is not None)
    replies = Counter(s for c in held if (s := c.reply_summary()) is not None)
    for connection in held:
        if connection.transport is not None:
            connection.transport.close()
    await asyncio.sleep(min(SETTLE, args.hold))
    rss_peak, fds_peak = await watch.stop()
    mb = 1 / 2**20
    return Result(
        name,
        count,
        len(held),
        len(closed),
        statistics.median(closed) if closed else None,
        closed[-1] if closed else None,
        dict(replies),
        (http_ok, http_sent),
        (grpc_ok, grpc_sent),
        1000 * max(http_slow, grpc_slow),
        (fds_before, fds_peak, open_fds(pid)),
        (rss_before * mb, rss_peak * mb, rss_bytes(pid) * mb),
        dict(errors),
    )


@contextlib.contextmanager
def target(
    args: argparse.Namespace, workdir: Path, stores: dict[str, Path] | None
) -> Iterator[tuple[dict[str, str], int]]:
    """The gateway to test: the running one named on the command line, or a fresh one."""
    if stores is None:
        yield {"http": args.http, "grpc": args.grpc, "metrics": args.metrics}, args.pid
        return
    with bench.gateway(stores, workdir / "gateway.log") as (server, urls):
        yield urls, server.pid


HEADERS = (
    "scenario", "conns", "opened", "closed by server", "closed at s (median / last)",
    "server replies", "HTTP probes ok", "gRPC probes ok", "slowest probe ms",
    "server fds before / peak / after", "server RSS MB before / peak / after",
)  # fmt: skip
LEFT = 1


def cells(r: Result) -> list[str]:
    closed_at = (
        "-" if r.closed_median_s is None else f"{r.closed_median_s:.1f} / {r.closed_last_s:.1f}"
    )
    replies = ", ".join(f"{k} x{v}" for k, v in sorted(r.replies.items())) or "none"
    return [
        r.scenario, str(r.connections), str(r.opened), str(r.closed_by_server), closed_at,
        replies, "{} / {}".format(*r.http_probes), "{} / {}".format(*r.grpc_probes),
        f"{r.slowest_probe_ms:,.1f}", "{} / {} / {}".format(*r.fds),
        "{:.0f} / {:.0f} / {:.0f}".format(*r.rss_mb),
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list")
    cli.add_argument("--connections", type=int, default=1000)
    cli.add_argument("--huge-connections", type=int, default=100)
    cli.add_argument("--header-bytes", type=int, default=2**20)
    cli.add_argument("--hold", type=float, default=30.0, help="seconds per scenario")
    cli.add_argument("--trickle", type=float, default=1.0, help="seconds between slow writes")
    cli.add_argument("--http", help="host:port of a running gateway's HTTP port")
    cli.add_argument("--grpc", help="host:port of its gRPC port")
    cli.add_argument("--metrics", help="host:port of its metrics port")
    cli.add_argument("--pid", type=int, help="its process id (for fds and RSS)")
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    cli.add_argument("--out", type=Path, help="JSON results file")
    args = cli.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or not args.scenarios:
        cli.error(f"--scenarios takes some of {', '.join(SCENARIOS)}")
    given = [args.http, args.grpc, args.metrics, args.pid]
    if any(given) and not all(given):
        cli.error("--http, --grpc, --metrics and --pid go together (a running gateway)")
    if min(args.connections, args.huge_connections, args.header_bytes) < 1:
        cli.error("--connections, --huge-connections and --header-bytes must be at least 1")
    if args.hold <= 0 or args.trickle <= 0:
        cli.error("--hold and --trickle must be positive")
    return args


async def run(
    args: argparse.Namespace, workdir: Path, stores: dict[str, Path] | None
) -> tuple[list[Result], str]:
    """Every scenario, one after another, against one gateway."""
    results: list[Result] = []
    with target(args, workdir, stores) as (urls, pid):
        server_limit = open_files_limit(pid)  # before this process raises its own
        for name in args.scenarios:
            count = args.huge_connections if name == "huge-headers" else args.connections
            raise_open_files(count + 256)
            pattern = patterns(urls["http"], args.header_bytes)[name]
            result = await scenario(name, pattern, count, urls, pid, args)
            results.append(result)
            print("  " + report.table_row(HEADERS, cells(result), LEFT), flush=True)
    return results, server_limit


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios one after another; print and save the results."""
    args = parse_args(argv)
    started = time.monotonic()
    machine = report.machine()
    with tempfile.TemporaryDirectory(prefix="modelgate-slowclients-") as tmp:
        workdir = Path(tmp)
        stores = None if args.http else bench.prepare_models(workdir, ["light"])[1]
        results, server_limit = asyncio.run(run(args, workdir, stores))
    header = {
        **machine,
        "gateway": f"{args.http} (pid {args.pid})" if args.http else "one, light model",
        "gateway open-file limit (soft / hard)": server_limit,
        "held": f"{args.hold:g} s per scenario, slow writes every {args.trickle:g} s, "
        f"probes on new connections every {PROBE_GAP:g} s",
    }
    header = report.finish_header(header, started)
    unopened = [f"{r.scenario}: not opened: {r.open_errors}" for r in results if r.open_errors]
    report.print_run(header, (HEADERS, [cells(r) for r in results], LEFT), unopened, args.markdown)
    out = args.out or report.results_path("slowclients")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    report.write_json(
        out,
        {
            "header": header,
            "settings": settings,
            "scenarios": [dataclasses.asdict(r) for r in results],
        },
    )
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
