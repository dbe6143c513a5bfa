"""A registry server (registry/server.py) as a `RegistryClient`, over HTTP/JSON with httpx.

Every failure is a registry error with the server's own message: the HTTP status picks the
class (400/413 invalid, 401/403 auth, 404 not found, 409 conflict, 502 artifact integrity;
the error's `code` a narrower one: `signature_mismatch`),
and a server that cannot be reached, times out or answers 5xx is `UnavailableError`, worth
retrying later. Artifacts are fetched by sha256 and verified here too, so neither a
corrupt store nor anything between the server and this client gets a wrong model loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from modelgate.registry.client import HttpRegistry
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    LocationError,
    NotFoundError,
    RegistryError,
    SignatureMismatchError,
    UnavailableError,
)
from modelgate.registry.types import ModelVersion, Stage, Transition, check_model_name

ERROR_BY_STATUS: dict[int, type[RegistryError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
}
# A server's error `code` that names a narrower class than its status does.
ERROR_BY_CODE: dict[str, type[RegistryError]] = {
    SignatureMismatchError.code: SignatureMismatchError,
}


class RemoteRegistry(HttpRegistry):
    """The registry served at `url` (`http(s)://host:port`); `token` for writes/protected reads.

    Blocking, like every `RegistryClient`; one instance may be shared between threads.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.url}/api/v1/", headers=headers, timeout=timeout)

    # --- reads ------------------------------------------------------------------------------

    def generation(self) -> str:
        return str(self._listing("generation")["generation"])

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        params = {"name": name} if name is not None else None
        document = self._listing("models", params=params)
        return [ModelVersion.from_json(v) for v in document["versions"]]

    def get(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.from_json(self._json("GET", _version_path(name, version)))

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The model file of `version`, fetched by its sha256 and verified before returning."""
        data = self._request("GET", f"artifacts/{version.sha256}").content
        actual = hashlib.sha256(data).hexdigest()
        if actual != version.sha256 or len(data) != version.size:
            raise ArtifactIntegrityError(
                f"artifact of {version.name} v{version.version} from {self.url} does not match "
                f"its sha256 {version.sha256} (got {actual}, {len(data)} bytes)"
            )
        return data

    def history(self, name: str | None = None) -> list[Transition]:
        params = {"name": name} if name is not None else None
        document = self._listing("history", params=params)
        return [Transition.from_json(t) for t in document["transitions"]]

    # --- writes -----------------------------------------------------------------------------

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
        """Upload `model` by its sha256 (unless the server has it), then register the version.

        The server records its token's name as the actor; `actor`, if given, is added as
        the person the token acts for.
        """
        check_model_name(name)  # before uploading what could not be registered
        if isinstance(model, Path):
            model = model.read_bytes()
        sha = hashlib.sha256(model).hexdigest()
        try:
            self._request("HEAD", f"artifacts/{sha}")
        except NotFoundError:
            self._request(
                "PUT",
                f"artifacts/{sha}",
                content=model,
                headers={"content-type": "application/octet-stream"},
            )
        document = self._json(
            "POST",
            f"models/{quote(name, safe='')}/versions",
            body={
                "sha256": sha,
                "stage": stage.value,
                "traffic": traffic,
                "description": description,
                "tags": tags or {},
                "reference": reference,
                "actor": actor,
                "reason": reason,
                "allow_signature_change": allow_signature_change,
            },
        )
        return ModelVersion.from_json(document)

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
        """Move a version to `stage`; the audit actor is the token's name (see `register`)."""
        document = self._json(
            "POST",
            f"{_version_path(name, version)}/transition",
            body={
                "stage": stage.value,
                "traffic": traffic,
                "keep": keep,
                "reason": reason,
                "actor": actor,
                "allow_signature_change": allow_signature_change,
            },
        )
        return ModelVersion.from_json(document)

    # --- transport --------------------------------------------------------------------------

    def _listing(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET one of the endpoints every registry server has: a 404 means that `url` is
        some other server (MLflow, a gateway, a typo'd port), not a missing model."""
        try:
            return self._json("GET", path, params=params)
        except NotFoundError:
            raise LocationError(
                f"{self.url} is not a modelgate registry server: GET /api/v1/{path} answered "
                f"404 (an MLflow server is mlflow+{self.url})"
            ) from None

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = self._request(
            method,
            path,
            params=params,
            content=None if body is None else orjson.dumps(body),
            headers=None if body is None else {"content-type": "application/json"},
        )
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise RegistryError(f"{self.url} answered {method} {path} with something not JSON")
        return document

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TimeoutException:
            raise UnavailableError(
                f"registry {self.url} did not answer {method} {path} within {self._timeout} s"
            ) from None
        except httpx.TransportError as exc:
            raise self._unreachable(self.url, exc) or UnavailableError(
                f"registry {self.url} is unreachable: {exc}"
            ) from None
        if response.is_success:
            return response
        raise _error_of(response, f"{method} {path}")


def _version_path(name: str, version: int) -> str:
    return f"models/{quote(name, safe='')}/versions/{int(version)}"


def _error_of(response: httpx.Response, what: str) -> RegistryError:
    """The registry error an unsuccessful response stands for, with the server's message."""
    status = response.status_code
    message = None
    try:
        document = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        message = document["error"]
    if message is None:
        snippet = response.text[:200].strip() if response.request.method != "HEAD" else ""
        message = f"{what}: HTTP {status} {response.reason_phrase}" + (
            f": {snippet}" if snippet else ""
        )
    # A 502 with our JSON error is the server's integrity check; from a proxy it is an outage.
    if status == 502 and document is not None:
        return ArtifactIntegrityError(message)
    if status >= 500:
        return UnavailableError(f"registry unavailable: {message}")
    code = document.get("code") if isinstance(document, dict) else None
    if isinstance(code, str) and code in ERROR_BY_CODE:
        return ERROR_BY_CODE[code](message)
    return ERROR_BY_STATUS.get(status, RegistryError)(message)
