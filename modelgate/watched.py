"""What files say, taken up again when they change, without a restart: the servers'
certificates (modelgate/tls.py) and token files (modelgate/tokens.py).

A server asks for the value when it needs it (a handshake, a request); at most once per
`RECHECK_SECONDS` that look also compares the files' inode, size and modification time with
the last look (a stat each; a renewal that swaps a symlink, as Kubernetes does with mounted
secrets, changes the inode). When they changed, the files are loaded again. Files that do
not load (a key written before its certificate, a token file saved half-edited) leave the
previous value in use, are logged once (the loader's one-line message, which must hold no
secret) and are tried again once they change again. So a change is in use from the first
look at least `RECHECK_SECONDS` after it was written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# Seconds between two looks at the files' modification times.
RECHECK_SECONDS = 1.0

T = TypeVar("T")

Stamp = tuple[tuple[int, int, int] | None, ...]


class Watched(Generic[T]):
    """The value `load` makes of `paths`, loaded again when they change (see above).

    `load` raises ValueError (one line, no secret) for files that cannot serve; the first
    load's error goes to the caller, later ones are logged followed by `keeping`. Shared by
    threads (the event loop, grpcio's, a metrics thread): one of them loads, the others go
    on with the previous value meanwhile.
    """

    def __init__(
        self,
        paths: Sequence[Path | None],
        load: Callable[[], T],
        *,
        taken_up: str,
        keeping: str,
    ) -> None:
        self._paths = tuple(paths)
        self._load = load
        self._taken_up = taken_up
        self._keeping = keeping
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)  # before the load: a write during it is seen next
        self._value = load()
        self._checked = time.monotonic()
        self.generation = 0  # how many times changed files were taken up

    @property
    def value(self) -> T:
        """The value of the last good load (without looking at the files)."""
        return self._value

    def current(self) -> T:
        """The value, after a look at the files when one is due."""
        self.reload_if_changed()
        return self._value

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last look (at most one look per
        `RECHECK_SECONDS`); True when a changed value was taken up."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is looking: go on with what there is
        try:
            if now - self._checked < RECHECK_SECONDS:
                return False
            self._checked = now
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # a load that fails is tried again once the files change again
            try:
                value = self._load()
            except ValueError as exc:
                log.warning("%s; %s", exc, self._keeping)
                return False
            self._value = value
            self.generation += 1
        finally:
            self._lock.release()
        log.info("%s", self._taken_up)
        return True


def _stamp(paths: Sequence[Path | None]) -> Stamp:
    """What tells that a file changed: its inode, size and modification time."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        stamps.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)
