"""Domain types shared by the core and the codecs: plain data, no wire knowledge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(slots=True)
class Tensor:
    """A named tensor; `data` holds the values with their shape (BYTES: an object array)."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as a client sees it: -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)
class InferRequest:
    """One inference request after decoding, whichever protocol carried it.

    `outputs` lists the requested output names (None: all). `timeout` is the client's
    budget in seconds, counted from when the request reaches the core.
    """

    model: str
    inputs: list[Tensor]
    version: str | None = None
    id: str | None = None
    outputs: list[str] | None = None
    timeout: float | None = None
    protocol: str = "http"
    routing_key: str | None = None  # sticky traffic assignment (canaries) when given


@dataclass(slots=True)
class InferResponse:
    """The answer to an `InferRequest`: outputs in the order requested (or model order)."""

    model: str
    version: str
    outputs: list[Tensor]
    id: str | None = None


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version of a model as the gateway serves it: its stage in the registry, its
    lifecycle state, its traffic share, and why it failed to load, if it did."""

    version: str
    stage: str
    state: str
    traffic: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stage": self.stage,
            "state": self.state,
            "traffic": self.traffic,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What `/v2/models/{m}` and gRPC ModelMetadata report (`status` only over HTTP, as an
    extra field V2 clients ignore)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    status: tuple[VersionStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The subset of Triton's model configuration that its tools (perf_analyzer) need."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class Duration:
    """How many times something happened and how long it took in all."""

    count: int = 0
    ns: int = 0


NOT_MEASURED = Duration()


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    """The model runs of one batch size (in rows) and their ONNX Runtime time."""

    batch_size: int
    compute_infer: Duration
    compute_input: Duration = NOT_MEASURED
    compute_output: Duration = NOT_MEASURED


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """Triton's statistics of one model version, from what the gateway counts; the figures
    it does not measure stay `NOT_MEASURED` (zero)."""

    name: str
    version: str
    last_inference_ms: int  # when the last request was answered; 0: never
    inference_count: int  # rows run by successful model runs
    execution_count: int  # successful model runs (batches)
    success: Duration
    fail: Duration
    queue: Duration
    compute_infer: Duration  # per request: the run of the batch it was in
    batches: tuple[BatchStatistics, ...]
    compute_input: Duration = NOT_MEASURED
    compute_output: Duration = NOT_MEASURED
    cache_hit: Duration = NOT_MEASURED
    cache_miss: Duration = NOT_MEASURED


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model version in the repository index: Triton's state name and why."""

    name: str
    version: str
    state: str
    reason: str
