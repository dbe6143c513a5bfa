"""ONNX Runtime sessions: loading, signature, warm-up and the call a batch makes."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from modelgate.gateway.core.datatypes import ORT_TO_V2, numpy_dtype
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.types import TensorSpec
from modelgate.gateway.settings import RuntimeSettings
from modelgate.registry.model_check import ONNX_FORMAT_ONLY, InvalidModelError, parse_model

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(Exception):
    """An artifact is not a model ONNX Runtime can serve."""


def session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    """Session options as the gateway uses them; benchmarks use the same for the ceiling."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    options.log_severity_level = 3
    options.add_session_config_entry(*ONNX_FORMAT_ONLY)
    return options


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
            # Whichever backend the bytes came from, a model reaching outside its own
            # file never gets to ONNX Runtime.
            parse_model(model)
        except InvalidModelError as exc:
            raise ModelLoadError(str(exc)) from None
        try:
            self._session = ort.InferenceSession(
                model, sess_options=session_options(settings), providers=["CPUExecutionProvider"]
            )
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
        self._call = _direct_run(self._session)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in `self.outputs` order. Called from a batch worker thread."""
        try:
            return self._call(self.output_names, feeds, None)
        except Exception as exc:
            # ORT rejects values the model cannot take (e.g. an unknown category): the
            # batch failed as a whole, the process and the session are fine.
            raise InferenceError(ErrorCode.INVALID_ARGUMENT, f"model run failed: {exc}") from exc

    def warm_up(self) -> float:
        """Run the model on zeros so the first real request does not pay for allocation;
        returns the fastest run's seconds (0 when `warmup_runs` is 0)."""
        feeds = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.shape)
            dtype = numpy_dtype(spec.datatype)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=dtype)
        fastest = 0.0
        for i in range(self._warmup_runs):
            started = time.perf_counter()
            self._call(self.output_names, feeds, None)  # the call requests will make
            elapsed = time.perf_counter() - started
            fastest = elapsed if i == 0 else min(fastest, elapsed)
        return fastest
