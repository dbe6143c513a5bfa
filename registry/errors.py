"""Registry errors: one family, so every client (embedded, HTTP, MLflow) fails the same way.

The registry HTTP server maps each class to its status (400, 401/403, 404, 409, 502) and
the HTTP client maps the status back, so a caller never cares where the registry lives.
"""

from __future__ import annotations


class RegistryError(Exception):
    """A registry request that cannot be carried out.

    `code` names the kind of error for programs: the registry server sends it beside the
    message and the HTTP client turns it back into the same class.
    """

    code = "registry_error"


class InvalidRequestError(RegistryError, ValueError):
    """The request itself is wrong: a bad name, stage or traffic share."""

    code = "invalid_request"


class NotFoundError(RegistryError):
    """An unknown model, version or artifact."""

    code = "not_found"


class ConflictError(RegistryError):
    """The request disagrees with the registry's current state (e.g. canary shares over 100)."""

    code = "conflict"


class AuthError(RegistryError):
    """Missing or wrong credentials for the registry."""

    code = "auth"


class ArtifactIntegrityError(RegistryError):
    """An artifact's bytes do not match the sha256 recorded for it."""

    code = "artifact_integrity"


class UnavailableError(RegistryError):
    """The registry cannot be reached right now; worth retrying later."""

    code = "unavailable"


class SignatureMismatchError(ConflictError):
    """A version's inputs or outputs differ from the production version's, and the change
    was not allowed explicitly; `differences` names each one."""

    code = "signature_mismatch"

    def __init__(self, message: str, differences: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.differences = differences


class LocationError(RegistryError):
    """The location names no registry: an unknown scheme, a directory without a store, a
    host that does not exist, a server that is not a registry of the kind named. Retrying
    does not help; the location must be fixed."""

    code = "location"
