"""The embedded registry: SQLite metadata plus a content-addressed artifact store.

Layout of a store directory:
    registry.db            SQLite in WAL mode: readers (gateways) never block the writer (CLI)
    artifacts/sha256/<hex> model files named by their content hash, written atomically
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from registry.errors import ArtifactIntegrityError, RegistryError
from registry.signature import read_signature
from registry.types import ModelVersion, Stage, TensorSignature

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    stage       TEXT NOT NULL,
    traffic     REAL,
    created     REAL NOT NULL,
    inputs      TEXT NOT NULL,
    outputs     TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '{}',
    reference   BLOB,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RegistryStore:
    """The embedded registry in one directory; safe for several processes at once."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._artifacts = self.root / "artifacts" / "sha256"
        self._db_path = self.root / "registry.db"
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # --- writes -----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: bytes,
        *,
        stage: Stage = Stage.NONE,
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> ModelVersion:
        """Store `model` as the next version of `name` (1, 2, ...) and return it."""
        if not name or "/" in name or name.strip() != name:
            raise RegistryError(f"invalid model name {name!r}")
        inputs, outputs = read_signature(model)
        sha = hashlib.sha256(model).hexdigest()
        path = self._artifacts / sha
        if not path.exists():
            _atomic_write(path, model)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
            version = latest + 1
            if stage is Stage.PRODUCTION:
                db.execute(
                    "UPDATE model_versions SET stage = ?, traffic = NULL "
                    "WHERE name = ? AND stage = ?",
                    (Stage.ARCHIVED.value, name, Stage.PRODUCTION.value),
                )
            db.execute(
                "INSERT INTO model_versions (name, version, sha256, size, stage, created, "
                "inputs, outputs, description, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    sha,
                    len(model),
                    stage.value,
                    time.time(),
                    json.dumps([s.to_json() for s in inputs]),
                    json.dumps([s.to_json() for s in outputs]),
                    description,
                    json.dumps(tags or {}, sort_keys=True),
                ),
            )
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        return self.get(name, version)

    # --- reads ------------------------------------------------------------------------------

    def generation(self) -> str:
        """A counter that changes whenever anything in the registry does."""
        with self._connect() as db:
            (value,) = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return str(value)

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        query = "SELECT * FROM model_versions"
        args: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            args = (name,)
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(query + " ORDER BY name, version", args).fetchall()
        return [_version_from_row(row) for row in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            raise RegistryError(f"no version {version} of model {name!r}")
        return _version_from_row(row)

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The model file of `version`, verified against its recorded sha256."""
        try:
            data = (self._artifacts / version.sha256).read_bytes()
        except FileNotFoundError:
            raise RegistryError(
                f"artifact {version.sha256} of {version.name} v{version.version} is missing"
            ) from None
        if hashlib.sha256(data).hexdigest() != version.sha256:
            raise ArtifactIntegrityError(
                f"artifact of {version.name} v{version.version} does not match its sha256"
            )
        return data


def _version_from_row(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        sha256=row["sha256"],
        size=row["size"],
        stage=Stage(row["stage"]),
        created=row["created"],
        inputs=tuple(TensorSignature.from_json(s) for s in json.loads(row["inputs"])),
        outputs=tuple(TensorSignature.from_json(s) for s in json.loads(row["outputs"])),
        description=row["description"],
        tags=json.loads(row["tags"]),
        traffic=row["traffic"],
    )
