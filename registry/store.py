"""The embedded registry: SQLite metadata plus a content-addressed artifact store.

Layout of a store directory:
    registry.db            SQLite in WAL mode: readers (gateways) never block the writer (CLI)
    artifacts/sha256/<hex> model files named by their content hash, written atomically

Rules every write follows: traffic shares are percentages in 0..100 and only for canary
(required; the canaries of a model share at most 100) and shadow (mirrored, default 100);
leaving those stages clears the share. One production version per model: promoting another
archives it (or with `keep`, moves it to staging), and a unique index backs that up against
writers that bypass this module. Every stage change, including one to the stage a version
already has, is an audit record in `transitions`.

A version moving to canary, shadow or production must fit the production version's
signature (`signature.check_fit`) unless the change is allowed with a reason: then the
audit record says what changed and why, and the version gets the tag
`modelgate.signature_change` (the reason), which tells gateways to route it all the same.
A production version whose allowed change alters the signature archives the canaries and
shadows that no longer fit it, each with an audit record naming the difference: they were
tried against the old interface, and clients are moving to the new one. With no production
version there is nothing to compare: the first one sets the signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort

from modelgate.monitor.profile import ReferenceProfile
from modelgate.registry.artifacts import install, staged
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    ConflictError,
    InvalidRequestError,
    LocationError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from modelgate.registry.model_check import ONNX_FORMAT_ONLY
from modelgate.registry.signature import (
    InvalidModelError,
    allowed_reason,
    check_allowance,
    check_fit,
    listing,
    read_signature,
    signature_differences,
)
from modelgate.registry.types import (
    SIGNATURE_CHANGE_TAG,
    ModelVersion,
    Stage,
    TensorSignature,
    Transition,
    check_model_name,
    traffic_share,
)

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
-- At most one production version per model, even for a writer that bypasses this module.
CREATE UNIQUE INDEX IF NOT EXISTS one_production_per_model
    ON model_versions (name) WHERE stage = 'production';
CREATE TABLE IF NOT EXISTS transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    from_stage TEXT NOT NULL,
    to_stage   TEXT NOT NULL,
    traffic    REAL,
    actor      TEXT NOT NULL,
    at         REAL NOT NULL,
    reason     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS transitions_by_name ON transitions (name, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""


class RegistryStore:
    """The embedded registry in one directory; safe for several processes at once.

    Every write runs in one `BEGIN IMMEDIATE` transaction that also appends its audit
    records and bumps the generation counter, so a reader sees all of a change or none.
    A writer waits up to `lock_timeout` seconds for another one to finish, then fails
    with UnavailableError.

    A directory is a store when it holds `registry.db`. Opening one that does not is a
    LocationError, so that a mistyped path is never taken for an empty registry; `create`
    makes the directory and the store instead.
    """

    def __init__(
        self, root: Path | str, *, create: bool = False, lock_timeout: float = 30.0
    ) -> None:
        self.root = Path(root)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise LocationError(f"{self.root} is a file, not a store directory") from None
        elif not (self.root / "registry.db").is_file():
            raise LocationError(f"no registry at {self.root}{_missing(self.root)}")
        self._artifacts = self.root / "artifacts" / "sha256"
        self._db_path = self.root / "registry.db"
        self._lock_timeout = lock_timeout
        with self._connect() as db:
            present = {
                row[0]
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?)",
                    ("one_production_per_model", "transitions_by_name", "meta"),
                )
            }
            if len(present) < 3:
                # Readers of an up-to-date store never take the write lock here.
                try:
                    db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                except sqlite3.OperationalError as exc:
                    raise _locked(exc) from None
                except sqlite3.IntegrityError as exc:
                    raise ConflictError(f"{self._db_path}: {exc}") from None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._db_path, timeout=self._lock_timeout, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self._lock_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the generation; rolled back on any error."""
        with self._connect() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _locked(exc) from None
            try:
                yield db
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ConflictError(
                        f"the registry refused the change ({exc}); another writer may have "
                        "changed it at the same time"
                    ) from None
                if isinstance(exc, sqlite3.OperationalError):
                    raise _locked(exc) from None
                raise

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
        """Store `model` (its bytes, or a file's path) as the next version of `name` (1, 2,
        ...) and return it.

        The model must load in ONNX Runtime. A stage other than none is a transition from
        none, with the same rules (signature included) and audit record as `transition`.
        """
        check_model_name(name)
        stage = _check_stage(stage)
        traffic = traffic_share(stage, traffic)
        check_allowance(allow_signature_change, reason)
        # Checked on the copy the store keeps, streamed there: the upload itself is never
        # read whole (docs/hardening.md, "Registry writers", says what the checks hold).
        with staged(self._artifacts, model) as copy:
            inputs, outputs = read_signature(copy.path)
            _check_loads(copy.path)
            if reference is not None:
                # Stored as read back: a client's unknown fields do not reach the store.
                reference = _check_reference(reference, inputs).to_json()
            tags = _check_tags(tags)
            install(copy, self._artifacts / copy.sha256)
        sha = copy.sha256
        with self._write() as db:
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
            version = latest + 1
            db.execute(
                "INSERT INTO model_versions (name, version, sha256, size, stage, created, "
                "inputs, outputs, description, tags, reference) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    sha,
                    copy.size,
                    Stage.NONE.value,
                    time.time(),
                    json.dumps([s.to_json() for s in inputs]),
                    json.dumps([s.to_json() for s in outputs]),
                    description,
                    json.dumps(tags, sort_keys=True),
                    None if reference is None else json.dumps(reference).encode(),
                ),
            )
            if stage is not Stage.NONE:
                _move(
                    db, name, version, Stage.NONE, stage, traffic, actor, reason,
                    keep=False, allow=allow_signature_change,
                )  # fmt: skip
        return self.get(name, version)

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
        """Move a version to `stage`, audited; see the module's rules for traffic shares
        and signatures (SignatureMismatchError unless `allow_signature_change`, which
        needs a `reason`).

        Moving to production sends the current production version to archived, or to
        staging with `keep` (still loaded, for explicit requests and quick rollback).
        """
        stage = _check_stage(stage)
        traffic = traffic_share(stage, traffic)
        check_allowance(allow_signature_change, reason)
        with self._write() as db:
            row = db.execute(
                "SELECT stage FROM model_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                raise _not_found(db, name, version)
            _move(
                db, name, version, Stage(row["stage"]), stage, traffic, actor, reason,
                keep=keep, allow=allow_signature_change,
            )  # fmt: skip
        return self.get(name, version)

    # --- reads ------------------------------------------------------------------------------

    def generation(self) -> str:
        """A counter that changes whenever anything in the registry does."""
        with self._connect() as db:
            (value,) = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return str(value)

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`, or of all models), ordered by name then version."""
        rows = self._select("model_versions", name, order="name, version")
        return [_version_from_row(row) for row in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version; NotFoundError for an unknown model or version."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is None:
                raise _not_found(db, name, version)
        return _version_from_row(row)

    def history(self, name: str | None = None) -> list[Transition]:
        """The audit trail of stage changes (of `name`, or of all models), oldest first."""
        rows = self._select("transitions", name, order="id")
        return [
            Transition(
                name=row["name"],
                version=row["version"],
                from_stage=Stage(row["from_stage"]),
                to_stage=Stage(row["to_stage"]),
                traffic=row["traffic"],
                actor=row["actor"],
                at=row["at"],
                reason=row["reason"],
            )
            for row in rows
        ]

    def _select(self, table: str, name: str | None, *, order: str) -> list[sqlite3.Row]:
        """Every row of `table` (of model `name`, if given) in `order`."""
        where, args = ("", ()) if name is None else (" WHERE name = ?", (name,))
        with self._connect() as db:
            return db.execute(f"SELECT * FROM {table}{where} ORDER BY {order}", args).fetchall()

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The model file of `version`, verified against its recorded sha256."""
        try:
            data = (self._artifacts / version.sha256).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"artifact {version.sha256} of {version.name} v{version.version} is missing"
            ) from None
        if hashlib.sha256(data).hexdigest() != version.sha256:
            raise ArtifactIntegrityError(
                f"artifact of {version.name} v{version.version} does not match its sha256"
            )
        return data


def _move(
    db: sqlite3.Connection,
    name: str,
    version: int,
    from_stage: Stage,
    to_stage: Stage,
    traffic: float | None,
    actor: str,
    reason: str,
    *,
    keep: bool,
    allow: bool,
) -> None:
    """Apply one checked transition inside the caller's write transaction, with its audit."""
    now = time.time()
    changed = _check_signature(db, name, version, to_stage, allow, reason)
    if changed:
        reason = allowed_reason(changed, reason)
    if to_stage is Stage.CANARY:
        assert traffic is not None
        (others,) = db.execute(
            "SELECT COALESCE(SUM(traffic), 0) FROM model_versions "
            "WHERE name = ? AND stage = ? AND version != ?",
            (name, Stage.CANARY.value, version),
        ).fetchone()
        if others + traffic > 100:
            raise ConflictError(
                f"canary shares of {name!r} would add up to {others + traffic:g}% "
                f"(other canaries hold {others:g}%); the most is 100%"
            )
    if to_stage is Stage.PRODUCTION:
        previous = db.execute(
            "SELECT version, stage FROM model_versions "
            "WHERE name = ? AND stage = ? AND version != ?",
            (name, Stage.PRODUCTION.value, version),
        ).fetchone()
        if previous is not None:
            demoted = Stage.STAGING if keep else Stage.ARCHIVED
            db.execute(
                "UPDATE model_versions SET stage = ?, traffic = NULL "
                "WHERE name = ? AND version = ?",
                (demoted.value, name, previous["version"]),
            )
            _audit(
                db, name, previous["version"], Stage.PRODUCTION, demoted, None, actor, now,
                f"replaced by version {version}" + (f": {reason}" if reason else ""),
            )  # fmt: skip
        if changed:
            _archive_misfits(db, name, version, actor, now)
    db.execute(
        "UPDATE model_versions SET stage = ?, traffic = ? WHERE name = ? AND version = ?",
        (to_stage.value, traffic, name, version),
    )
    _audit(db, name, version, from_stage, to_stage, traffic, actor, now, reason)


def _check_signature(
    db: sqlite3.Connection, name: str, version: int, to_stage: Stage, allow: bool, reason: str
) -> tuple[str, ...]:
    """How `version` differs from the production version it would serve beside or replace
    (checked, see `check_fit`); an allowed difference also tags the version with `reason`."""
    if to_stage not in (Stage.CANARY, Stage.SHADOW, Stage.PRODUCTION):
        return ()
    production = db.execute(
        "SELECT * FROM model_versions WHERE name = ? AND stage = ? AND version != ?",
        (name, Stage.PRODUCTION.value, version),
    ).fetchone()
    if production is None:
        return ()
    candidate = db.execute(
        "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    theirs, ours = _version_from_row(production), _version_from_row(candidate)
    differences = check_fit(
        theirs, ours, name=name, version=version, production_version=theirs.version,
        allow=allow,
    )  # fmt: skip
    if differences:
        tags = {**ours.tags, SIGNATURE_CHANGE_TAG: reason}
        db.execute(
            "UPDATE model_versions SET tags = ? WHERE name = ? AND version = ?",
            (json.dumps(tags, sort_keys=True), name, version),
        )
    return differences


def _archive_misfits(
    db: sqlite3.Connection, name: str, version: int, actor: str, at: float
) -> None:
    """Archive the canaries and shadows that do not fit `version`, the new production
    version whose signature change was allowed."""
    production = _version_from_row(
        db.execute(
            "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
    )
    rows = db.execute(
        "SELECT * FROM model_versions WHERE name = ? AND stage IN (?, ?) AND version != ?",
        (name, Stage.CANARY.value, Stage.SHADOW.value, version),
    ).fetchall()
    for row in rows:
        other = _version_from_row(row)
        differences = signature_differences(production, other, f"version {other.version}")
        if not differences:
            continue
        db.execute(
            "UPDATE model_versions SET stage = ?, traffic = NULL WHERE name = ? AND version = ?",
            (Stage.ARCHIVED.value, name, other.version),
        )
        _audit(
            db, name, other.version, other.stage, Stage.ARCHIVED, None, actor, at,
            f"does not fit the signature of production version {version}: "
            f"{listing(differences)}",
        )  # fmt: skip


def _audit(
    db: sqlite3.Connection,
    name: str,
    version: int,
    from_stage: Stage,
    to_stage: Stage,
    traffic: float | None,
    actor: str,
    at: float,
    reason: str,
) -> None:
    db.execute(
        "INSERT INTO transitions (name, version, from_stage, to_stage, traffic, actor, at, "
        "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, version, from_stage.value, to_stage.value, traffic, actor, at, reason),
    )


def _check_stage(stage: Stage) -> Stage:
    if not isinstance(stage, Stage):
        raise InvalidRequestError(f"{stage!r} is not a Stage")
    return stage


def _check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidRequestError(f"tags map non-empty strings to strings, got {key!r}")
    return tags


def _check_loads(model: Path) -> None:
    """Refuse a model ONNX Runtime cannot load, before anything is written."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry(*ONNX_FORMAT_ONLY)
    try:
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"the ONNX model does not load in ONNX Runtime: {exc}") from None


def _check_reference(
    reference: dict[str, Any], inputs: tuple[TensorSignature, ...]
) -> ReferenceProfile:
    """The profile in `reference`, if this code can read it and its input features belong
    to the model's inputs."""
    try:
        profile = ReferenceProfile.from_json(reference)
    except ValueError as exc:
        raise InvalidRequestError(f"reference profile: {exc}") from None
    names = {s.name for s in inputs}
    strangers = sorted({f.tensor for f in profile.inputs} - names)
    if strangers:
        shown = [name[:80] for name in strangers[:3]]  # the client's names: a few, cut short
        raise InvalidRequestError(
            f"the reference profile describes inputs {shown} the model does not have "
            f"(its inputs: {sorted(names)})"
        )
    return profile


def _not_found(db: sqlite3.Connection, name: str, version: int) -> NotFoundError:
    known = db.execute("SELECT 1 FROM model_versions WHERE name = ? LIMIT 1", (name,)).fetchone()
    if known is None:
        return NotFoundError(f"unknown model {name!r}")
    return NotFoundError(f"no version {version} of model {name!r}")


def _missing(root: Path) -> str:
    """Why `root` is no store, when it is not just absent."""
    if root.is_dir():
        return " (the directory has no registry.db)"
    if root.exists():
        return " (it is a file, not a directory)"
    return ""


def _locked(exc: sqlite3.OperationalError) -> RegistryError:
    if "locked" in str(exc) or "busy" in str(exc):
        return UnavailableError(
            "another process is writing to the registry and did not finish in time; try again"
        )
    return RegistryError(f"registry database error: {exc}")


def _version_from_row(row: sqlite3.Row) -> ModelVersion:
    reference = row["reference"]
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
        reference=None if reference is None else json.loads(reference),
    )
