"""`modelgate serve` and registry mistakes, as real subprocesses: what cannot work is refused
at startup with one line (status 2); a registry that is only not up yet is waited for, with
the gateway not ready meanwhile and its log quiet."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import modelzoo
from loadtest.procs import ServerProcess, clean_environment
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

PORTS = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
GATEWAY = r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)"


def _serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`modelgate serve ARGS` that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "modelgate", "serve", *args, *PORTS], capture_output=True,
        text=True, timeout=120, cwd=cwd, env=clean_environment(),
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _failed_reads(metrics: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelgate_registry_polls_total" and sample.labels == {
                "outcome": "error"
            }:
                return float(sample.value)
    return 0.0


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_store_that_is_not_there_is_refused_unless_asked_to_create_it(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    done = _serve("--store", str(typo), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"modelgate: no registry at {typo}: register a model there with `modelgate registry "
        f"--store {typo} register NAME FILE`, pass --create-store on to start with an empty one, "
        "or fix --store (MODELGATE_STORE)\n"
    )
    assert not typo.exists()
    (tmp_path / "empty").mkdir()  # a directory, but no registry in it
    done = _serve("--registry", str(tmp_path / "empty"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"modelgate: no registry at {tmp_path / 'empty'} (the directory has no registry.db): "
    )
    assert done.stderr.endswith("or fix --registry (MODELGATE_REGISTRY)\n")
    assert list((tmp_path / "empty").iterdir()) == []

    argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(typo),
            "--create-store", "on", *PORTS]  # fmt: skip
    gateway = ServerProcess(argv, tmp_path / "gateway.log")
    try:
        http = gateway.wait_for_line(GATEWAY, timeout=60).group(1)
        gateway.wait_http_ok(f"http://{http}/v2/health/ready", timeout=60)  # empty, as asked
    finally:
        assert gateway.stop() == 0
    assert RegistryStore(typo).list_versions() == []


def test_an_unknown_host_or_a_server_of_another_kind_is_refused(tmp_path: Path) -> None:
    done = _serve("--registry", "http://no-such-host.invalid:8081", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "modelgate: registry http://no-such-host.invalid:8081: there is no host named "
        "'no-such-host.invalid'\n",
    )
    # A gateway is no registry: `--registry` at another gateway's HTTP port.
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION)
    argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(store.root), *PORTS]
    other = ServerProcess(argv, tmp_path / "other.log")
    try:
        http = other.wait_for_line(GATEWAY, timeout=60).group(1)
        for scheme, kind in (
            ("", "a modelgate registry server"),
            ("mlflow+", "an MLflow tracking"),
        ):
            url = f"{scheme}http://{http}"
            done = _serve("--registry", url, cwd=tmp_path)
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith(f"modelgate: http://{http} is not {kind}"), done.stderr
            assert len(done.stderr.splitlines()) == 1
    finally:
        assert other.stop() == 0


def test_a_registry_that_is_not_up_yet_is_waited_for_quietly(tmp_path: Path) -> None:
    """The gateway starts first (as it may in any deployment): not ready, one log line
    however many reads fail, then ready once the registry answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "modelgate", "serve", "--registry", url, "--poll-interval",
            "0.05", *PORTS]  # fmt: skip
    gateway = ServerProcess(argv, tmp_path / "gateway.log")
    registry = None
    try:
        found = gateway.wait_for_line(GATEWAY, timeout=60)
        http, metrics = found.group(1), found.group(3)
        deadline = time.monotonic() + 60
        while _failed_reads(metrics) < 4:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.05)
        assert _status(f"http://{http}/v2/health/ready") == 503
        store = RegistryStore(tmp_path / "store", create=True)
        store.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION)
        registry = ServerProcess(
            [sys.executable, "-m", "modelgate", "registry", "--store", str(store.root), "serve",
             "--port", str(port)], tmp_path / "registry.log",
        )  # fmt: skip
        gateway.wait_http_ok(f"http://{http}/v2/models/clf/ready", timeout=60)
    finally:
        assert gateway.stop() == 0
        if registry is not None:
            assert registry.stop() == 0
    log = gateway.log_path.read_text()
    assert log.count("registry not readable yet") == 1, log
    assert log.count("registry readable again after") == 1, log
    assert "HTTP Request" not in log  # httpx's line per request


def test_a_rejected_token_is_refused(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    (tmp_path / "tokens").write_text("ci:right\n")
    (tmp_path / "secret").write_text("wrong\n")
    registry = ServerProcess(
        [sys.executable, "-m", "modelgate", "registry", "--store", str(store.root), "serve",
         "--port", "0", "--token-file", str(tmp_path / "tokens"), "--protect-reads"],
        tmp_path / "registry.log",
    )  # fmt: skip
    try:
        url = registry.wait_for_line(r"listening on (http://\S+)", timeout=60).group(1)
        done = _serve("--registry", url, "--registry-token-file", str(tmp_path / "secret"),
                      cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("modelgate: "), done.stderr
        assert len(done.stderr.splitlines()) == 1
    finally:
        assert registry.stop() == 0
