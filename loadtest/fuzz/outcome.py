"""Judging a fuzz case: its answer's class, whether it is a failure, and its signature.

Classes: ok (2xx / OK); refused (4xx and 501 / INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED
...: the client's mistake, named); shed (503, 504 / UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED: documented overload and readiness answers). Failures: 5xx (any other
5xx / INTERNAL, UNKNOWN ...), reset (the connection dropped), hang (no answer within the
case timeout), crash (the server exited), traceback (the server logged one), wrong (a good
request's answer was not the right one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.fuzz.wire import Reply

CLASSES = ("ok", "refused", "shed")
FAILURES = ("5xx", "reset", "hang", "crash", "traceback", "wrong")

_REFUSED_CODES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNIMPLEMENTED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}
_SHED_CODES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
# What grpcio says when the connection itself failed, rather than the server answering.
_GRPC_TRANSPORT = re.compile(r"Socket closed|Connection reset|failed to connect|recvmsg", re.I)
_SHED_STATUSES = {503, 504}


def classify(reply: Reply, registry: bool = False) -> tuple[str, str | None]:
    """(class or failure name, signature when it is a failure)."""
    if reply.transport is not None:
        if reply.transport == "unsent":
            return "unsent", None
        return reply.transport, f"{reply.transport}: {_normalise(reply.detail)}"
    if reply.status is not None:
        status = reply.status
        if 200 <= status < 300:
            return "ok", None
        if 400 <= status < 500 or status == 501:
            return "refused", None
        if status in _SHED_STATUSES or (registry and status == 502):
            return "shed", None
        return "5xx", f"HTTP {status}: {_normalise(reply.body.decode('utf-8', 'replace'))}"
    code = reply.code or "UNKNOWN"
    if code == "OK":
        return "ok", None
    if code in _REFUSED_CODES:
        return "refused", None
    if code in _SHED_CODES:
        if code == "UNAVAILABLE" and _GRPC_TRANSPORT.search(reply.detail):
            return "reset", f"reset: {_normalise(reply.detail)}"
        return "shed", None
    return "5xx", f"{code}: {_normalise(reply.detail)}"


def _normalise(text: str, limit: int = 160) -> str:
    """A message with its numbers, paths and quoted values blanked, so like failures group."""
    text = re.sub(r"'[^']{0,200}'|\"[^\"]{0,200}\"", "'…'", text.strip())
    text = re.sub(r"/[^\s:]+", "/…", text)
    text = re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d*)?", "N", text)
    text = re.sub(r"\b[KMGTPE]iB\b", "<size>", text)  # "Unable to allocate N GiB / PiB"
    return " ".join(text.split())[:limit]


_FRAME = re.compile(r'^\s+File "([^"]+)", line (\d+), in (\S+)', re.M)


def traceback_signature(text: str) -> str | None:
    """`ExceptionType: message @ file:line in function` of the first traceback in `text`
    (the innermost frame; the message normalised), or None when `text` has none."""
    start = text.find("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = text[start:].splitlines()[1:]
    frames, exception = [], "?"
    for line in lines:
        found = _FRAME.match(line)
        if found:
            frames.append(found)
        elif line and not line[0].isspace():
            exception = line
            break
    where = ""
    if frames:
        last = frames[-1]
        where = f" @ {Path(last.group(1)).name}:{last.group(2)} in {last.group(3)}"
    return f"{_normalise(exception)}{where}"


_ERROR_LINE = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) \S+: (.*)$", re.M)


def error_signature(text: str) -> str | None:
    """Like `traceback_signature` for an error logged without the "Traceback" header (the
    message of its first ERROR line and the innermost frame printed after it), or None."""
    found = _ERROR_LINE.search(text)
    if found is None:
        return None
    frames = list(_FRAME.finditer(text, found.end()))
    where = ""
    if frames:
        last = frames[-1]
        where = f" @ {Path(last.group(1)).name}:{last.group(2)} in {last.group(3)}"
    return f"{_normalise(found.group(1))}{where}"


def traceback_text(text: str, limit: int = 6000) -> str:
    """The first traceback in `text` with the log line before it, for a saved case."""
    start = text.find("Traceback (most recent call last):")
    if start < 0:
        return ""
    begin = text.rfind("\n", 0, max(start - 1, 0)) + 1
    return text[begin : begin + limit]


class LogWatch:
    """Follows a server's log file: the bytes each case added and whether they hold a
    traceback (logging is synchronous, so a request's traceback is written before its
    answer is sent; a background task's may land one case late)."""

    READ_LIMIT = 256 << 10  # new bytes read per case; beyond it only counted

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def take(self) -> tuple[int, str]:
        """(bytes added since the last call, up to READ_LIMIT of them as text)."""
        size = self._size()
        if size < self._offset:  # a new log (the server restarted)
            self._offset = 0
        added = size - self._offset
        if not added:
            return 0, ""
        with self.path.open("rb") as log:
            log.seek(self._offset)
            text = log.read(min(added, self.READ_LIMIT)).decode("utf-8", "replace")
        self._offset = size
        return added, text


@dataclass
class Tally:
    """One decoder's counts: cases, classes, failures, log bytes, good checks, signatures."""

    decoder: str
    cases: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    log_bytes: int = 0
    good_checks: int = 0
    seconds: float = 0.0
    unsent: int = 0
    signatures: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)  # signature -> first case index

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def fail(self, signature: str, index: int) -> bool:
        """Count a failure; True when its signature is new."""
        new = signature not in self.signatures
        self.signatures[signature] = self.signatures.get(signature, 0) + 1
        self.examples.setdefault(signature, index)
        return new
