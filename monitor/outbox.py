"""The retraining webhook's durable outbox: events waiting for delivery, and drift episodes.

One SQLite file (WAL, `synchronous=FULL`) holds two tables:
    events  every webhook event from enqueue until it is delivered or given up (`dead`);
            its id and body bytes are fixed at enqueue and reused on every attempt
    drift   per (model, version): drifting or clear, whether a drift_detected was sent for
            the current episode, and when the last one was sent (the cooldown)

`synchronous=FULL` makes every commit fsync the WAL, so an enqueued event survives a power
loss as well as a killed process; NORMAL would only survive the latter. Webhook events are
rare (a few per drift episode), so one fsync each costs nothing that matters.

Delivery claims an event by pushing its `next_attempt_at` one lease ahead in the same
transaction that picks it: several processes may share one outbox without sending an event
twice at the same time, and an event claimed by a process that was killed becomes due again
when the lease runs out. Events of one (model, version) leave in enqueue order: only the
oldest pending one is ever due. Times are wall-clock seconds (they must mean the same thing
after a restart), never monotonic ones.

The outbox holds at most `max_pending` pending events: a receiver down for long must not
fill the disk. A new event beyond that is dropped, not stored, and handed to `on_drop`; a
drift_detected dropped so leaves the version's cooldown untouched, so the next drifting
window tries again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    model           TEXT NOT NULL,
    version         TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         BLOB NOT NULL,
    created         REAL NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    delivered_at    REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (status, model, version);
CREATE TABLE IF NOT EXISTS drift (
    model          TEXT NOT NULL,
    version        TEXT NOT NULL,
    drifting       INTEGER NOT NULL,
    since          REAL,
    detected_event TEXT,
    detected_at    REAL,
    url            TEXT,
    PRIMARY KEY (model, version)
);
"""

_COLUMNS = (
    "id, type, model, version, url, payload, created, status, attempts, next_attempt_at, "
    "last_error, delivered_at"
)


@dataclasses.dataclass(frozen=True)
class OutboxEvent:
    """One webhook event as stored: `payload` is the exact body that is signed and sent."""

    id: str
    type: str
    model: str
    version: str
    url: str
    payload: bytes
    created: float
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    delivered_at: float | None = None


@dataclasses.dataclass(frozen=True)
class DriftEpisode:
    """The drift state of one model version, as the outbox last recorded it."""

    model: str
    version: str
    drifting: bool
    since: float | None  # when the current episode started
    detected_event: str | None  # the drift_detected sent for this episode, if any
    detected_at: float | None  # when the last drift_detected was sent (any episode)
    url: str | None  # where that drift_detected went


