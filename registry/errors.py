"""Registry errors: one family, so every client (embedded, HTTP, MLflow) fails the same way.

The registry HTTP server maps each class to its status (400, 401/403, 404, 409, 502) and
the HTTP client maps the status back, so a caller never cares where the registry lives.
"""

from __future__ import annotations


class RegistryError(Exception):
    """A registry request that cannot be carried out."""


class InvalidRequestError(RegistryError, ValueError):
    """The request itself is wrong: a bad name, stage or traffic share."""


class NotFoundError(RegistryError):
    """An unknown model, version or artifact."""


class ConflictError(RegistryError):
    """The request disagrees with the registry's current state (e.g. canary shares over 100)."""


class AuthError(RegistryError):
    """Missing or wrong credentials for the registry."""


class ArtifactIntegrityError(RegistryError):
    """An artifact's bytes do not match the sha256 recorded for it."""


class UnavailableError(RegistryError):
    """The registry cannot be reached right now; worth retrying later."""
