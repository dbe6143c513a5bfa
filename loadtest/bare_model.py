"""What the bare reference servers share: one ORT session, its signature, the CLI.

The bare servers (`bare_http`, `bare_grpc`) are the "what a minimal server reaches" baselines
of the benchmark: no batching, no validation beyond what NumPy does, one ONNX Runtime call
per request. They answer just enough of the metadata and Triton model-config endpoints for
perf_analyzer to start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from loadtest.models import MODELS
from modelgate.gateway.core.datatypes import ORT_TO_V2, numpy_dtype
from modelgate.gateway.core.runtime import session_options
from modelgate.gateway.settings import RuntimeSettings

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """One model input or output: V2 datatype, shape with -1 for dynamic dimensions."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype


def _signature(arg: ort.NodeArg) -> TensorSignature:
    datatype = ORT_TO_V2[arg.type]
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSignature(arg.name, datatype, shape, numpy_dtype(datatype))


class BareModel:
    """One benchmark model in one ONNX Runtime session, with the answers perf_analyzer needs.

    `max_batch_size` only shapes the Triton config it reports: 0 (the default) declares
    full shapes, so perf_analyzer's `--shape input:1,32` is the whole request tensor.
    """

    def __init__(
        self, name: str, model: bytes, intra_op_threads: int = 1, max_batch_size: int = 0
    ) -> None:
        options = session_options(RuntimeSettings(intra_op_threads=intra_op_threads))
        self.name = name
        self.max_batch_size = max_batch_size
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {a.name: _signature(a) for a in self._session.get_inputs()}
        self.outputs = [_signature(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One ONNX Runtime call; outputs in `self.outputs` order."""
        return self._session.run(self._output_names, feeds)

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata, as JSON-ready values (gRPC parses the same dict)."""

        def tensors(sigs: list[TensorSignature]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in sigs]

        return {
            "name": self.name,
            "versions": ["1"],
            "platform": PLATFORM,
            "inputs": tensors(list(self.inputs.values())),
            "outputs": tensors(self.outputs),
        }

    def triton_config(self) -> dict[str, Any]:
        """A minimal Triton model config (JSON form of model_config.proto's ModelConfig)."""
        skip = 1 if self.max_batch_size > 0 else 0  # batched configs leave out the batch dim

        def tensors(sigs: list[TensorSignature]) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.shape[skip:])}
                for s in sigs
            ]

        return {
            "name": self.name,
            "platform": PLATFORM,
            "max_batch_size": self.max_batch_size,
            "input": tensors(list(self.inputs.values())),
            "output": tensors(self.outputs),
        }


def parser(description: str, default_loop: str) -> argparse.ArgumentParser:
    """The CLI every bare server shares; callers add their own flags."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--loop", choices=("asyncio", "uvloop"), default=default_loop)
    result.add_argument(
        "--offload-threads",
        type=int,
        default=0,
        help="run each ORT call in a pool of this many threads (0: inline on the loop)",
    )
    result.add_argument("--host", default="127.0.0.1")
    result.add_argument("--port", type=int, default=0, help="0 picks a free port")
    result.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT, so that several processes share one port "
        "(start the first on port 0, the others on the port it announces)",
    )
    result.add_argument("--model", choices=sorted(MODELS), default="light")
    result.add_argument("--intra-op-threads", type=int, default=1)
    result.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="max_batch_size the Triton config reports (0: full shapes in dims)",
    )
    return result


def load(args: argparse.Namespace) -> BareModel:
    """Build the model named on the command line into a session."""
    return BareModel(args.model, MODELS[args.model](), args.intra_op_threads, args.max_batch_size)


def run_on_loop(
    serve: Callable[[ThreadPoolExecutor | None], Coroutine[Any, Any, None]],
    args: argparse.Namespace,
) -> None:
    """Run `serve(offload pool or None)` on the event loop the command line chose."""
    offload = ThreadPoolExecutor(args.offload_threads) if args.offload_threads > 0 else None
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(serve(offload))
        else:
            asyncio.run(serve(offload))
    finally:
        if offload is not None:
            offload.shutdown()


def announce(host: str, port: int) -> None:
    """The one line a benchmark driver waits for before sending load."""
    print(f"listening on {host}:{port}", flush=True)


def on_stop_signals(handler: Callable[[], None]) -> None:
    """Call `handler` on SIGTERM and SIGINT (instead of dying or raising KeyboardInterrupt)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: handler())
