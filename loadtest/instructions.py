"""Instructions per gRPC request, counted by callgrind: the gateway against the bare server.

Timings on a small shared machine move by more than the few percent a change to the
request path is worth. Instruction counts do not: callgrind counts what the CPU executes,
whatever else the machine is doing. Each server's ModelInfer handler runs in-process on
uvloop, one request at a time (the load a grpc.aio server gives it: one call per loop
iteration), with a yield to the loop after each, as a served call would. The driver does
what grpcio does around a handler: the bare server's request is parsed and its answer
serialized inside the counted span, the gateway's handler takes and answers bytes.

Two runs per server, of N and of 4 N requests, counted only on the loop's thread and only
while requests are served (callgrind_control toggles it): the difference over 3 N is the
cost of one request, without start-up and warm-up. The gateway serves the light model
registered with a reference profile, like the benchmark's, with drift monitoring off by
default: with it on (`--servers gateway`), the monitor task's sketching is counted too, and
under callgrind each of its drains (every 50 ms of wall time) finds several times fewer rows
than live, so its fixed costs weigh several times more per request. A warm loop is not a
loaded server: caches and the other core's work make every instruction dearer under load,
the same for every server.

    python -m loadtest.instructions                # needs valgrind (Debian's package)
    python -m loadtest.instructions --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from loadtest.bare_grpc import AioServicer, BareInference
from loadtest.bare_model import load, parser
from loadtest.bench import REPO, prepare_models
from modelgate.gateway.frontends.grpc import InferenceServicer
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import (
    BatchSettings,
    ModelServingSettings,
    MonitorSettings,
    ServerSettings,
)

SERVERS = ("gateway/monitoring-off", "gateway", "bare_grpc")
DEFAULT_SERVERS = ("gateway/monitoring-off", "bare_grpc")
WARMUP = 3000
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)

# A ModelInfer handler as grpcio drives it: the request's bytes in, the answer's bytes out.
Handler = Callable[[bytes, Any], Awaitable[bytes]]


class _Context:
    """What the handlers ask of a grpc.aio servicer context: no deadline, no metadata."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def request_bytes() -> bytes:
    """One row of the light model, as perf_analyzer sends it (outputs asked for by name)."""
    row = np.random.default_rng(0).standard_normal((1, 32), dtype=np.float32)
    msg = pb.ModelInferRequest(model_name="light", raw_input_contents=[row.tobytes()])
    msg.inputs.add(name="input", datatype="FP32", shape=row.shape)
    msg.outputs.add(name="label")
    msg.outputs.add(name="probabilities")
    return msg.SerializeToString()


async def _gateway_handler(store: Path, monitoring: bool) -> tuple[Handler, Gateway]:
    models = ModelServingSettings(
        # Under callgrind a run takes ~50x longer: batches must stay inline as they are live.
        batch=BatchSettings(inline_max_us=10**9),
        monitor=MonitorSettings(monitoring=monitoring),
    )
    settings = ServerSettings(
        store=store,
        host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        poll_interval=3600.0,  # no registry reads while counting
        drain_delay=0.0,
        models=models,
    )
    gateway = Gateway(settings)
    await gateway.start()
    await gateway.wait_loaded()
    handler = InferenceServicer(gateway.service, settings).ModelInfer

    async def call(data: bytes, context: Any) -> bytes:
        return await handler(data, context)

    return call, gateway


def _bare_handler() -> Handler:
    model = load(parser("bare", "uvloop").parse_args(["--model", "light"]))
    handler = AioServicer(BareInference(model), None).ModelInfer

    async def call(data: bytes, context: Any) -> bytes:
        answer = await handler(pb.ModelInferRequest.FromString(data), context)
        return answer.SerializeToString()

    return call


async def _serve(server: str, store: Path, requests: int) -> None:
    """The child: warm up, then serve `requests` with callgrind counting."""
    gateway: Gateway | None = None
    call: Handler
    if server.startswith("gateway"):
        call, gateway = await _gateway_handler(store, monitoring=server == "gateway")
    else:
        call = _bare_handler()
    data, context = request_bytes(), _Context()

    async def serve(count: int) -> None:
        for _ in range(count):
            await call(data, context)
            await asyncio.sleep(0)

    await serve(WARMUP)
    _toggle("on")
    await serve(requests)
    _toggle("off")
    if gateway is not None:
        await gateway.stop()


def _toggle(state: str) -> None:
    subprocess.run(
        ["callgrind_control", "--instr=" + state, str(os.getpid())],
        check=True,
        capture_output=True,
        timeout=60,
    )


def count(server: str, store: Path, requests: int, workdir: Path) -> int:
    """Loop-thread instructions while serving `requests` requests under callgrind."""
    out = workdir / f"{server.replace('/', '-')}-{requests}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "loadtest.instructions",
        "--child",
        server,
        "--store",
        str(store),
        "--requests",
        str(requests),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(argv, check=True, capture_output=True, timeout=1800, cwd=REPO, env=env)
    main_thread = Path(f"{out}-01").read_text()  # the first thread: uvloop's
    totals = _TOTALS.search(main_thread)
    if totals is None:
        raise RuntimeError(f"no totals in {out}-01")
    return int(totals.group(1))


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--requests", type=int, default=1000, help="N: runs of N and 4 N")
    cli.add_argument(
        "--servers", default=",".join(DEFAULT_SERVERS), help=f"of {', '.join(SERVERS)}"
    )
    cli.add_argument("--child", help=argparse.SUPPRESS)
    cli.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.child:
        uvloop.run(_serve(args.child, args.store, args.requests))
        return 0
    servers = [s for s in args.servers.split(",") if s]
    if not set(servers) <= set(SERVERS) or args.requests < 1:
        cli.error(f"--servers takes {', '.join(SERVERS)}; --requests must be positive")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="modelgate-instructions-") as tmp:
        workdir = Path(tmp)
        store = prepare_models(workdir, ["light"])[1]["light"]
        print(
            f"instructions per request on the loop thread ({args.requests} and "
            f"{4 * args.requests} requests under callgrind):"
        )
        for server in servers:
            short = count(server, store, args.requests, workdir)
            long = count(server, store, 4 * args.requests, workdir)
            print(f"  {server:24s} {(long - short) / (3 * args.requests):10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
