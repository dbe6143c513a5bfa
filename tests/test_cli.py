"""The `modelgate` command in real subprocesses: registry, serve with drain, demo."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.listen import BindError
from modelgate.registry.store import RegistryStore

MODELGATE = [sys.executable, "-m", "modelgate"]
LISTENING = re.compile(r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def modelgate(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODELGATE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**_env(), **(env or {})},
    )  # fmt: skip


@pytest.fixture
def onnx_file(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(model_files["classifier"])
    return path


def test_registry_register_and_list(tmp_path: Path, onnx_file: Path) -> None:
    store = str(tmp_path / "store")
    first = modelgate("registry", "--store", store, "register", "clf", str(onnx_file))
    assert first.returncode == 0, first.stderr
    second = modelgate(
        "registry", "--store", store, "register", "clf", str(onnx_file), "--stage", "production"
    )
    assert re.match(r"clf\s+2\s+production\s+[0-9a-f]{64}", second.stdout)
    listing = modelgate("registry", "--store", store, "list", "clf")
    lines = listing.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["MODEL", "VERSION", "STAGE", "SHA256"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["clf", "1", "none"],
        ["clf", "2", "production"],
    ]


def test_registry_errors_are_clear(tmp_path: Path, onnx_file: Path) -> None:
    store = str(tmp_path / "store")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nonsense")
    result = modelgate("registry", "--store", store, "register", "m", str(bad))
    assert result.returncode == 2
    assert "not an ONNX model" in result.stderr
    result = modelgate(
        "registry", "--store", store, "register", "m", str(onnx_file), "--stage", "live"
    )
    assert result.returncode == 2
    assert "unknown stage" in result.stderr
    assert modelgate("registry", "--store", store, "list", "ghost").returncode == 2


class Process:
    """A modelgate subprocess whose stderr is read for its listening line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*MODELGATE, *args], cwd=cwd, env=_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.output: list[str] = []

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = pattern.search(line)
            if match:
                return match
        raise AssertionError("pattern not seen; output:\n" + "".join(self.output))

    def rest(self) -> str:
        assert self.proc.stdout is not None
        return "".join(self.output) + self.proc.stdout.read()

    def close(self) -> None:
        """Kill the process if it still runs, and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def served(
    request: pytest.FixtureRequest, tmp_path: Path, onnx_file: Path
) -> Iterator[tuple[Process, str, str]]:
    """A `modelgate serve` subprocess with `clf` in production: process, HTTP and gRPC
    (with `--workers` of an indirect parameter, 1 by default)."""
    store = tmp_path / "store"
    assert modelgate("registry", "--store", str(store), "register", "clf", str(onnx_file),
                     "--stage", "production").returncode == 0  # fmt: skip
    process = Process(
        ["serve", "--store", str(store), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--workers", getattr(request, "param", "1")], tmp_path,
    )  # fmt: skip
    try:
        listening = process.wait_for(LISTENING)
        yield process, listening.group(1), listening.group(2)
    finally:
        process.close()


async def _wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        if (await client.get("/v2/health/ready")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never ready")


@pytest.mark.parametrize("served", ["1", "2"], indirect=True)
async def test_serve_finishes_in_flight_requests_on_sigterm(
    served: tuple[Process, str, str],
) -> None:
    process, address, _ = served
    x = np.random.default_rng().normal(size=(1, 8)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x.tolist()}]}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=f"http://{address}", limits=limits) as client:
        await _wait_ready(client)
        assert (await client.post("/v2/models/clf/infer", json=body)).status_code == 200

        async def one() -> int:
            return (await client.post("/v2/models/clf/infer", json=body)).status_code

        in_flight = [asyncio.create_task(one()) for _ in range(64)]
        await asyncio.sleep(0.01)
        process.proc.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*in_flight, return_exceptions=True)
    # Requests already accepted finish; ones that came after the listener closed could not
    # connect at all or, on a connection still open, were refused with a 503 (never a
    # failed or half-answered request).
    answered = [s for s in statuses if isinstance(s, int)]
    assert 200 in answered and set(answered) <= {200, 503}, statuses
    refused = [s for s in statuses if not isinstance(s, int)]
    assert all(isinstance(s, httpx.ConnectError) for s in refused), refused
    assert process.proc.wait(30) == 0
    assert "modelgate stopped" in process.rest()


@pytest.mark.parametrize("served", ["1", "2"], indirect=True)
async def test_serve_drains_steady_load_without_losing_a_request(
    served: tuple[Process, str, str],
) -> None:
    """SIGTERM under steady keep-alive HTTP and gRPC load: every request is answered, or
    refused cleanly (503, UNAVAILABLE, or a connection refused before anything was sent)."""
    process, http_address, grpc_address = served
    x = np.random.default_rng().normal(size=(1, 8)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": x.tolist()}]}
    request = pb.ModelInferRequest(model_name="clf", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 8],
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
    )])  # fmt: skip
    outcomes: list[str] = []
    exited = asyncio.Event()

    async def http_load(client: httpx.AsyncClient) -> None:
        while not exited.is_set():
            try:
                reply = await client.post("/v2/models/clf/infer", json=body)
                outcomes.append(f"http {reply.status_code}")
            except httpx.ConnectError:
                outcomes.append("http refused")
                await asyncio.sleep(0.02)
            except httpx.HTTPError as exc:
                outcomes.append(f"http lost: {exc!r}")

    async def grpc_load(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while not exited.is_set():
            try:
                await stub.ModelInfer(request, timeout=30)
                outcomes.append("grpc OK")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(f"grpc {exc.code().name}")
                await asyncio.sleep(0.02)

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with (
        httpx.AsyncClient(base_url=f"http://{http_address}", limits=limits) as client,
        grpc.aio.insecure_channel(grpc_address) as channel,
    ):
        await _wait_ready(client)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        load = [asyncio.create_task(http_load(client)) for _ in range(16)]
        load += [asyncio.create_task(grpc_load(stub)) for _ in range(8)]
        await asyncio.sleep(1.0)
        process.proc.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(process.proc.wait, 60)
        await asyncio.sleep(0.5)  # requests sent after the exit meet a closed port
        exited.set()
        await asyncio.gather(*load)
    # These callers all retry in step, 20 ms after each refusal: the gRPC drain answers its
    # last refusals only after `stop` has sent GOAWAY, so none reaches a stopping core.
    clean = {"http 200", "http 503", "http refused", "grpc OK", "grpc UNAVAILABLE"}
    lost = [outcome for outcome in outcomes if outcome not in clean]
    assert not lost, collections.Counter(outcomes)
    assert {"http 200", "http refused", "grpc OK", "grpc UNAVAILABLE"} <= set(outcomes)
    assert status == 0


async def test_serve_drain_answers_every_grpc_call_it_received(
    served: tuple[Process, str, str],
) -> None:
    """SIGTERM under gRPC load from many callers: every call sent before it succeeds, and
    every later one succeeds or is refused with UNAVAILABLE; none is CANCELLED (grpc.aio's
    `stop` alone cancels the calls core had received but not yet handed to Python)."""
    process, http_address, grpc_address = served
    async with httpx.AsyncClient(base_url=f"http://{http_address}") as client:
        await _wait_ready(client)
    x = np.random.default_rng().normal(size=(1, 8)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="clf", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 8],
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
    )])  # fmt: skip
    backoff = random.Random()
    before: list[str] = []  # outcomes of the calls sent before SIGTERM
    after: list[str] = []
    signalled = exited = False

    async def caller(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while not exited:
            outcomes = after if signalled else before
            try:
                await stub.ModelInfer(request, timeout=30)
                outcomes.append("OK")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code().name)
                await asyncio.sleep(backoff.uniform(0.05, 0.15))  # a refused client backs off

    channels = [grpc.aio.insecure_channel(grpc_address) for _ in range(4)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
    load = [asyncio.create_task(caller(stub)) for stub in stubs for _ in range(8)]
    await asyncio.sleep(1.0)
    signalled = True
    process.proc.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(process.proc.wait, 60)
    await asyncio.sleep(0.3)  # calls sent after the exit meet a closed port: UNAVAILABLE
    exited = True
    await asyncio.gather(*load)
    for channel in channels:
        await channel.close()
    assert set(before) == {"OK"}, collections.Counter(before)
    assert set(after) == {"OK", "UNAVAILABLE"}, collections.Counter(after)
    assert status == 0


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed")
def test_demo_prints_commands_that_work_as_printed(tmp_path: Path) -> None:
    process = Process(
        ["demo", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"], tmp_path
    )
    try:
        process.wait_for(re.compile(r"^curl -s -X POST"))
        curl = process.output[-1].strip()
        process.wait_for(re.compile(r"^python - <<'EOF'"))
        snippet = [process.output[-1]]
        while not snippet[-1].startswith("EOF"):
            snippet.append(process.wait_for(re.compile(".*")).string)
        reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert '"model_name":"iris"' in reply.stdout, reply
        assert '"data":[0,2]' in reply.stdout
        grpc_reply = subprocess.run(
            ["bash", "-c", "".join(snippet)], capture_output=True, text=True, timeout=60,
            env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert "version 1 labels [0 2]" in grpc_reply.stdout, grpc_reply.stderr
        drift = process.wait_for(re.compile(r"^curl -s http://\S+/drift")).string.strip()
        report = subprocess.run(["bash", "-c", drift], capture_output=True, text=True, timeout=30)
        assert '"source":"registered"' in report.stdout, report
        assert (tmp_path / "modelstore" / "registry.db").exists()
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(30) == 0
    finally:
        process.close()


def test_serve_refuses_a_config_file_with_unknown_settings(tmp_path: Path) -> None:
    config = tmp_path / "modelgate.toml"
    config.write_text("max_batch = 4\n")
    result = modelgate("serve", "--config", str(config), "--store", str(tmp_path / "s"))
    assert result.returncode == 2
    assert result.stderr == f"modelgate: config file {config}: unknown setting(s): max_batch\n"


def test_a_wrongly_typed_setting_is_one_line_naming_its_source(tmp_path: Path) -> None:
    config = tmp_path / "modelgate.toml"
    config.write_text('http_port = "x"\n')
    result = modelgate("serve", "--config", str(config), "--store", str(tmp_path / "s"))
    assert (result.returncode, result.stderr) == (
        2,
        f"modelgate: setting http_port from the config file {config}: expected an integer, "
        'got "x"\n',
    )
    result = modelgate(
        "serve", "--store", str(tmp_path / "s"), env={"MODELGATE_MAX_BATCH_SIZE": "abc"}
    )
    assert (result.returncode, result.stderr) == (
        2,
        "modelgate: setting max_batch_size from the variable MODELGATE_MAX_BATCH_SIZE: "
        "expected an integer, got 'abc'\n",
    )
    result = modelgate("serve", "--store", str(tmp_path / "s"), "--warmup-runs", "-1")
    assert (result.returncode, result.stderr) == (
        2,
        "modelgate: setting warmup_runs from the flag --warmup-runs: must be at least 0, got -1\n",
    )


@pytest.fixture(params=["plain", "shared"])
def taken_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port another socket listens on (shared: with SO_REUSEPORT, as workers do)."""
    with socket.socket() as sock:
        if request.param == "shared":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("setting", "grpc_workers", "workers"),
    [
        ("http_port", "shared", "1"),
        ("grpc_port", "shared", "1"),
        ("grpc_port", "thread", "1"),
        ("metrics_port", "shared", "1"),
        ("http_port", "shared", "2"),
        ("grpc_port", "shared", "2"),
        ("metrics_port", "shared", "2"),
    ],
)
def test_a_port_in_use_is_one_clear_line(
    tmp_path: Path, taken_port: int, setting: str, grpc_workers: str, workers: str
) -> None:
    flag = "--" + setting.replace("_", "-")
    result = modelgate(
        "serve", "--store", str(tmp_path / "s"), "--create-store", "on",
        "--grpc-workers", grpc_workers, "--workers", workers,
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", flag, str(taken_port),
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        2,
        f"modelgate: cannot bind {setting} 127.0.0.1:{taken_port}: address already in use; "
        f"stop the other process or choose another port with {flag} (0 picks a free one)\n",
    )


