"""What the gateway and the CLI need of a model registry, wherever it lives.

Three backends implement `RegistryClient`: the embedded store (a directory), a registry
server (`http://` or `https://`, see registry/server.py) and an MLflow Model Registry
(`mlflow+http://`). `open_registry` picks one from a location string. The interface is
synchronous and blocking; the gateway calls it from a worker thread.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol, Self

import httpx

from modelgate.registry.types import ModelVersion, Stage, Transition

# Stages whose versions a gateway loads; the others are never served.
SERVED_STAGES = frozenset({Stage.PRODUCTION, Stage.CANARY, Stage.SHADOW, Stage.STAGING})


class RegistryClient(Protocol):
    """A model registry as seen by a gateway (reads) and by rollout tools (transitions)."""

    def generation(self) -> str:
        """A token that changes whenever any version or stage does; cheap to poll."""
        ...

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`, or of all models), ordered by name then version."""
        ...

    def get(self, name: str, version: int) -> ModelVersion: ...

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The model file of `version`, verified against its sha256 before it is returned."""
        ...

    def register(
        self,
        name: str,
        model: bytes,
        *,
        stage: Stage = Stage.NONE,
        traffic: float | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        reference: dict[str, Any] | None = None,
        actor: str = "",
        reason: str = "",
        allow_signature_change: bool = False,
    ) -> ModelVersion:
        """Store `model` as the next version of `name` (1, 2, ...), optionally in a stage
        (by the rules of `transition`)."""
        ...

    def transition(
        self,
        name: str,
        version: int,
        stage: Stage,
        *,
        traffic: float | None = None,
        actor: str = "",
        reason: str = "",
        keep: bool = False,
        allow_signature_change: bool = False,
    ) -> ModelVersion:
        """Move a version to `stage` (with a traffic share for canary/shadow), audited.

        To canary, shadow or production, a version whose inputs or outputs differ from the
        production version's is refused (SignatureMismatchError) unless
        `allow_signature_change`, with a `reason` for the audit trail.
        """
        ...

    def history(self, name: str | None = None) -> list[Transition]:
        """The audit trail of stage changes, oldest first."""
        ...


class HttpRegistry:
    """A registry reached over HTTP: owns its httpx client. Close it, or use it as a
    context manager; a gateway keeps one for its lifetime."""

    _http: httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_registry(location: str, *, token: str | None = None) -> RegistryClient:
    """The registry at `location`: a directory, an `http(s)://` server or `mlflow+http(s)://`."""
    if location.startswith(("mlflow+http://", "mlflow+https://")):
        from modelgate.registry.mlflow import MlflowRegistry

        return MlflowRegistry(location.removeprefix("mlflow+"), token=token)
    if location.startswith(("http://", "https://")):
        from modelgate.registry.remote import RemoteRegistry

        return RemoteRegistry(location, token=token)
    from modelgate.registry.store import RegistryStore

    return RegistryStore(location)