class Outbox:
    """The outbox in one SQLite file; safe for several threads and processes at once.

    Every write is one `BEGIN IMMEDIATE` transaction; a writer waits up to `lock_timeout`
    seconds for another, then sqlite3.OperationalError ("database is locked") is raised.
    """

    def __init__(
        self, path: Path | str, *, lock_timeout: float = 30.0, max_pending: int = 10_000
    ) -> None:
        if max_pending < 1:
            raise ValueError("the outbox must hold at least one pending event")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_timeout = lock_timeout
        self.max_pending = max_pending
        # Called (in the writing thread) with each event dropped because the outbox is full.
        self.on_drop: Callable[[OutboxEvent], None] = lambda event: None
        with self._connect() as db:
            db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=self._lock_timeout, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self._lock_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # --- enqueue ----------------------------------------------------------------------------

    def add(self, event: OutboxEvent) -> bool:
        """Store a pending event, durable when this returns; False if it was dropped."""
        with self._write() as db:
            return self._enqueue(db, event)

    def _enqueue(self, db: sqlite3.Connection, event: OutboxEvent) -> bool:
        """Insert `event` unless the outbox is full; then `on_drop` gets it."""
        (pending,) = db.execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()
        if pending >= self.max_pending:
            self.on_drop(event)
            return False
        _insert(db, event)
        return True

    def drift_started(self, event: OutboxEvent, *, cooldown: float, now: float) -> bool:
        """Record that `event.model`/`event.version` drifts, and enqueue `event` (a
        drift_detected) unless one was sent less than `cooldown` seconds ago; True if it was.
        """
        with self._write() as db:
            episode = _episode(db, event.model, event.version)
            since = episode.since if episode.drifting else now
            announced = episode.detected_event if episode.drifting else None
            due = episode.detected_at is None or now - episode.detected_at >= cooldown
            due = due and self._enqueue(db, event)
            if due:
                announced = event.id
            db.execute(
                "INSERT OR REPLACE INTO drift (model, version, drifting, since, detected_event, "
                "detected_at, url) VALUES (?, ?, 1, ?, ?, ?, ?)",
                (
                    event.model,
                    event.version,
                    since,
                    announced,
                    now if due else episode.detected_at,
                    event.url if due else episode.url,
                ),
            )
            return due

    def drift_resolved(
        self,
        model: str,
        version: str,
        build: Callable[[DriftEpisode], OutboxEvent],
        *,
        now: float,
    ) -> OutboxEvent | None:
        """Record that the model version no longer drifts. If a drift_detected was sent for
        the episode that ends, enqueue `build(episode)` (a drift_resolved) and return it."""
        with self._write() as db:
            episode = _episode(db, model, version)
            if not episode.drifting:
                return None
            db.execute(
                "UPDATE drift SET drifting = 0, since = ?, detected_event = NULL "
                "WHERE model = ? AND version = ?",
                (now, model, version),
            )
            if episode.detected_event is None:
                return None
            event = build(episode)
            return event if self._enqueue(db, event) else None

    def episode(self, model: str, version: str) -> DriftEpisode:
        """The recorded drift state of a model version (clear if never seen)."""
        with self._connect() as db:
            return _episode(db, model, version)

    # --- delivery ---------------------------------------------------------------------------

    def claim_due(
        self, *, now: float, lease: float, skip_urls: Collection[str] = (), limit: int = 8
    ) -> list[OutboxEvent]:
        """Claim up to `limit` due events, at most one per URL and none for `skip_urls`:
        each is the oldest pending event of its model version. A claim counts as an attempt
        and keeps the event from being claimed again for `lease` seconds."""
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE rowid IN (SELECT MIN(rowid) FROM events "
                "WHERE status = 'pending' GROUP BY model, version) AND next_attempt_at <= ? "
                "ORDER BY rowid",
                (now,),
            ).fetchall()
            claimed: list[OutboxEvent] = []
            urls = set(skip_urls)
            for row in rows:
                event = OutboxEvent(*row)
                if event.url in urls or len(claimed) >= limit:
                    continue
                urls.add(event.url)
                claimed.append(event)
                db.execute(
                    "UPDATE events SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                    (now + lease, event.id),
                )
            return [
                dataclasses.replace(e, attempts=e.attempts + 1, next_attempt_at=now + lease)
                for e in claimed
            ]

    def next_due(self) -> float | None:
        """When the earliest pending event that may be claimed next is due, if any."""
        with self._connect() as db:
            (due,) = db.execute(
                "SELECT MIN(next_attempt_at) FROM events WHERE rowid IN (SELECT MIN(rowid) "
                "FROM events WHERE status = 'pending' GROUP BY model, version)"
            ).fetchone()
            return float(due) if due is not None else None

    def mark_delivered(self, event_id: str, *, now: float) -> None:
        """The receiver accepted the event."""
        with self._write() as db:
            db.execute(
                "UPDATE events SET status = 'delivered', delivered_at = ?, last_error = NULL "
                "WHERE id = ? AND status = 'pending'",
                (now, event_id),
            )

    def retry_at(self, event_id: str, when: float, error: str) -> None:
        """An attempt failed: try again at `when`."""
        with self._write() as db:
            db.execute(
                "UPDATE events SET next_attempt_at = ?, last_error = ? "
                "WHERE id = ? AND status = 'pending'",
                (when, error, event_id),
            )

    def mark_dead(self, event_id: str, error: str) -> None:
        """Give up on the event: its retry period is over."""
        with self._write() as db:
            db.execute(
                "UPDATE events SET status = 'dead', last_error = ? "
                "WHERE id = ? AND status = 'pending'",
                (error, event_id),
            )

    def release(self, event_id: str, *, now: float) -> None:
        """Give back a claim whose attempt was abandoned (shutdown): due again at once, and
        the abandoned attempt does not count."""
        with self._write() as db:
            db.execute(
                "UPDATE events SET next_attempt_at = ?, attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND status = 'pending'",
                (now, event_id),
            )

    # --- inspection and upkeep --------------------------------------------------------------

    def get(self, event_id: str) -> OutboxEvent | None:
        """One event by id, in any status."""
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
            return OutboxEvent(*row) if row is not None else None

    def events(self, status: str | None = None) -> list[OutboxEvent]:
        """Every stored event (of one status), oldest first."""
        with self._connect() as db:
            if status is None:
                rows = db.execute(f"SELECT {_COLUMNS} FROM events ORDER BY rowid").fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE status = ? ORDER BY rowid", (status,)
                ).fetchall()
            return [OutboxEvent(*row) for row in rows]

    def pending_count(self) -> int:
        """Events not yet delivered nor given up."""
        with self._connect() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()
            return int(count)

    def prune(self, *, before: float) -> int:
        """Delete delivered and dead events created before `before`; how many went."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM events WHERE status != 'pending' AND created < ?", (before,)
            )
            return cursor.rowcount


def _insert(db: sqlite3.Connection, event: OutboxEvent) -> None:
    db.execute(
        f"INSERT INTO events ({_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL)",
        (
            event.id,
            event.type,
            event.model,
            event.version,
            event.url,
            event.payload,
            event.created,
            event.next_attempt_at or event.created,
        ),
    )


def _episode(db: sqlite3.Connection, model: str, version: str) -> DriftEpisode:
    row = db.execute(
        "SELECT drifting, since, detected_event, detected_at, url FROM drift "
        "WHERE model = ? AND version = ?",
        (model, version),
    ).fetchone()
    if row is None:
        return DriftEpisode(model, version, False, None, None, None, None)
    drifting, since, detected_event, detected_at, url = row
    return DriftEpisode(model, version, bool(drifting), since, detected_event, detected_at, url)
