"""In-process ONNX Runtime throughput: the ceiling no server can pass on this machine.

Runs one benchmark model at batch sizes 1, 2, 4, ... 256 for a bounded time each, with the
session options the gateway itself uses, and prints rows/s per batch size and the best.

    python -m loadtest.ceiling --model light|heavy [--threads 1] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from loadtest.models import FEATURES, MODELS
from modelgate.gateway.core.runtime import session_options
from modelgate.gateway.settings import RuntimeSettings

BATCH_SIZES: tuple[int, ...] = tuple(2**i for i in range(9))  # 1 .. 256


@dataclass(frozen=True, slots=True)
class CeilingPoint:
    """Throughput of back-to-back ORT calls at one batch size."""

    batch_size: int
    calls: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.batch_size * self.calls / self.seconds

    @property
    def microseconds_per_call(self) -> float:
        return 1e6 * self.seconds / self.calls


def measure(
    model: bytes,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    seconds: float = 1.0,
    intra_op_threads: int = 1,
) -> list[CeilingPoint]:
    """Call the model back to back for about `seconds` at each batch size."""
    options = session_options(RuntimeSettings(intra_op_threads=intra_op_threads))
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    points = []
    for batch_size in batch_sizes:
        feeds = {input_name: rng.standard_normal((batch_size, FEATURES), dtype=np.float32)}
        for _ in range(3):  # warm-up: first calls allocate buffers for the new shape
            session.run(None, feeds)
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            session.run(None, feeds)
            calls += 1
            now = time.perf_counter()
        points.append(CeilingPoint(batch_size, calls, now - start))
    return points


def best(points: list[CeilingPoint]) -> CeilingPoint:
    """The point with the highest rows/s."""
    return max(points, key=lambda p: p.rows_per_second)


def main(argv: list[str] | None = None) -> None:
    """Print the ceiling table for one model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", choices=sorted(MODELS), default="light")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per batch size")
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args(argv)
    sizes = tuple(b for b in BATCH_SIZES if b <= args.max_batch)
    points = measure(MODELS[args.model](), sizes, args.seconds, args.threads)
    print(f"model={args.model} intra_op_threads={args.threads}")
    print(f"{'batch':>6} {'us/call':>10} {'rows/s':>12}")
    for p in points:
        print(f"{p.batch_size:>6} {p.microseconds_per_call:>10.1f} {p.rows_per_second:>12,.0f}")
    top = best(points)
    print(f"best: {top.rows_per_second:,.0f} rows/s at batch {top.batch_size}")


if __name__ == "__main__":
    main()
