"""Stage changes over two real workers (gateway/route_link.py): a version that failed to
load joins every worker's routes at one switch moment once it loads, and a worker that
has routed nothing during a registry outage says the registry's error."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

import modelzoo
from loadtest.procs import ServerProcess
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

LISTENING = r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)"
STARTED = r"worker (\d+) started \(pid (\d+)\)"
FAILED = r"worker {worker} \S+: model clf v2 failed to load"
JOINED = "v1 primary 50%, v2 canary 50%"
ROUTING = re.compile(r"^(\S+ \S+) INFO worker (\d+) \S+: model clf routing: (.*)$", re.MULTILINE)


def _serve(tmp_path: Path, *source: str) -> ServerProcess:
    """`modelgate serve --workers 2` on `source` (--store DIR or --registry URL)."""
    argv = [sys.executable, "-m", "modelgate", "serve", *source, "--http-port", "0",
            "--grpc-port", "0", "--metrics-port", "0", "--workers", "2",
            "--drain-delay", "0"]  # fmt: skip
    return ServerProcess(argv, tmp_path / "gateway.log")


def _routed(log: str, table: str) -> dict[int, float]:
    """When each worker first switched to `table` (its log line's time)."""
    when: dict[int, float] = {}
    for at, worker, routing in ROUTING.findall(log):
        if routing == table:
            stamp = datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            when.setdefault(int(worker), stamp)
    return when


def test_a_version_that_failed_to_load_joins_every_worker_at_one_moment(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION, actor="t")
    canary = store.register("clf", modelzoo.classifier(first=2), actor="t")
    store.transition("clf", canary.version, Stage.CANARY, traffic=50.0, actor="t")
    artifact = store.root / "artifacts" / "sha256" / canary.sha256
    good = artifact.read_bytes()
    artifact.write_bytes(good[:-10])  # damaged on disk: every load fails its checksum
    server = _serve(tmp_path, "--store", str(store.root))
    try:
        server.wait_for_line(LISTENING, timeout=60)
        _wait_count(server, FAILED.format(worker=1), 1)
        # Worker 1 dies and its replacement fails on its own clock: without one retry for
        # all, each worker retried on its own backoff, and the two joined seconds apart.
        pids = dict(re.findall(STARTED, server.log_path.read_text()))
        os.kill(int(pids["1"]), signal.SIGKILL)
        failed = len(re.findall(FAILED.format(worker=1), server.log_path.read_text()))
        _wait_count(server, FAILED.format(worker=1), failed + 1)
        artifact.write_bytes(good)  # loadable from now on
        server.wait_for_line(rf"worker 0 \S+: model clf routing: {JOINED}", timeout=90)
        server.wait_for_line(rf"worker 1 \S+: model clf routing: {JOINED}", timeout=90)
        when = _routed(server.log_path.read_text(), JOINED)
        assert abs(when[0] - when[1]) < 0.5, (when, server.log_tail(40))
    finally:
        server.stop()


def _wait_count(server: ServerProcess, pattern: str, count: int, timeout: float = 60) -> None:
    """Until the log has `count` lines matching `pattern`."""
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, server.log_path.read_text())) < count:
        assert time.monotonic() < deadline, server.log_tail(40)
        server.wait_for_line(LISTENING, timeout=1)  # fails at once if the server exited
        time.sleep(0.05)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_worker_not_routed_yet_says_the_registry_error(tmp_path: Path) -> None:
    url = f"http://reader:s3cret@127.0.0.1:{_closed_port()}"  # nothing listens there
    server = _serve(tmp_path, "--registry", url)
    try:
        http = server.wait_for_line(LISTENING, timeout=60).group(1)
        limits = httpx.Limits(max_keepalive_connections=0)  # each call may reach either worker
        with httpx.Client(base_url=f"http://{http}", limits=limits, timeout=10) as client:
            assert client.get("/v2/health/ready").status_code == 503
            said = set()
            for _ in range(40):
                answer = client.get("/v2/models/clf")
                assert answer.status_code == 503
                said.add(answer.json()["error"])
        assert len(said) == 1, said  # the same from both workers
        [error] = said
        assert error.startswith("server is starting: the model registry is not read yet: ")
        assert "unreachable" in error and "127.0.0.1" in error
        assert "s3cret" not in error and "\n" not in error
    finally:
        server.stop()
