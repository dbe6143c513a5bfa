"""Triton's perf_analyzer as the benchmark's load generator: find it, run one point, parse it.

perf_analyzer is a compiled client (C++), so at concurrency 64 it needs a fraction of a core
and leaves the rest of a small machine to the server under test. It lives in its own venv
(`loadtest/install_perf_analyzer.sh`); modelgate's own install never depends on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.models import FEATURES

DEFAULT_PATH = Path("/tmp/pa-venv/bin/perf_analyzer")
INSTALL_HINT = "run `bash loadtest/install_perf_analyzer.sh` (or pass --perf-analyzer PATH)"


class LoadGeneratorError(RuntimeError):
    """perf_analyzer is missing, failed, timed out or wrote no usable CSV."""


@dataclass(frozen=True, slots=True)
class PerfAnalyzer:
    """An installed perf_analyzer binary and the environment it needs to start."""

    path: Path
    env: dict[str, str]

    def version(self) -> str:
        """The first line of `perf_analyzer --version`, e.g. "Perf Analyzer Version 2.51.0"."""
        done = subprocess.run(
            [str(self.path), "--version"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else "perf_analyzer (unknown version)"


def find_perf_analyzer(path: Path = DEFAULT_PATH) -> PerfAnalyzer:
    """The binary at `path`, with LD_LIBRARY_PATH pointing at its venv's CUDA runtime wheel."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LoadGeneratorError(f"perf_analyzer not found at {path}: {INSTALL_HINT}")
    env = dict(os.environ)
    venv = path.resolve().parent.parent
    libs = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if libs:
        extra = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = str(libs[0]) + (f":{extra}" if extra else "")
    return PerfAnalyzer(path, env)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load point: a model on a server address, a protocol and a concurrency."""

    model: str
    url: str  # host:port
    protocol: str  # grpc | http
    concurrency: int
    window_ms: int
    trials: int
    request_rate: int | None = None  # requests/s at a fixed rate instead of a concurrency
    streaming: bool = False  # gRPC ModelStreamInfer, one stream per concurrency slot
    extra: tuple[str, ...] = ()  # more perf_analyzer options (TLS, headers)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What perf_analyzer reported for one point, and what running it cost."""

    requests_per_second: float
    p50_us: float
    p99_us: float
    cpu_seconds: float  # perf_analyzer's own user+system time
    wall_seconds: float


def command_line(
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace], argv: Sequence[str] | None
) -> tuple[argparse.Namespace, PerfAnalyzer] | None:
    """A benchmark's arguments and the perf_analyzer its `--perf-analyzer` names; None
    once the missing binary was reported on stderr (the benchmark then exits 2)."""
    args = parse_args(argv)
    try:
        return args, find_perf_analyzer(args.perf_analyzer)
    except LoadGeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def write_input_data(path: Path, rows: int = 16) -> None:
    """Standard-normal rows for `--input-data`: perf_analyzer's own random bytes make FP32
    values like 1e34, which push models into inf/NaN paths no real client takes."""
    values = np.random.default_rng(7).standard_normal((rows, FEATURES)).astype(np.float32)
    doc = {"data": [{"input": [float(v) for v in row]} for row in values]}
    path.write_text(json.dumps(doc))


def command(spec: LoadSpec, csv_path: Path, input_data: Path) -> list[str]:
    """The perf_analyzer command line for `spec`: fixed windows, stability check off."""
    if spec.request_rate is None:
        load = ["--concurrency-range", f"{spec.concurrency}:{spec.concurrency}"]
    else:  # enough sending threads to hold the rate while earlier requests are in flight
        rate = f"{spec.request_rate}:{spec.request_rate}"
        load = ["--request-rate-range", rate, "--max-threads", "16"]
    args = [
        "-m",
        spec.model,
        "-u",
        spec.url,
        "-i",
        spec.protocol,
        *load,
        "--measurement-mode",
        "time_windows",
        "-p",
        str(spec.window_ms),
        "-s",
        "1000",  # any spread counts as stable: each point costs `trials` windows at most
        "-r",
        str(spec.trials),
        "--shape",
        f"input:1,{FEATURES}",  # one row per request
        "--input-data",
        str(input_data),
        "-f",
        str(csv_path),
    ]
    if spec.protocol == "http":
        args += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    if spec.streaming:
        args.append("--streaming")
    return [*args, *spec.extra]


def timeout_seconds(spec: LoadSpec) -> float:
    """A bound on one run: its windows, plus start-up, warm-up and draining slack."""
    return spec.trials * spec.window_ms / 1000 + 30.0


def run(analyzer: PerfAnalyzer, spec: LoadSpec, workdir: Path, input_data: Path) -> LoadResult:
    """Run one point and return its throughput, latencies and perf_analyzer's CPU time.

    CPU time is the RUSAGE_CHILDREN delta across the run: the driver reaps no other child
    meanwhile, so the delta is exactly this perf_analyzer process.
    """
    csv_path = workdir / f"pa-{spec.protocol}-c{spec.concurrency}-{time.monotonic_ns()}.csv"
    argv = [str(analyzer.path), *command(spec, csv_path, input_data)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            env=analyzer.env,
            capture_output=True,
            text=True,
            timeout=timeout_seconds(spec),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadGeneratorError(f"perf_analyzer timed out after {exc.timeout:.0f} s") from None
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise LoadGeneratorError(f"perf_analyzer exited {done.returncode}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    throughput, p50, p99 = parse_csv(csv_path)
    return LoadResult(throughput, p50, p99, cpu, wall)


def parse_csv(path: Path) -> tuple[float, float, float]:
    """(infer/sec, p50 usec, p99 usec) from the first data row of perf_analyzer's `-f` CSV."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise LoadGeneratorError(f"perf_analyzer wrote no CSV: {exc}") from None
    if not rows:
        raise LoadGeneratorError(f"perf_analyzer CSV {path} has no data row")
    row = rows[0]
    try:
        return (
            float(row["Inferences/Second"]),
            float(row["p50 latency"]),
            float(row["p99 latency"]),
        )
    except (KeyError, ValueError) as exc:
        raise LoadGeneratorError(f"unexpected perf_analyzer CSV columns: {exc}") from None
