"""The Locust load test (loadtest/locustfile.py) against a real gateway on 127.0.0.1: the
requests it builds from each model's metadata, and Locust itself run headless for a few
seconds per user class, as a subprocess."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

import modelzoo
from loadtest.procs import ServerProcess
from loadtest.rollout import LISTENING
from loadtest.workload import Workload, WorkloadError, inputs_from_metadata
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

ROOT = Path(__file__).resolve().parent.parent
STREAMING = hasattr(pb_grpc.GRPCInferenceServiceServicer, "ModelStreamInfer")
# The `loadtest` extra; nox's oldest session cannot install it (see noxfile.py).
needs_locust = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is in the loadtest extra"
)


def _workload(http: httpx.Client, model: str, **options: float) -> Workload:
    answer = http.get(f"/v2/models/{model}")
    assert answer.status_code == 200, answer.text
    return Workload(model, "", inputs_from_metadata(answer.json()), seed=3, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("rows", [1, 5])
def test_requests_from_metadata_are_served_in_every_format(
    module_gateway: Gateway,
    module_http: httpx.Client,
    module_channel: grpc.Channel,
    model_files: dict[str, bytes],
    rows: int,
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(module_channel)
    for model in model_files:
        if model in ("lookup", "fixed"):
            continue  # indices the model refuses; a fixed batch of 1 (below)
        workload = _workload(module_http, model, rows=rows, shifted=0.5)
        fp16 = any(spec.datatype == "FP16" for spec in workload.inputs)
        bodies = [("/infer", workload.v2_binary())]
        if fp16:
            with pytest.raises(WorkloadError, match="FP16"):
                workload.v2_json()
        else:
            bodies += [("/infer", workload.v2_json()), (":predict", workload.v1_instances())]
        for suffix, body in bodies:
            path = workload.path("infer") if suffix == "/infer" else f"/v1/models/{model}:predict"
            answer = module_http.post(path, content=body.body, headers=dict(body.headers))
            assert answer.status_code == 200, (model, suffix, answer.text)
        reply = stub.ModelInfer(workload.grpc(), timeout=30)
        assert len(reply.raw_output_contents) == len(reply.outputs) > 0, model


def test_a_fixed_batch_dimension_is_kept(module_http: httpx.Client) -> None:
    workload = _workload(module_http, "fixed", rows=8)
    assert workload.inputs[0].batch_shape(8) == (1, 4)
    answer = module_http.post(
        workload.path("infer"), content=workload.v2_json().body, headers={"content-type": "a/j"}
    )
    assert answer.status_code == 200, answer.text


def test_shifted_rows_move_the_values() -> None:
    inputs = inputs_from_metadata({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})
    plain = Workload("m", "", inputs, rows=64, seed=1)
    moved = Workload("m", "", inputs, rows=64, seed=1, shifted=1.0)
    mean = lambda w: np.mean([np.frombuffer(w.grpc().raw_input_contents[0], "<f4").mean()  # noqa: E731
                              for _ in range(8)])  # fmt: skip
    assert mean(moved) - mean(plain) > 2.0


def test_bad_options_are_refused() -> None:
    inputs = inputs_from_metadata({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]})
    with pytest.raises(WorkloadError, match="rows"):
        Workload("m", "", inputs, rows=0)
    with pytest.raises(WorkloadError, match="shifted"):
        Workload("m", "", inputs, shifted=1.5)
    with pytest.raises(WorkloadError, match="datatype"):
        inputs_from_metadata({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1]}]})


def _locust(
    tmp_path: Path, gateway: Gateway, model: str, *user_classes: str, locustfile: Path | None = None
) -> tuple[int, dict[str, dict[str, str]], list[dict[str, str]], str]:
    """Locust headless for 3 s with 4 users of `user_classes`: its exit status, its stats
    rows by name, its failure rows and its output."""
    assert gateway.addresses is not None
    prefix = tmp_path / "run"
    argv = [
        sys.executable, "-m", "locust", "-f", str(locustfile or ROOT / "loadtest/locustfile.py"),
        "--headless", "-u", "4", "-r", "4", "-t", "3s", "--only-summary",
        "--host", f"http://{gateway.addresses.http}", "--grpc-host", gateway.addresses.grpc,
        "--model", model, "--rows", "2", "--routing-keys", "10", "--csv", str(prefix),
        *user_classes,
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert Path(f"{prefix}_stats.csv").exists(), output[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    with open(f"{prefix}_failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    return done.returncode, stats, failures, output


@needs_locust
@pytest.mark.parametrize(
    ("user_class", "model", "name"),
    [
        ("V2JsonUser", "echo_bytes", "v2 json"),
        ("V2BinaryUser", "pair", "v2 binary"),
        ("V1InstancesUser", "classifier", "v1 instances"),
        ("GrpcInferUser", "echo_bytes", "ModelInfer"),
        pytest.param(
            "GrpcStreamUser", "classifier", "ModelStreamInfer",
            marks=pytest.mark.skipif(not STREAMING, reason="the stubs have no ModelStreamInfer"),
        ),
    ],
)  # fmt: skip
def test_locust_runs_each_user_class_without_failures(
    tmp_path: Path, module_gateway: Gateway, user_class: str, model: str, name: str
) -> None:
    status, stats, failures, output = _locust(tmp_path, module_gateway, model, user_class)
    assert status == 0, output[-3000:]
    assert name in stats and int(stats[name]["Request Count"]) > 0, output[-3000:]
    assert stats["Aggregated"]["Failure Count"] == "0", failures
    assert not failures


@needs_locust
def test_locust_counts_malformed_requests_as_failures_by_status(
    tmp_path: Path, module_gateway: Gateway
) -> None:
    locustfile = tmp_path / "malformed.py"
    locustfile.write_text(
        textwrap.dedent("""
        from loadtest.locustfile import GrpcInferUser, GrpcStreamUser, V2JsonUser
        from loadtest.workload import HttpRequest


        class BrokenJsonUser(V2JsonUser):
            def request(self, workload):
                return HttpRequest(b'{"inputs": [', {"content-type": "application/json"})


        def wrong_datatype(self, workload):
            request = workload.grpc()
            request.inputs[0].datatype = "INT8"
            return request


        class WrongDatatypeUser(GrpcInferUser):
            request = wrong_datatype


        class WrongDatatypeStreamUser(GrpcStreamUser):
            request = wrong_datatype
    """)
    )
    users = ["BrokenJsonUser", "WrongDatatypeUser"]
    expected = {
        "v2 json": "CatchResponseError('HTTP 400')",
        "ModelInfer": "GrpcStatusError('INVALID_ARGUMENT')",
    }
    if STREAMING:  # errors on a stream carry a message, no status code
        users.append("WrongDatatypeStreamUser")
        expected["ModelStreamInfer"] = "GrpcStatusError('STREAM_ERROR')"
    status, stats, failures, output = _locust(
        tmp_path, module_gateway, "classifier", *users, locustfile=locustfile
    )
    assert status == 1, output[-3000:]  # Locust's status when requests failed
    for name, error in expected.items():
        assert int(stats[name]["Request Count"]) > 0, output[-3000:]
        assert stats[name]["Failure Count"] == stats[name]["Request Count"], stats[name]
        assert [f["Error"] for f in failures if f["Name"] == name] == [error], failures


@needs_locust
def test_a_model_the_gateway_does_not_serve_is_one_line_and_status_2(
    tmp_path: Path, module_gateway: Gateway
) -> None:
    status, stats, _, output = _locust(tmp_path, module_gateway, "nope", "V2JsonUser")
    assert status == 2, output[-3000:]
    assert "modelgate: GET http://" in output and "unknown model 'nope'" in output, output
    assert "Traceback" not in output, output[-3000:]
    assert stats["Aggregated"]["Request Count"] == "0"


@needs_locust
def test_a_rollout_under_locust_load_fails_nothing(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("light", modelzoo.classifier(), stage=Stage.PRODUCTION)
    argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(store.root),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]  # fmt: skip
    server = ServerProcess(argv, tmp_path / "gateway.log")
    try:
        found = server.wait_for_line(LISTENING, timeout=60)
        http = f"http://{found.group(1)}"
        server.wait_http_ok(f"{http}/v2/health/ready", timeout=60)
        rollout = [sys.executable, "-m", "loadtest.locust_rollout", "--host", http,
                   "--grpc-host", found.group(2), "--registry", str(store.root), "--model",
                   "light", "--users", "4", "--baseline", "3", "--settle", "4"]  # fmt: skip
        done = subprocess.run(rollout, cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        assert server.stop() == 0
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["locust_requests"] > 0 and report["locust_failures"] == 0, report
    assert report["rollout"]["errors"] == 0, report["rollout"]["error_samples"]
    assert abs(report["canary_observed"] - 0.20) <= 0.1, report
    moves = [(t.version, t.to_stage) for t in store.history("light") if t.reason]
    # Promoting archives the version it replaces; the rollback brings it back.
    assert moves == [(2, Stage.CANARY), (1, Stage.ARCHIVED), (2, Stage.PRODUCTION),
                     (2, Stage.ARCHIVED), (1, Stage.PRODUCTION)], moves  # fmt: skip
