"""Model files on disk, handled in slices so that no step needs a whole model in memory.

`staged` copies a model (bytes, or a file such as a registry server's upload) into a
temporary file beside where it will live, hashing it on the way; the registry checks that
copy, the very bytes it will keep, and `install` renames it into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SLICE = 1 << 20  # bytes read, hashed and written at a time


@dataclass(frozen=True, slots=True)
class Staged:
    """A model copied to `path`, with its sha256 and size."""

    path: Path
    sha256: str
    size: int


def file_sha256(path: Path) -> str:
    """The sha256 of the file at `path`, read a slice at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(SLICE):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged(folder: Path, source: bytes | Path) -> Iterator[Staged]:
    """A temporary copy of `source` in `folder`, fsynced; deleted on leaving unless
    `install` moved it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                digest.update(source)
                out.write(source)
                size = len(source)
            else:
                with source.open("rb") as file:
                    while chunk := file.read(SLICE):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        yield Staged(Path(tmp), digest.hexdigest(), size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def install(copy: Staged, path: Path) -> None:
    """Rename the staged copy to `path` unless an intact copy is there already (a damaged
    one is replaced); readers see the whole file or none."""
    with contextlib.suppress(FileNotFoundError):
        if file_sha256(path) == copy.sha256:
            return
    os.replace(copy.path, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss too
    finally:
        os.close(directory)
