"""What one request costs a gateway: its answer, its time, how far the server's peak memory
rose, and how long another client's small requests waited meanwhile.

Cases, one after another, against one gateway started for the run (the light model, and an
identity model over BYTES `x` [N, 3]), with `--gateway-args` added to its command line:

- bomb-http: the 117-byte V2 binary request that declares BYTES [268435456] and sends 4 bytes;
- bomb-grpc: the same as gRPC raw contents;
- json-<MB>: a V2 JSON request of about that many MB of FP32 rows to the light model
  (`--json-mb`; beyond `max_json_bytes` it is refused, `--gateway-args "--max-json-bytes N"`
  lets it through to measure the decoding);
- strings-<N>: N BYTES elements of 8 bytes over gRPC raw contents (`--strings`).

For each: the server's VmHWM is reset (/proc/<pid>/clear_refs) before the request and read
after it; meanwhile a second client sends a light-model request every 5 ms and the longest
it waited is reported.

    python -m loadtest.request_cost [--json-mb 1 8 57] [--strings 131070 262143] [--markdown]

JSON goes to loadtest/results/request_cost-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import shlex
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
from onnx import TensorProto, helper

from loadtest import bench, report
from loadtest.models import FEATURES, build_light
from loadtest.procs import ServerProcess, running
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb

HEADERS = ["case", "request bytes", "answer", "seconds", "peak RSS +MB", "other client waited ms"]
BOMB = 268_435_456
_GRPC_OPTIONS = [("grpc.max_send_message_length", 1 << 30)]


@dataclass
class Cost:
    case: str
    request_bytes: int
    answer: str
    seconds: float
    rss_growth_mb: float
    other_waited_ms: float


def build_strings() -> bytes:
    """Identity over BYTES `x` [N, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["N", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "strings", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def measure(
    server: ServerProcess, http: str, case: str, size: int, send: Callable[[], str]
) -> Cost:
    """Send one request with `send` (its answer as text) while another client probes."""
    Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # peak := current
    before = _peak_kb(server.pid)
    waits: list[float] = []
    done = threading.Event()
    light = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                     "data": [0.5] * FEATURES}]}
    )  # fmt: skip

    def probe() -> None:
        with httpx.Client(base_url=f"http://{http}", timeout=120) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.post("/v2/models/light/infer", content=light)
                waits.append(time.perf_counter() - started)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    started = time.perf_counter()
    answer = send()
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    done.set()
    prober.join()
    growth = (_peak_kb(server.pid) - before) / 1024
    return Cost(case, size, answer, seconds, growth, max(waits, default=0.0) * 1000)


def _http_send(http: str, path: str, body: bytes, headers: dict[str, str]) -> Callable[[], str]:
    def send() -> str:
        with httpx.Client(base_url=f"http://{http}", timeout=300) as client:
            r = client.post(path, content=body, headers=headers)
        return f"{r.status_code} {r.text[:60]}" if r.status_code != 200 else "200"

    return send


def _grpc_send(address: str, request: pb.ModelInferRequest) -> Callable[[], str]:
    def send() -> str:
        with grpc.insecure_channel(address, options=_GRPC_OPTIONS) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            try:
                infer(request, timeout=300)
            except grpc.RpcError as exc:
                return f"{exc.code().name} {(exc.details() or '')[:60]}"
        return "OK"

    return send


