"""A gateway on another "machine": `modelgate serve --registry http://...` against a real
`modelgate registry serve`, both subprocesses. Registering and stage changes go through the
CLI over HTTP with a token; the registry goes down and comes back while the gateway serves."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelzoo
from loadtest.procs import ServerProcess

GATEWAY = r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)"
REGISTRY = r"modelgate registry listening on (http://\S+)"
SECRET = "ci-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelgate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Registry:
    """`modelgate registry serve` on a fixed port, so it can be stopped and started again."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = tmp_path / "store"
        self.tokens = tmp_path / "tokens"  # the server's: who may write
        self.tokens.write_text(f"ci:{SECRET}\n")
        self.secret = tmp_path / "secret"  # a client's: just its secret
        self.secret.write_text(SECRET + "\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp_path
        self.process: ServerProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        argv = [sys.executable, "-m", "modelgate", "registry", "--store", str(self.store),
                "serve", "--port", str(self.port), "--token-file", str(self.tokens),
                "--create-store"]  # fmt: skip
        self.process = ServerProcess(argv, self.log_dir / f"registry-{self.starts}.log")
        self.process.wait_for_line(REGISTRY, timeout=60)

    def stop(self) -> None:
        if self.process is not None:
            assert self.process.stop() == 0
            self.process = None


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path)
    server.start()
    yield server
    server.stop()


def _register(registry: Registry, model: Path, *extra: str) -> None:
    done = _cli("registry", "--registry", registry.url, "--token-file", str(registry.secret),
                "register", "clf", str(model), "--actor", "ci", *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _transition(registry: Registry, version: int, stage: str) -> None:
    done = _cli("registry", "--registry", registry.url, "--token-file", str(registry.secret),
                "transition", "clf", str(version), stage)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _version(http: str) -> str:
    x = np.zeros((1, modelzoo.FEATURES), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{http}/v2/models/clf/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def _wait(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_gateway_follows_a_registry_server_through_an_outage(
    tmp_path: Path, registry: Registry
) -> None:
    model = tmp_path / "clf.onnx"
    model.write_bytes(modelzoo.classifier())
    _register(registry, model, "--stage", "production")
    _register(registry, model)

    argv = [sys.executable, "-m", "modelgate", "serve", "--registry", registry.url,
            "--registry-token-file", str(registry.secret), "--store", str(tmp_path / "unused"),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]  # fmt: skip
    gateway = ServerProcess(argv, tmp_path / "gateway.log")
    try:
        found = gateway.wait_for_line(GATEWAY, timeout=60)
        http, metrics = f"http://{found.group(1)}", f"http://{found.group(3)}"
        gateway.wait_http_ok(f"{http}/v2/health/ready", timeout=60)
        assert _version(http) == "1"

        _transition(registry, 2, "production")
        _wait(lambda: _version(http) == "2")

        registry.stop()  # the registry is down: the gateway keeps serving what it has
        _wait(lambda: "modelgate_registry_polls_total{outcome=\"error\"}" in httpx.get(
            f"{metrics}/metrics").text)  # fmt: skip
        assert {_version(http) for _ in range(20)} == {"2"}
        assert httpx.get(f"{http}/v2/health/ready").status_code == 200

        registry.start()  # back: the gateway catches up with changes made meanwhile
        _transition(registry, 1, "production")
        _wait(lambda: _version(http) == "1", timeout=40)
        log = gateway.log_path.read_text()
        assert log.count("registry poll failed") == 1  # the outage, not each failed poll
        assert log.count("registry readable again") == 1
        assert "HTTP Request" not in log  # httpx's line per request: one per poll
    finally:
        assert gateway.stop() == 0
    assert not (tmp_path / "unused").exists()  # --registry wins over --store
