"""The one transport-neutral error type of the serving core.

Front ends map `ErrorCode` to their own status codes with one table each; the core never
imports HTTP or gRPC status types.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """What went wrong, in the terms both protocols share (gRPC's canonical codes)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


# An error message quotes what the client sent (an input's name, say): it is cut at this
# many characters, so that it fits in a gRPC status (trailing metadata is limited) and a log.
MAX_MESSAGE_CHARS = 500


class InferenceError(Exception):
    """A request could not be served; `code` says why in protocol-neutral terms."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"InferenceError({self.code.name}, {self.message!r})"


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> InferenceError:
    return InferenceError(ErrorCode.NOT_FOUND, message)


def unavailable(message: str) -> InferenceError:
    return InferenceError(ErrorCode.UNAVAILABLE, message)
