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
