"""Registry domain types: model versions and their deployment stages."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from modelgate.registry.errors import InvalidRequestError

# Version numbers count from 1 and are stored as SQLite integers (64 bits, signed): a
# larger number names no version, and SQLite cannot even look it up.
MAX_VERSION = 2**63 - 1


def parse_version(text: str) -> int:
    """The version number `text` writes in ASCII digits; InvalidRequestError otherwise."""
    # isdigit alone takes "²" and other Unicode digits that int() refuses or reads otherwise;
    # the length first, as int() refuses more than 4,300 digits.
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_VERSION))
    if not digits or not 1 <= int(text) <= MAX_VERSION:
        raise InvalidRequestError(
            f"a version is a whole number from 1 to {MAX_VERSION}, not {text[:80]!r}"
        )
    return int(text)


# A version tag that lets a version take traffic although its signature differs from the
# production version's; its value is why. The registry sets it when a stage change allows
# the difference (`--allow-signature-change`); in MLflow, set it on the version by hand.
SIGNATURE_CHANGE_TAG = "modelgate.signature_change"

# What a model name may be. Names travel in URL paths (V2 `/v2/models/{name}`, V1
# `/v1/models/{name}:predict`), log lines, metric labels and file-like listings, so: ASCII
# letters and digits, then also `.`, `_` and `-` (Kubernetes resource names and the usual
# MLflow names fit), at most 128 characters. No `/` or `:` (path and V1 verb separators), no
# space, control, bidi or other non-ASCII character (forged log lines, misleading labels),
# no leading `.` or `-` (hidden files, `..`, options to a command line).
MODEL_NAME_SYNTAX = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_MODEL_NAME = re.compile(MODEL_NAME_SYNTAX, re.ASCII)


def is_model_name(name: object) -> TypeGuard[str]:
    """Whether `name` follows the model name syntax (`MODEL_NAME_SYNTAX`)."""
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name) is not None


def check_model_name(name: object) -> str:
    """`name` if it follows the model name syntax; InvalidRequestError saying why not."""
    if not is_model_name(name):
        raise InvalidRequestError(
            f"invalid model name {shown(name)}: a name is 1 to 128 ASCII letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def shown(value: object, limit: int = 64) -> str:
    """`value` safe for one log line or message: escaped to printable ASCII (newlines, NUL
    and bidi controls included) and cut to about `limit` characters, saying how long it was."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return ascii(text)
    return f"{text[:limit]!a}... ({len(text)} characters)"


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


def traffic_share(stage: Stage, traffic: float | None) -> float | None:
    """The traffic share a version moving to `stage` gets, by the rules every backend follows.

    Percent of live traffic for canary (required) or of requests mirrored for shadow
    (default 100); no other stage takes one. InvalidRequestError otherwise.
    """
    if traffic is None:
        if stage is Stage.CANARY:
            raise InvalidRequestError("a canary needs a traffic share (percent of live traffic)")
        return 100.0 if stage is Stage.SHADOW else None
    if stage not in (Stage.CANARY, Stage.SHADOW):
        raise InvalidRequestError(
            f"a traffic share is only for canary and shadow, not {stage.value}"
        )
    if isinstance(traffic, bool) or not isinstance(traffic, int | float):
        raise InvalidRequestError(f"traffic must be a number, got {traffic!r}")
    if not 0 <= traffic <= 100:  # also refuses NaN
        raise InvalidRequestError(f"traffic must be between 0 and 100 percent, got {traffic:g}")
    return float(traffic)


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
    # Percent of live traffic (canary) or of requests mirrored (shadow); None for other stages.
    traffic: float | None = None
    # The reference profile of the training data (monitor.profile's JSON form), if stored.
    reference: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "stage": self.stage.value,
            "traffic": self.traffic,
            "created": self.created,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "description": self.description,
            "tags": dict(self.tags),
            "reference": self.reference,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            name=data["name"],
            version=int(data["version"]),
            sha256=data["sha256"],
            size=int(data["size"]),
            stage=Stage(data["stage"]),
            created=float(data["created"]),
            inputs=tuple(TensorSignature.from_json(s) for s in data.get("inputs", ())),
            outputs=tuple(TensorSignature.from_json(s) for s in data.get("outputs", ())),
            description=data.get("description", ""),
            tags=dict(data.get("tags") or {}),
            traffic=data.get("traffic"),
            reference=data.get("reference"),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """One audited stage change: who moved which version from where to where, and why."""

    name: str
    version: int
    from_stage: Stage
    to_stage: Stage
    traffic: float | None
    actor: str
    at: float
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "from_stage": self.from_stage.value,
            "to_stage": self.to_stage.value,
            "traffic": self.traffic,
            "actor": self.actor,
            "at": self.at,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transition:
        return cls(
            name=data["name"],
            version=int(data["version"]),
            from_stage=Stage(data["from_stage"]),
            to_stage=Stage(data["to_stage"]),
            traffic=data.get("traffic"),
            actor=data["actor"],
            at=float(data["at"]),
            reason=data.get("reason", ""),
        )
