"""The task ledger: durable task states in embedded SQLite (WAL).

One row per task, keyed by the client's id (so a second submit is a no-op),
with its owner (the submitter's broker user, ``''`` when unknown: another
owner's submit of a known id is a clash, ``add_owned``), plus an append-only
``transitions`` log (every state change, stale and duplicate results
included), the set of drained workers and the dead-letter
outbox (``dead_letters``: each rejected message once, keyed by the hash of its
source queue and body, marked sent once the broker confirmed it on
``mm.dead``). The writer makes its files 0600 (the database, its log and its
index); the CLI opens it read-only through a percent-encoded ``file:`` URI.

States: ``pending`` -> ``assigned`` -> ``running`` -> ``succeeded``; a failed
attempt goes back to ``pending`` with attempt + 1 (after a backoff) or ends
``dead``; ``cancelled`` from any open state. Only the scheduler writes; the
CLI opens the same file read-only. Writes are batched: callers group them and
call ``commit()`` once per batch.

A task is open exactly while its ``finished_at`` is NULL (a retry clears it),
and the index of open tasks is partial on that column: a task enters it once
and leaves it once, so the steps pending -> assigned -> running do not touch
it (an index keyed on ``state`` cost 6 of 16 us of ledger work per task).

Checkpoints: by default SQLite copies the write-ahead log into the database
file inside whichever COMMIT takes the log past 1,000 pages, and that copy
and its fsync stalled the scheduler's loop for 10-20 ms several times a
second under load. The scheduler opens its ledger with
``background_checkpoints=True``: a ``Checkpointer`` thread, on a connection
of its own, copies the log every quarter second in PASSIVE mode (never
waiting for the writer or a reader; SQLite releases the GIL meanwhile). The log starts
again from its head only when a writer finds it wholly copied, which a busy
writer never does; so once it is long, the thread copies it in passes back
to back until one finds few new frames, and the writer's next ``commit()``
copies those few itself (about a millisecond), after which its next write
starts the log again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from matchmaker.messages import TaskRequest

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 0.25  # short passes: a long one's fsync held up the writer's appends
RESTART_FRAMES = 8192  # a log this long (32 MiB of 4 KiB pages) is caught up and restarted
CATCH_UP_FRAMES = 256  # what the writer's own checkpoint then copies, at most about
CATCH_UP_PASSES = 20
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    constraints TEXT NOT NULL,
    preferences TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout REAL NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    assigned_at REAL,
    started_at REAL,
    finished_at REAL,
    output TEXT,
    error TEXT,
    reason TEXT,
    received_at REAL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(submitted_at) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS transitions (
    id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    at REAL NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS transitions_id ON transitions(id);
CREATE TABLE IF NOT EXISTS drained (worker TEXT PRIMARY KEY, at REAL NOT NULL, deadline REAL);
CREATE TABLE IF NOT EXISTS dead_letters (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    at REAL NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dead_letters_unsent ON dead_letters(at) WHERE sent = 0;
"""


INSERT_TASK = (
    "INSERT INTO tasks (id, type, payload, priority, constraints, preferences,"
    " max_attempts, timeout, state, attempt, submitted_at, updated_at, owner)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 1, ?, ?, ?)"
)
Owned = tuple[TaskRequest, str]  # a request and its owner
OPEN = "finished_at IS NULL AND state IN ('pending', 'assigned', 'running')"

