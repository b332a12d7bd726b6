"""The ledger's schema as numbered migrations, one list per backend.

A ledger records the number of the last migration applied to it: SQLite in
``PRAGMA user_version``, PostgreSQL in the one-row table ``schema_version``.
Opening a ledger for writing applies the missing ones in order, each in the
same transaction as the new number (PostgreSQL holds an advisory lock meanwhile,
so two schedulers opening one database at once migrate it once). A ledger
newer than this code is refused, and a read-only handle never migrates: it
refuses a ledger that is behind.

SQLite's migration 1 is the baseline: it also brings a file written before
versions existed up to it (the only place that looks at what a file holds);
every later step is plain DDL. Add a step by appending to both lists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SQLITE_BASELINE = """
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
CREATE TABLE IF NOT EXISTS drained (worker TEXT PRIMARY KEY, at REAL NOT NULL);
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

# Ledgers written before ``tasks_unfinished``: a retried task kept its failed attempt's
# ``finished_at``, and the open tasks were indexed by state.
MIGRATE_OPEN_INDEX = """
UPDATE tasks SET finished_at = NULL WHERE state IN ('pending', 'assigned', 'running');
DROP INDEX tasks_open;
"""

# The leader epoch (fencing) and the index retention deletes by.
LEADER_AND_RETENTION = """
CREATE TABLE IF NOT EXISTS leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    holder TEXT NOT NULL,
    at REAL NOT NULL
);
INSERT INTO leader (id, epoch, holder, at) VALUES (1, 0, '', 0) ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;
"""


# Each attempt's log (the tail of its captured output, as its result carried it).
TASK_LOGS = """
CREATE TABLE IF NOT EXISTS task_logs (
    id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    at REAL NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (id, attempt)
);
"""


# Tasks newest first, as the API and ``matchmaker tasks`` page them (``api.store``): a
# page is a walk down this index from the last page's key.
TASKS_SUBMITTED = "CREATE INDEX IF NOT EXISTS tasks_submitted ON tasks(submitted_at, id);"


def _sqlite_baseline(db: sqlite3.Connection) -> None:
    """Migration 1: the schema, and a file from before versions brought up to it."""
    for statement in SQLITE_BASELINE.split(";"):
        if statement.strip():
            db.execute(statement)
    old = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'tasks_open'"
    if db.execute(old).fetchone():
        for statement in MIGRATE_OPEN_INDEX.split(";"):
            if statement.strip():
                db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    if "received_at" not in columns:
        db.execute("ALTER TABLE tasks ADD COLUMN received_at REAL")
    if "owner" not in columns:  # a ledger written before owners: unknown ('')
        db.execute("ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''")


def _script(text: str) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        for statement in text.split(";"):
            if statement.strip():
                db.execute(statement)

    return run


def _drain_deadlines(db: sqlite3.Connection) -> None:
    """A drain's deadline (wall clock), kept so a scheduler taking over keeps it; the
    baseline of a file from before numbered migrations may already have it."""
    if "deadline" not in {row[1] for row in db.execute("PRAGMA table_info(drained)")}:
        db.execute("ALTER TABLE drained ADD COLUMN deadline REAL")


SQLITE: list[Callable[[sqlite3.Connection], None]] = [
    _sqlite_baseline,  # 1
    _script(LEADER_AND_RETENTION),  # 2
    _script(TASK_LOGS),  # 3
    _drain_deadlines,  # 4
    _script(TASKS_SUBMITTED),  # 5
]

POSTGRES: list[str] = [
    # 1: the baseline. Keys are ids and names (ASCII, ``messages.NAME``) in the "C"
    # collation: compared bytewise, not by the database's locale (far slower to compare).
    """
    CREATE TABLE tasks (
        id TEXT COLLATE "C" PRIMARY KEY,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        priority INTEGER NOT NULL,
        constraints TEXT NOT NULL,
        preferences TEXT NOT NULL,
        max_attempts INTEGER NOT NULL,
        timeout DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        submitted_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
        assigned_at DOUBLE PRECISION,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        output TEXT,
        error TEXT,
        reason TEXT,
        received_at DOUBLE PRECISION,
        owner TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX tasks_unfinished ON tasks(submitted_at) WHERE finished_at IS NULL;
    CREATE TABLE transitions (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT COLLATE "C" NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        worker TEXT,
        at DOUBLE PRECISION NOT NULL,
        note TEXT
    );
    CREATE INDEX transitions_id ON transitions(id);
    CREATE TABLE drained (worker TEXT COLLATE "C" PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
    CREATE TABLE dead_letters (
        key TEXT COLLATE "C" PRIMARY KEY,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        body BYTEA NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX dead_letters_unsent ON dead_letters(at) WHERE sent = 0;
    """,
    # 2: the leader epoch (fencing) and the index retention deletes by
    """
    CREATE TABLE leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch BIGINT NOT NULL,
        holder TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    INSERT INTO leader (id, epoch, holder, at) VALUES (1, 0, '', 0);
    CREATE INDEX tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;
    CREATE FUNCTION mm_check_epoch(expected BIGINT) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        current BIGINT;
        who TEXT;
    BEGIN
        SELECT epoch, holder INTO current, who FROM leader WHERE id = 1 FOR SHARE;
        IF current IS DISTINCT FROM expected THEN
            RAISE EXCEPTION 'leader epoch % held by %', current, who
                USING ERRCODE = 'MM001', DETAIL = current::text, HINT = who;
        END IF;
    END $$;
    """,
    # 3: each attempt's log
    """
    CREATE TABLE task_logs (
        id TEXT COLLATE "C" NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        at DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (id, attempt)
    );
    """,
    # 4: a drain's deadline (wall clock), kept so a scheduler taking over keeps it
    "ALTER TABLE drained ADD COLUMN IF NOT EXISTS deadline DOUBLE PRECISION;",
    # 5: tasks newest first, as the API pages them
    TASKS_SUBMITTED,
]
LATEST = len(SQLITE)
assert len(POSTGRES) == LATEST, "every migration exists for both backends"
