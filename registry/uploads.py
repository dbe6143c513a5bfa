"""Uploads that were never registered expire.

A registry server keeps each upload in its own `.incoming-*` folder in the store directory
until a version is registered from it. An upload nobody registers (a client that died
between the two requests, or one filling the disk) is deleted once it is older than the
server's upload TTL: every server sweeps its own folder periodically, and at startup the
folders of every server that ran on the store, so that a server killed with SIGKILL leaves
nothing behind for long. An unfinished upload (`.tmp-*`) ages by its last write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

INCOMING_PREFIX = ".incoming-"


def incoming_folders(store_root: Path) -> list[Path]:
    """The upload folders of every registry server that ran on the store at `store_root`."""
    return sorted(p for p in store_root.glob(f"{INCOMING_PREFIX}*") if p.is_dir())


def sweep_uploads(
    folders: Iterable[Path], ttl: float, *, remove_folders: bool = False, now: float | None = None
) -> int:
    """Delete the files in `folders` last written more than `ttl` seconds ago (and, with
    `remove_folders`, the folders left empty that are that old too); how many files went."""
    cutoff = (time.time() if now is None else now) - ttl
    removed = 0
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            idle = folder.stat().st_mtime < cutoff  # before unlinking touches it
            for entry in os.scandir(folder):
                # Another sweeper or a registration may take the file first: both are fine.
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
            if remove_folders and idle:
                with contextlib.suppress(OSError):  # not empty: still in use
                    folder.rmdir()
    if removed:
        log.info("deleted %d upload(s) never registered within %g s", removed, ttl)
    return removed