# Each attempt's log (the tail of its captured output, as its result carried it): a table
# of its own, made by this step in any ledger that lacks it (ledgers from before logs too).
LOGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_logs (
    id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    at REAL NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (id, attempt)
);
"""
INSERT_LOG = "INSERT OR REPLACE INTO task_logs VALUES (?, ?, ?, ?, ?)"

# Ledgers written before ``tasks_unfinished``: a retried task kept its failed attempt's
# ``finished_at``, and the open tasks were indexed by state.
MIGRATE_OPEN_INDEX = """
UPDATE tasks SET finished_at = NULL WHERE state IN ('pending', 'assigned', 'running');
DROP INDEX tasks_open;
"""


DEAD_BODY_BYTES = 4096  # a dead letter keeps this much of its body, and its size and hash
INSERT_LETTER = "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


class LedgerError(RuntimeError):
    """The ledger file cannot be opened or is not a matchmaker ledger."""


@dataclass(frozen=True)
class Letter:
    """A rejected message on its way to ``mm.dead``: ``key`` (the SHA-256 of its source
    queue and its origin: the whole body, or for an item of a batch the batch's body and
    the item's place in it) names it for good, so a redelivery of the same message is the
    same letter; ``body`` is its first ``DEAD_BODY_BYTES``, ``size`` and ``sha256`` the
    whole body's."""

    key: str
    source: str
    reason: str
    body: bytes
    size: int
    sha256: str
    at: float

    @classmethod
    def of(
        cls, source: str, body: bytes, reason: str, at: float, origin: bytes | None = None
    ) -> Letter:
        named = source.encode() + b"\0" + (body if origin is None else origin)
        key = hashlib.sha256(named).hexdigest()
        digest = hashlib.sha256(body).hexdigest()
        return cls(key, source, reason[:1000], body[:DEAD_BODY_BYTES], len(body), digest, at)


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) if missing, the last one 0700; an existing one open
    to others is closed to them, unless it is a shared sticky directory such as /tmp."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o077 and not mode & stat.S_ISVTX:
        path.chmod(PRIVATE_DIR)
    elif mode & 0o077:
        log.warning("%s is a shared directory: only the ledger's own files are private", path)


@dataclass
class TaskRow:
    """A task as the ledger holds it."""

    id: str
    type: str
    payload: dict[str, Any]
    priority: int
    constraints: dict[str, Any]
    preferences: dict[str, Any]
    max_attempts: int
    timeout: float
    state: str
    attempt: int
    worker: str | None
    submitted_at: float
    updated_at: float
    not_before: float
    assigned_at: float | None
    started_at: float | None
    finished_at: float | None
    output: dict[str, Any] | None
    error: str | None
    reason: str | None
    received_at: float | None = None  # when the worker took it off its queue
    owner: str = ""  # the submitter's broker user ('' if unknown)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRow:
        values = dict(row)
        for key in ("payload", "constraints", "preferences", "output"):
            if values[key] is not None:
                values[key] = _loads(values[key])
        return cls(**values)

    def request(self) -> TaskRequest:
        return TaskRequest(
            id=self.id,
            type=self.type,
            payload=self.payload,
            priority=self.priority,
            constraints=self.constraints,
            preferences=self.preferences,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
        )


Transition = tuple[str, int, str, str | None, float, str | None]  # id, attempt, state, ...


@functools.cache
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{k} = ?" for k in columns)
    return f"UPDATE tasks SET {sets} WHERE id = ?"


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # written by an older version: NaN or a 65-bit integer
        return json.loads(text)