def test_the_registry_server_names_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = modelgate(
        "registry", "--store", str(tmp_path / "s"), "serve", "--port", str(taken_port),
        "--create-store",
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.endswith(
        f"cannot bind port 127.0.0.1:{taken_port}: address already in use; "
        "stop the other process or choose another port with --port (0 picks a free one)"
    )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.parametrize("taken", ["grpc_port", "metrics_port"])
async def test_a_port_in_use_leaves_nothing_bound(
    settings: ServerSettings, store: RegistryStore, taken_port: int, taken: str
) -> None:
    http_port, grpc_port, metrics_port = _free_ports(3)
    ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    ports[taken] = taken_port
    gateway = Gateway(dataclasses.replace(settings, **ports), store)
    with pytest.raises(BindError, match=f"^cannot bind {taken} 127.0.0.1:{taken_port}: "):
        await gateway.start()
    for name, port in ports.items():
        if name != taken:  # bound before the failure, released after it
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("command", [["list"], ["history"], ["show", "clf", "1"]])
def test_registry_output_into_a_closed_pipe_ends_quietly(
    tmp_path: Path, onnx_file: Path, command: list[str]
) -> None:
    store = str(tmp_path / "store")
    assert (
        modelgate("registry", "--store", store, "register", "clf", str(onnx_file)).returncode == 0
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) has gone before the first line
    try:
        result = subprocess.run(
            [*MODELGATE, "registry", "--store", store, *command], stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=120, env=_env(),
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")
