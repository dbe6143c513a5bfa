"""The instant a gRPC drain calls `stop`, sharpened: callers in lockstep, many rounds.

gRPC core cancels (CANCELLED) the calls it holds and has not handed to Python when a
grpc.aio server's `stop` begins (grpc/grpc#41785), and the calls that reach it after that
(see gateway/frontends/grpc_drain.py). `loadtest.drain` sends open-loop load, where such a
loss is rare; here every caller sends its next call the moment the previous one is answered
or refused, all together: `--channels` connections with `--callers` callers each send one
ModelInfer each, wait until every one has its answer, and send again at once, without
backing off. Calls reach core in bursts every few milliseconds all through the drain.

Each round starts a gateway (the light model, `--drain-delay 0`), lets the callers run for
`--lead` seconds plus a random fraction of a second, sends SIGTERM and keeps calling until
the gateway has exited. The calls sent after SIGTERM are counted by status: a drain that
loses nothing shows only OK and UNAVAILABLE.

    python -m loadtest.grpc_stop_race [--rounds 20] [--channels 4] [--callers 16]

Exit status 1 if any call ended with another status. About 3 s a round.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

from loadtest import bench
from loadtest.clients import GRPC_METHOD, grpc_requests
from loadtest.procs import ServerProcess

EXIT_WAIT = 30.0  # seconds a gateway gets to exit after SIGTERM


async def one_round(
    number: int, args: argparse.Namespace, stores: dict[str, Path], workdir: Path
) -> collections.Counter[str]:
    """Start a gateway, call in lockstep, SIGTERM it; the statuses after SIGTERM."""
    log = workdir / f"gateway-{number}.log"
    requests = grpc_requests(number)
    after: collections.Counter[str] = collections.Counter()
    with bench.gateway(stores, log, ["--drain-delay", "0"]) as (server, urls):
        channels = [grpc.aio.insecure_channel(urls["grpc"]) for _ in range(args.channels)]
        calls = [channel.unary_unary(GRPC_METHOD) for channel in channels]
        signalled = asyncio.Event()

        async def one(call: grpc.aio.UnaryUnaryMultiCallable, index: int) -> str:
            try:
                await call(requests[index % len(requests)], timeout=10)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return "UNAVAILABLE"
                return f"{exc.code().name}: {exc.details()}"

        async def lockstep() -> None:
            while True:
                counting = signalled.is_set()
                outcomes = await asyncio.gather(
                    *(one(call, i) for call in calls for i in range(args.callers))
                )
                if counting:
                    after.update(outcomes)
                if server.returncode is not None:
                    return

        load = asyncio.ensure_future(lockstep())
        await asyncio.sleep(args.lead + random.random())
        signalled.set()
        os.kill(server.pid, signal.SIGTERM)
        await wait_exit(server, time.monotonic() + EXIT_WAIT)
        await asyncio.wait_for(load, EXIT_WAIT)
        for channel in channels:
            await channel.close()
    return after


async def wait_exit(server: ServerProcess, until: float) -> None:
    while server.returncode is None and time.monotonic() < until:
        await asyncio.sleep(0.01)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--rounds", type=int, default=20)
    cli.add_argument("--channels", type=int, default=4, help="connections")
    cli.add_argument("--callers", type=int, default=16, help="callers per connection")
    cli.add_argument("--lead", type=float, default=0.5, help="seconds of load before SIGTERM")
    return cli.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total: collections.Counter[str] = collections.Counter()
    bad_rounds = 0
    with tempfile.TemporaryDirectory(prefix="modelgate-stop-race-") as tmp:
        workdir = Path(tmp)
        _, stores = bench.prepare_models(workdir, ["light"])
        for number in range(1, args.rounds + 1):
            after = asyncio.run(one_round(number, args, stores, workdir))
            bad = sum(n for status, n in after.items() if status not in ("OK", "UNAVAILABLE"))
            bad_rounds += bool(bad)
            total.update(after)
            print(f"round {number}: {dict(after.most_common())}", flush=True)
    lost = sum(n for status, n in total.items() if status not in ("OK", "UNAVAILABLE"))
    print(f"load average {os.getloadavg()[0]:.1f}; after SIGTERM in {args.rounds} rounds: "
          f"{dict(total.most_common())}")  # fmt: skip
    verdict = "FAIL" if lost else "ok"
    print(f"{verdict}: {lost} call(s) lost in {bad_rounds} of {args.rounds} rounds")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
