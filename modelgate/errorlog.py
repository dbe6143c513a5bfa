"""How the servers (the gateway's front ends, the registry API) log the requests they do not
serve, so that no client decides how much the log grows.

A refused request (a client's mistake, or the service's 503/504) has already told the
client why: it is one DEBUG line, its message cut short (`--log-level debug` shows them).
An unexpected error is a bug in the server: one ERROR record with the innermost frames of
its traceback, never the whole of a deep one, and never more than a few hundred characters
of what the request contained.
"""

from __future__ import annotations

import logging
import traceback

# Characters of a request path or error message a log line keeps.
MAX_LOGGED_CHARS = 200
# Innermost frames of an unexpected error's traceback (a RecursionError has a thousand).
MAX_LOGGED_FRAMES = 8


def log_refused(log: logging.Logger, where: str, status: object, message: str) -> None:
    """One DEBUG line for a request answered with an error status."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("refused %s with %s: %s", _cut(where), status, _cut(message))


def log_unexpected(log: logging.Logger, where: str, exc: BaseException) -> None:
    """One ERROR record for an error no rule foresaw: its type, message and last frames."""
    frames = traceback.extract_tb(exc.__traceback__, limit=-MAX_LOGGED_FRAMES)
    log.error(
        "unexpected error serving %s: %s: %s\n%s",
        _cut(where),
        type(exc).__name__,
        _cut(str(exc)),
        "".join(frames.format()).rstrip(),
    )


def _cut(text: str) -> str:
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    return f"{text[:MAX_LOGGED_CHARS]}... ({len(text)} characters)"
