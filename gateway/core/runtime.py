"""ONNX Runtime sessions: loading, signature, warm-up and the call a batch makes.

What a model may compute with is bounded (docs/hardening.md, "Model files"): every session
runs in an ONNX Runtime arena of its own capped at `max_run_memory_bytes`, constant folding
at load may add at most as much, and a run is stopped after `max_run_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from modelgate.gateway.core.datatypes import ORT_TO_V2, numpy_dtype
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.types import TensorSpec
from modelgate.gateway.core.watchdog import shared_watchdog
from modelgate.gateway.settings import RuntimeSettings
from modelgate.registry.model_check import ONNX_FORMAT_ONLY, InvalidModelError, parse_model

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# Constant folding may always produce this much per node (shape arithmetic and the like).
_MIN_FOLD_BYTES = 1024
# Errors of ONNX Runtime's arena when a run asks for more than its cap (or than the system).
_OUT_OF_MEMORY = ("Available memory of", "Failed to allocate memory")
# ONNX Runtime gives a session the shared CPU allocator registered when the session is
# created: registering a fresh capped arena just before gives each session its own. The
# registration is process state, hence one lock for every load.
_CPU_MEMORY = ort.OrtMemoryInfo(
    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
)
_ARENA_LOCK = threading.Lock()


class ModelLoadError(Exception):
    """An artifact is not a model ONNX Runtime can serve."""


def session_options(settings: RuntimeSettings, nodes: int = 1) -> ort.SessionOptions:
    """Session options as the gateway uses them for a model of `nodes` nodes; benchmarks
    use the same for the ceiling."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    # Failures reach the caller as exceptions; at a lower level ONNX Runtime would also log
    # a line for every failed run, which a client could repeat at will.
    options.log_severity_level = 4
    options.add_session_config_entry(*ONNX_FORMAT_ONLY)
    # Folded constants stay in memory for the model's life, outside the run arena: all the
    # nodes together may fold at most `max_run_memory_bytes` (ONNX Runtime >= 1.27 reads this
    # per node, and skips folding a node whose output it cannot size beforehand).
    fold = max(_MIN_FOLD_BYTES, settings.max_run_memory_bytes // max(1, nodes))
    options.add_session_config_entry(
        "optimization.constant_folding_max_output_size_in_bytes", str(fold)
    )
    return options


def _open_session(model: bytes, settings: RuntimeSettings, nodes: int) -> ort.InferenceSession:
    options = session_options(settings, nodes)
    options.add_session_config_entry("session.use_env_allocators", "1")
    arena = ort.OrtArenaCfg({"max_mem": settings.max_run_memory_bytes})
    with _ARENA_LOCK:
        ort.create_and_register_allocator(_CPU_MEMORY, arena)
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{arg.name}: unsupported ONNX type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)


def _direct_run(session: ort.InferenceSession) -> Callable[..., list[np.ndarray]]:
    """The session's native `run(output_names, feeds, run_options)`, without the Python
    wrapper's checks (every input given, no device values), which `model_feeds` has made:
    about 0.7 µs of a 4 µs run for a light model. The public method if a future
    onnxruntime moves the binding."""
    native = getattr(getattr(session, "_sess", None), "run", None)
    return native if callable(native) else session.run


class OnnxModel:
    """One ONNX Runtime session and the signature clients see.

    `batchable` is true when every input and output has a dynamic first dimension: only
    then may the batcher concatenate requests along it.
    """

    def __init__(self, model: bytes, settings: RuntimeSettings) -> None:
        try:
            # Whichever backend the bytes came from, a model reaching outside its own file,
            # or declaring more than it holds, never gets to ONNX Runtime.
            nodes = parse_model(model).nodes
        except InvalidModelError as exc:
            raise ModelLoadError(str(exc)) from None
        try:
            self._session = _open_session(model, settings, nodes)
        except Exception as exc:  # ORT raises its own hierarchy: Fail, InvalidGraph, ...
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self.output_index = {name: i for i, name in enumerate(self.output_names)}
        self.input_by_name = {spec.name: spec for spec in self.inputs}
        self.batchable = all(
            len(s.shape) > 0 and s.shape[0] == -1 for s in self.inputs + self.outputs
        )
        self._warmup_runs = settings.warmup_runs
        self._max_bytes = settings.max_run_memory_bytes
        self._max_seconds = settings.max_run_seconds
        self._watchdog = shared_watchdog()
        self._call = _direct_run(self._session)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in `self.outputs` order. Called from a batch worker thread or inline
        on an event loop; stopped after `max_run_seconds` (DEADLINE_EXCEEDED)."""
        options = ort.RunOptions() if self._max_seconds else None
        if options is not None:
            self._watchdog.watch(options, self._max_seconds)
        try:
            return self._call(self.output_names, feeds, options)
        except Exception as exc:
            raise self._failure(exc, options) from exc
        finally:
            if options is not None:
                self._watchdog.release(options)

    def _failure(self, exc: Exception, options: ort.RunOptions | None) -> InferenceError:
        if options is not None and options.terminate:
            return InferenceError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"model run stopped after max_run_seconds ({self._max_seconds:g} s)",
            )
        if any(sign in str(exc) for sign in _OUT_OF_MEMORY):
            # What these inputs ask of the model, not the server's state: each session has
            # its own arena. The batcher then retries the batch's requests one by one.
            return InferenceError(
                ErrorCode.INVALID_ARGUMENT,
                f"the model run needs more memory than max_run_memory_bytes ({self._max_bytes} "
                "bytes) allows: send fewer rows or smaller values",
            )
        # ORT rejects values the model cannot take (e.g. an unknown category): the batch
        # failed as a whole, the process and the session are fine.
        return InferenceError(ErrorCode.INVALID_ARGUMENT, f"model run failed: {exc}")

    def warm_up(self) -> float:
        """Run the model on zeros so the first real request does not pay for allocation;
        returns the fastest run's seconds (0 when `warmup_runs` is 0). The runs are
        requests' runs, with their limits; inputs whose fixed shapes would take more than
        `max_run_memory_bytes` are refused before anything is allocated."""
        shapes = {s.name: tuple(1 if d == -1 else d for d in s.shape) for s in self.inputs}
        size = sum(
            int(np.prod(shapes[s.name], dtype=object)) * numpy_dtype(s.datatype).itemsize
            for s in self.inputs
        )
        if size > self._max_bytes:
            raise ModelLoadError(
                f"the inputs' fixed shapes take {size} bytes, more than max_run_memory_bytes "
                f"({self._max_bytes})"
            )
        feeds = {}
        for spec in self.inputs:
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shapes[spec.name], "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shapes[spec.name], dtype=numpy_dtype(spec.datatype))
        fastest = 0.0
        for i in range(self._warmup_runs):
            started = time.perf_counter()
            self.run(feeds)  # the call requests will make
            elapsed = time.perf_counter() - started
            fastest = elapsed if i == 0 else min(fastest, elapsed)
        return fastest