def _dumps(value: Any) -> str:
    return "{}" if value == {} else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Ledger:
    """Durable task states in one SQLite file."""

    def __init__(
        self, path: Path | str, *, readonly: bool = False, background_checkpoints: bool = False
    ) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.exists():
                    raise LedgerError(f"no ledger at {self.path} (has the scheduler run here?)")
                uri = self.path.resolve().as_uri() + "?mode=ro"  # the path percent-encoded
                self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                umask = os.umask(0o077)  # the file, its log and its index made 0600
                try:
                    self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                    self.db.execute("PRAGMA journal_mode=WAL")
                    self.db.execute("PRAGMA synchronous=NORMAL")
                    if background_checkpoints:
                        self.db.execute("PRAGMA wal_autocheckpoint=0")
                    self.db.executescript(SCHEMA)
                    self.db.executescript(LOGS_SCHEMA)
                finally:
                    os.umask(umask)
                self._private_files()
                old = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'tasks_open'"
                if self.db.execute(old).fetchone():
                    self.db.executescript(f"BEGIN; {MIGRATE_OPEN_INDEX} COMMIT;")
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(tasks)")}
                if "received_at" not in columns:  # a ledger written before the column
                    self.db.execute("ALTER TABLE tasks ADD COLUMN received_at REAL")
                if "owner" not in columns:  # a ledger written before owners: unknown ('')
                    self.db.execute("ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                drained = {row[1] for row in self.db.execute("PRAGMA table_info(drained)")}
                if "deadline" not in drained:  # before drain deadlines: none
                    self.db.execute("ALTER TABLE drained ADD COLUMN deadline REAL")
            self.db.row_factory = sqlite3.Row
            self.db.execute("SELECT 1 FROM tasks LIMIT 1")
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"cannot open the ledger at {self.path}: {error}") from None
        self._in_batch = False
        self._inserts: list[tuple[Any, ...]] = []
        self._inserting: dict[str, str] = {}  # the ids of ``_inserts``, with their owners
        self._changes: dict[str, dict[str, Any]] = {}  # by task id: column -> value
        self._transitions: list[Transition] = []
        self._drained: list[tuple[str, tuple[Any, ...]]] = []  # (statement, row) in order
        self._letters: dict[str, Letter] = {}  # by key: into the outbox at the next write
        self._sent: list[tuple[str]] = []
        self._logs: list[tuple[str, int, str | None, float, str]] = []
        self.checkpoints = Checkpointer(self.path).start() if background_checkpoints else None

    def _private_files(self) -> None:
        """The database, its write-ahead log and its shared-memory index: owner only (SQLite
        makes the last two with the database's mode, this corrects older files)."""
        for suffix in ("", "-wal", "-shm"):
            file = self.path.with_name(self.path.name + suffix)
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(PRIVATE_FILE)

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stop()
        self.db.close()

    # -- writes (batched) ---------------------------------------------------
    #
    # Writes wait in memory and reach SQLite at ``write()`` or ``commit()`` (or
    # before any read): new tasks, then each changed task's columns merged into
    # one row (every change sets columns to values, so the last value of each column
    # is what the UPDATEs in turn would have left), then the transitions, then
    # the drained set. One ``executemany`` per kind of statement: a turn's
    # assigned, running and succeeded changes of a task cost one UPDATE, and
    # a batch of them a statement, not a statement per task and change.

    def write(self) -> None:
        """Run the batched writes in the open transaction (begun here if none is), uncommitted."""
        if not (
            self._inserts
            or self._changes
            or self._transitions
            or self._drained
            or self._letters
            or self._sent
            or self._logs
        ):
            return
        if not self._in_batch:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_batch = True
        if self._inserts:
            self.db.executemany(INSERT_TASK, self._inserts)
            self._inserts = []
            self._inserting.clear()
        if self._changes:
            by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for task_id, columns in self._changes.items():
                by_columns.setdefault(tuple(columns), []).append((*columns.values(), task_id))
            for names, rows in by_columns.items():
                self.db.executemany(_update_sql(names), rows)
            self._changes = {}
        if self._transitions:
            self.db.executemany(
                "INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?)", self._transitions
            )
            self._transitions = []
        for sql, row in self._drained:
            self.db.execute(sql, row)
        self._drained = []
        if self._letters:
            rows = [(*vars(letter).values(),) for letter in self._letters.values()]
            self.db.executemany(INSERT_LETTER, rows)
            self._letters = {}
        if self._sent:
            self.db.executemany("UPDATE dead_letters SET sent = 1 WHERE key = ?", self._sent)
            self._sent = []
        if self._logs:
            self.db.executemany(INSERT_LOG, self._logs)
            self._logs = []

    def _change(self, task_id: str, columns: dict[str, Any]) -> None:
        known = self._changes.get(task_id)
        if known is None:
            self._changes[task_id] = columns
        else:
            known.update(columns)

    def commit(self) -> None:
        self.write()
        if self._in_batch:
            self.db.execute("COMMIT")
            self._in_batch = False
            if self.checkpoints is not None and self.checkpoints.caught_up.is_set():
                self.checkpoints.caught_up.clear()
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the last few frames

    def add(self, requests: Iterable[TaskRequest], now: float) -> list[TaskRequest]:
        """Record new tasks as pending; returns those that were new (ids are idempotency keys)."""
        added, _ = self.add_owned(((r, "") for r in requests), now)
        return [r for r, _ in added]

    def add_owned(self, items: Iterable[Owned], now: float) -> tuple[list[Owned], list[Owned]]:
        """Record new tasks of (request, owner) as pending. Returns those that were new, and
        the clashes: requests whose id is known with another owner, each with that owner.
        A known id with the same owner is a duplicate, left out of both."""
        fresh: dict[str, Owned] = {}
        clashes: list[Owned] = []
        for r, owner in items:
            known = self._inserting.get(r.id)  # added since the last ``write()``
            if known is None and r.id in fresh:
                known = fresh[r.id][1]
            if known is None:
                fresh[r.id] = (r, owner)
            elif known != owner:
                clashes.append((r, known))
        ids = list(fresh)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT id, owner FROM tasks WHERE id IN ({marks})"
            for known_id, known_owner in self.db.execute(query, chunk):
                r, owner = fresh.pop(known_id)
                if known_owner != owner:
                    clashes.append((r, known_owner))
        added = list(fresh.values())
        rows = [  # all encoded before anything changes: an error leaves nothing half added
            (
                r.id,
                r.type,
                _dumps(r.payload),
                r.priority,
                _dumps(r.constraints),
                _dumps(r.preferences),
                r.max_attempts,
                r.timeout,
                now,
                now,
                owner,
            )
            for r, owner in added
        ]
        self._inserting.update((r.id, owner) for r, owner in added)
        self._inserts.extend(rows)
        self.transitions((r.id, 1, "pending", None, now, "submitted") for r, _ in added)
        return added, clashes

    def update(self, task_id: str, now: float, **fields: Any) -> None:
        """Set some columns of one task (the JSON column ``output`` is encoded here)."""
        if fields.get("output") is not None:
            fields["output"] = _dumps(fields["output"])
        fields["updated_at"] = now
        self._change(task_id, fields)

    def assign(self, rows: list[tuple[str, int, str, float]]) -> None:
        """Mark (id, attempt, worker, when) assigned once their dispatch is in the broker
        (the caller's attempt is the task's current one)."""
        for i, _, w, at in rows:
            self._change(
                i,
                {
                    "state": "assigned",
                    "worker": w,
                    "assigned_at": at,
                    "updated_at": at,
                    "reason": None,
                },
            )
        self.transitions((i, a, "assigned", w, at, None) for i, a, w, at in rows)

    def set_reasons(self, reasons: Iterable[tuple[str, str]]) -> None:
        for i, r in reasons:
            self._change(i, {"reason": r})

    def transitions(self, rows: Iterable[Transition]) -> None:
        self._transitions.extend(rows)

    def set_drained(
        self, worker: str, on: bool, now: float, deadline_at: float | None = None
    ) -> None:
        """A drain (with the wall-clock time its deadline passes, if any) or an undrain."""
        if on:
            sql = "INSERT OR REPLACE INTO drained (worker, at, deadline) VALUES (?, ?, ?)"
            self._drained.append((sql, (worker, now, deadline_at)))
        else:
            self._drained.append(("DELETE FROM drained WHERE worker = ?", (worker,)))

    def outbox(self, letters: Iterable[Letter]) -> list[Letter]:
        """Put rejected messages in the dead-letter outbox (written with the next commit);
        returns those that were not there already (a redelivery of a message the outbox
        holds is the same letter: it is not sent again)."""
        fresh: dict[str, Letter] = {}
        for letter in letters:
            if letter.key not in self._letters:
                fresh.setdefault(letter.key, letter)
        keys = list(fresh)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT key FROM dead_letters WHERE key IN ({marks})"
            for (known,) in self.db.execute(query, chunk):
                del fresh[known]
        self._letters.update(fresh)
        return list(fresh.values())

    def letters_sent(self, keys: Iterable[str]) -> None:
        """The broker confirmed these letters on ``mm.dead``."""
        self._sent.extend((key,) for key in keys)

    def unsent_letters(self) -> list[Letter]:
        """The outbox's letters not yet confirmed by the broker, oldest first."""
        self.write()
        rows = self.db.execute(
            "SELECT key, source, reason, body, size, sha256, at FROM dead_letters"
            " WHERE sent = 0 ORDER BY at"
        )
        return [Letter(k, s, r, bytes(b), n, h, at) for k, s, r, b, n, h, at in rows]

    def prune_letters(self, before: float) -> None:
        """Forget letters sent before ``before`` (their messages were acked long since)."""
        self.write()
        self.db.execute("DELETE FROM dead_letters WHERE sent = 1 AND at < ?", (before,))

    # -- attempt logs -------------------------------------------------------

    def add_log(self, task_id: str, attempt: int, worker: str | None, at: float, text: str) -> None:
        """Keep an attempt's log (written with the next commit; a second one replaces it)."""
        self._logs.append((task_id, attempt, worker, at, text))

    def logs(self, task_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        """The kept logs of a task's attempts (or of one), by attempt; none from a ledger
        that predates logs."""
        self.write()
        made = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_logs'"
        if not self.db.execute(made).fetchone():
            return []
        query = "SELECT attempt, worker, at, text FROM task_logs WHERE id = ?"
        args: tuple[Any, ...] = (task_id,)
        if attempt is not None:
            query += " AND attempt = ?"
            args += (attempt,)
        return [dict(r) for r in self.db.execute(query + " ORDER BY attempt", args)]

    # -- reads --------------------------------------------------------------

    def get(self, task_id: str) -> TaskRow | None:
        self.write()
        row = self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return TaskRow.from_row(row) if row else None

    def open_tasks(self) -> Iterator[TaskRow]:
        """Every pending, assigned or running task: what a restarted scheduler rebuilds from."""
        self.write()
        query = f"SELECT * FROM tasks WHERE {OPEN}"
        for row in self.db.execute(query):
            yield TaskRow.from_row(row)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        self.write()
        rows = self.db.execute(
            "SELECT attempt, state, worker, at, note FROM transitions WHERE id = ? ORDER BY rowid",
            (task_id,),
        )
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        self.write()
        rows = self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {state: count for state, count in rows}

    def in_flight_by_worker(self) -> dict[str, int]:
        self.write()
        rows = self.db.execute(
            "SELECT worker, COUNT(*) FROM tasks"
            " WHERE finished_at IS NULL AND state IN ('assigned', 'running') GROUP BY worker"
        )
        return {worker: count for worker, count in rows}

    def drained(self) -> set[str]:
        self.write()
        return {row[0] for row in self.db.execute("SELECT worker FROM drained")}

    def drain_deadlines(self) -> dict[str, float]:
        """Drained workers with a deadline -> when it passes (wall clock)."""
        self.write()
        rows = self.db.execute("SELECT worker, deadline FROM drained WHERE deadline IS NOT NULL")
        return {worker: deadline for worker, deadline in rows}


class Checkpointer:
    """Copies a ledger's write-ahead log into its database file, from a thread of its own.

    Every ``interval`` seconds a PASSIVE checkpoint; once the log holds more than
    ``restart_frames``, passes back to back until one finds no more than
    ``CATCH_UP_FRAMES`` new frames, then ``caught_up`` is set for the writer.
    """

    def __init__(
        self,
        path: Path | str,
        interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.restart_frames = restart_frames
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after a last checkpoint."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                try:
                    self._checkpoint(db)
                except sqlite3.Error as error:  # the writer goes on meanwhile
                    log.warning("ledger checkpoint failed: %s", error)
                if stopping:
                    return
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        copied = 0
        for _ in range(CATCH_UP_PASSES):
            last = copied
            _busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames <= self.restart_frames:
                return
            if frames - last <= CATCH_UP_FRAMES:  # this pass had little more to copy
                self.caught_up.set()
                return