def run_cases(args: argparse.Namespace, server: ServerProcess, urls: dict[str, str]) -> list[Cost]:
    http, address = urls["http"], urls["grpc"]
    costs = []
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [BOMB],
                     "parameters": {"binary_data_size": 4}}]}
    )  # fmt: skip
    bomb = head + b"\0\0\0\0"
    length = {"inference-header-content-length": str(len(head))}
    costs.append(
        measure(server, http, "bomb-http", len(bomb),
                _http_send(http, "/v2/models/strings/infer", bomb, length))
    )  # fmt: skip
    request = pb.ModelInferRequest(model_name="strings")
    request.inputs.add(name="x", datatype="BYTES", shape=[BOMB])
    request.raw_input_contents.append(b"\0\0\0\0")
    costs.append(
        measure(server, http, "bomb-grpc", request.ByteSize(), _grpc_send(address, request))
    )
    rng = np.random.default_rng(0)
    for mb in args.json_mb:
        rows = max(1, int(mb * 1e6 / (FEATURES * 20.5)))  # ~20.5 characters a float
        data = rng.normal(size=(rows, FEATURES)).astype(np.float32).ravel().tolist()
        tensor = {"name": "input", "datatype": "FP32", "shape": [rows, FEATURES], "data": data}
        body = orjson.dumps({"inputs": [tensor]})
        send = _http_send(http, "/v2/models/light/infer", body, {})
        costs.append(measure(server, http, f"json-{mb:g}", len(body), send))
    for count in args.strings:
        rows = max(1, count // 3)
        raw = b"".join(struct.pack("<I", 8) + b"abcdefgh" for _ in range(rows * 3))
        request = pb.ModelInferRequest(model_name="strings")
        request.inputs.add(name="x", datatype="BYTES", shape=[rows, 3])
        request.raw_input_contents.append(raw)
        send = _grpc_send(address, request)
        costs.append(measure(server, http, f"strings-{rows * 3}", len(raw), send))
    return costs


def prepare_store(workdir: Path) -> Path:
    """A store with `light` and `strings` in production, registered through the CLI."""
    store = workdir / "store"
    for name, build in (("light", build_light), ("strings", build_strings)):
        path = workdir / f"{name}.onnx"
        path.write_bytes(build())
        register = [sys.executable, "-m", "modelgate", "registry", "--store", str(store)]
        register += ["register", name, str(path), "--stage", "production"]
        subprocess.run(register, check=True, capture_output=True, timeout=120, cwd=bench.REPO)
    return store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--json-mb", type=float, nargs="*", default=[1.0, 8.0, 57.0])
    cli.add_argument("--strings", type=int, nargs="*", default=[131_070, 262_143])
    cli.add_argument("--gateway-args", default="", help="more flags for modelgate serve")
    cli.add_argument("--markdown", action="store_true", help="the table as Markdown too")
    cli.add_argument("--out", type=Path, help="JSON results (default: loadtest/results/)")
    return cli.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    header = {**report.machine(), "gateway args": args.gateway_args or "(none)"}
    with tempfile.TemporaryDirectory(prefix="request-cost-") as tmp:
        workdir = Path(tmp)
        store = prepare_store(workdir)
        argv_ = [sys.executable, "-m", "modelgate", "serve", "--store", str(store)]
        argv_ += ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
        argv_ += ["--metrics-port", "0", "--drain-delay", "0", *shlex.split(args.gateway_args)]
        with running(argv_, workdir / "gateway.log", cwd=bench.REPO) as server:
            found = server.wait_for_line(bench.GATEWAY_LINE, bench.READY_TIMEOUT)
            urls = {"http": found.group(1), "grpc": found.group(2)}
            for model in ("light", "strings"):
                ready = f"http://{urls['http']}/v2/models/{model}/ready"
                server.wait_http_ok(ready, bench.READY_TIMEOUT)
            costs = run_cases(args, server, urls)
    rows = [
        [c.case, f"{c.request_bytes:,}", c.answer[:40], f"{c.seconds:.2f}",
         f"{max(c.rss_growth_mb, 0):.0f}", f"{c.other_waited_ms:.0f}"]
        for c in costs
    ]  # fmt: skip
    header = report.finish_header(header, started)
    report.print_run(header, (HEADERS, rows, 3), [], args.markdown)
    out = args.out or report.results_path("request_cost")
    report.write_json(out, {"header": header, "cases": [asdict(c) for c in costs]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
