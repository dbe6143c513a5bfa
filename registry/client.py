"""What the gateway and the CLI need of a model registry, wherever it lives.

Three backends implement `RegistryClient`: the embedded store (a directory), a registry
server (`http://` or `https://`, see registry/server.py) and an MLflow Model Registry
(`mlflow+http://`). `open_registry` picks one from a location string, and refuses any
other `scheme://` rather than taking it for a directory name. The interface is synchronous
and blocking; the gateway calls it from a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import unquote, urlsplit

import httpx

from modelgate.registry.errors import LocationError
from modelgate.registry.signature import read_signature
from modelgate.registry.types import ModelVersion, Stage, Transition

LOCATION_FORMS = (
    "a store directory, file:///path/to/store, http(s)://host:port (a `modelgate registry "
    "serve`) or mlflow+http(s)://host:port (an MLflow tracking server)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

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
        model: bytes | Path,
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
        """Store `model` (its bytes, or a file's path) as the next version of `name` (1, 2,
        ...), optionally in a stage (by the rules of `transition`)."""
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

    def _unreachable(self, url: str, exc: httpx.TransportError) -> LocationError | None:
        """A LocationError when `exc` says that `url`'s host does not exist (a name no DNS
        server knows) or that its certificate is not trusted, which waiting does not fix;
        None for every other transport failure."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME:
                host = urlsplit(url).hostname
                return LocationError(f"registry {url}: there is no host named {host!r}")
            if isinstance(cause, ssl.SSLCertVerificationError):
                return LocationError(
                    f"registry {url}: its TLS certificate is not trusted "
                    f"({cause.verify_message}); for a private CA, set SSL_CERT_FILE to the "
                    "CA's PEM file"
                )
            cause = cause.__cause__ or cause.__context__
        return None

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


def local_store(location: str) -> Path | None:
    """The store directory `location` names, or None for a registry reached over HTTP.

    LocationError for a `scheme://` that is none of `LOCATION_FORMS` (a directory named
    `mlflow:` is never what was meant) and for a `file://` URL naming another host.
    """
    found = _SCHEME.match(location)
    if found is None:
        return Path(location)
    scheme = found.group(1).lower()
    if scheme in ("http", "https", "mlflow+http", "mlflow+https"):
        return None
    if scheme == "file":
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise LocationError(f"{location!r}: a file:// location is file:///path/to/store")
        return Path(unquote(parts.path))
    hint = " (for MLflow: mlflow+http://host:port)" if scheme == "mlflow" else ""
    raise LocationError(f"unknown registry location {location!r}{hint}; use {LOCATION_FORMS}")


def open_registry(
    location: str, *, token: str | None = None, create: bool = False
) -> RegistryClient:
    """The registry at `location` (one of `LOCATION_FORMS`); LocationError if it names none.

    A store directory must hold a registry already, unless `create`; nothing is contacted
    over the network until the first call.
    """
    path = local_store(location)
    if path is not None:
        from modelgate.registry.store import RegistryStore

        return RegistryStore(path, create=create)
    if location.lower().startswith("mlflow+"):
        from modelgate.registry.mlflow import MlflowRegistry

        return MlflowRegistry(location[len("mlflow+") :], token=token)
    from modelgate.registry.remote import RemoteRegistry

    return RemoteRegistry(location, token=token)


def with_artifact_facts(registry: RegistryClient, version: ModelVersion) -> ModelVersion:
    """`version` with its artifact's sha256, size and signature, read from the artifact
    where the registry did not record them (MLflow records none: a size of 0 says so)."""
    if version.size > 0:
        return version
    data = registry.read_artifact(version)
    inputs, outputs = read_signature(data)
    return dataclasses.replace(
        version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=inputs,
        outputs=outputs,
    )
