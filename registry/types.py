"""Registry domain types: model versions and their deployment stages."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Stage(enum.Enum):
    """Where a model version stands in its rollout; the gateway serves by stage."""

    NONE = "none"
    STAGING = "staging"
    CANARY = "canary"
    SHADOW = "shadow"
    PRODUCTION = "production"
    ARCHIVED = "archived"

    @classmethod
    def parse(cls, value: str) -> Stage:
        try:
            return cls(value.lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown stage {value!r} (one of: {names})") from None


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """One ONNX input or output as recorded at registration (-1: dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSignature:
        return cls(data["name"], data["datatype"], tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A registered, immutable model artifact plus its mutable stage."""

    name: str
    version: int
    sha256: str
    size: int
    stage: Stage
    created: float
    inputs: tuple[TensorSignature, ...] = ()
    outputs: tuple[TensorSignature, ...] = ()
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    traffic: float | None = None
