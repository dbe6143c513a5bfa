"""The servers under fuzz: a real gateway (`modelgate serve`) and a real registry server
(`modelgate registry serve`), each a subprocess on 127.0.0.1 with its own log, restarted
if fuzzing kills it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench import GATEWAY_LINE, READY_TIMEOUT, REPO
from loadtest.fuzz.outcome import LogWatch
from loadtest.fuzz.registry_cases import TOKEN
from loadtest.fuzz.seeds import INPUTS
from loadtest.fuzz.wire import GrpcClient, HttpClient
from loadtest.procs import ServerProcess
from modelgate.registry.reference import reference_profile
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

REGISTRY_LINE = r"modelgate registry listening on http://(\S+)"


def light_reference(model: bytes, workdir: Path) -> dict[str, Any]:
    """The light model's reference profile, from a sample of its training distribution
    (as the benchmark registers it), so the gateway's drift monitor runs as in production."""
    from loadtest.drift_quality import REFERENCE_ROWS, LightTraffic

    sample = workdir / "light-reference.npy"
    inputs, _ = LightTraffic().rows(np.random.default_rng(0), REFERENCE_ROWS)
    np.save(sample, inputs["input"])
    return reference_profile(model, sample)


def make_store(root: Path, models: dict[str, bytes], reference: dict[str, Any]) -> Path:
    """A registry store with each model's version 1 in production."""
    store = RegistryStore(root, create=True)
    for name, model in models.items():
        store.register(
            name,
            model,
            stage=Stage.PRODUCTION,
            reference=reference if name == "light" else None,
            actor="fuzz",
        )
    return root


def capped(argv: list[str], limit: int) -> list[str]:
    """`argv` run with its address space capped at `limit` bytes (util-linux prlimit), so an
    allocation sized by a hostile request fails in the server (a traceback, counted) instead
    of taking the shared machine's memory. Uncapped where prlimit is missing."""
    prlimit = shutil.which("prlimit")
    if prlimit is None or limit <= 0:
        return argv
    return [prlimit, f"--as={limit}", "--", *argv]


class Target:
    """One server process, its log watch and its clients; `restart` after a crash."""

    def __init__(
        self, kind: str, store: Path, workdir: Path, case_timeout: float, memory_gib: float
    ) -> None:
        self.kind = kind  # gateway | registry
        self._memory = int(memory_gib * (1 << 30))
        self._store = store
        self._workdir = workdir
        self._timeout = case_timeout
        self._starts = 0
        self.process: ServerProcess | None = None
        self.watch: LogWatch | None = None
        self.http: HttpClient | None = None
        self.grpc: GrpcClient | None = None

    def start(self) -> None:
        self._starts += 1
        log = self._workdir / f"{self.kind}-{self._starts}.log"
        python = sys.executable
        if self.kind == "gateway":
            argv = [python, "-m", "modelgate", "serve", "--store", str(self._store),
                    "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                    "--metrics-port", "0", "--drain-delay", "0"]  # fmt: skip
        else:
            tokens = self._workdir / "tokens"
            tokens.write_text(f"fuzz:{TOKEN}\n")
            argv = [python, "-m", "modelgate", "registry", "--store", str(self._store),
                    "serve", "--host", "127.0.0.1", "--port", "0",
                    "--token-file", str(tokens)]  # fmt: skip
        self.process = ServerProcess(capped(argv, self._memory), log, cwd=REPO)
        if self.kind == "gateway":
            found = self.process.wait_for_line(GATEWAY_LINE, READY_TIMEOUT)
            http, grpc = found.group(1), found.group(2)
            for model in INPUTS:
                self.process.wait_http_ok(f"http://{http}/v2/models/{model}/ready", READY_TIMEOUT)
            self.grpc = GrpcClient(grpc, self._timeout)
        else:
            http = self.process.wait_for_line(REGISTRY_LINE, READY_TIMEOUT).group(1)
        self.http = HttpClient(http, self._timeout)
        self.watch = LogWatch(log)  # from here on: what the cases make the server write

    def exit_status(self) -> int | None:
        """None while the server runs; its exit status once it has died."""
        assert self.process is not None
        return self.process.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.grpc is not None:
            self.grpc.close()
        if self.process is not None:
            self.process.stop()
            self.process = None
