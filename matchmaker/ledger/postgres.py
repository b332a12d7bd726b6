"""The PostgreSQL backend (psycopg 3): the ledger on a database server, so that a
standby scheduler on another host, and the CLI anywhere, read the same state.

The connection runs in autocommit; a batch is an explicit ``BEGIN`` ...
``COMMIT`` (one a turn), so reads outside a batch never leave a transaction
open. The writer's session sets
``idle_in_transaction_session_timeout`` (``IDLE_TIMEOUT``): a scheduler
paused or cut off inside a transaction has it ended by the server, so its
row locks never hold up the standby that took over. That timeout is armed only
between statements; a scheduler cut off in the middle of a pipeline leaves the
server reading, so both ends probe their peer: the server (``DEAD_PEER_SETTINGS``)
and libpq (``DEAD_PEER_PARAMS``), so a dead connection is dropped within seconds,
not the kernel's two hours. On the client this is what stops a leader cut off while
it waits for a reply: the wait fails within seconds and says ``LeaderLost``.

A turn costs two round trips: the batched statements, the epoch check and
``COMMIT`` go in one pipeline (``commit``), plus the query that tells new task
ids from known ones (``add_owned``). A batch's rows travel as one JSON array
parameter per statement (``jsonb_array_elements``), so a turn is a handful of
statements whatever its size, and the writer's session turns hash and merge
joins off (``WRITER_SETTINGS``): every join it makes is a lookup by key.

Fencing: the check (the function ``mm_check_epoch``, migration 2) reads the
leader row ``FOR SHARE`` inside the transaction it commits, so a take-over (an
UPDATE of that row) waits for a commit already checked, and a commit checked
after the take-over sees the new epoch, raises, and the COMMIT behind it in
the pipeline rolls back.

Text: PostgreSQL's ``text`` cannot hold a NUL character, SQLite's can; the
free text a worker or a message brings (errors, notes, reasons) has NUL
replaced by U+FFFD here, so no input can fail a turn's commit. A read-only
handle sets ``default_transaction_read_only`` and never migrates.

Errors of the server or the connection become ``LedgerError`` with one sentence
(the URL shown without its password).
"""

from __future__ import annotations

import contextlib
import functools
import urllib.parse
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg

from matchmaker.ledger import migrations
from matchmaker.ledger.base import TaskLedger
from matchmaker.ledger.rows import LeaderLost, LedgerError, Letter, Transition

IDLE_TIMEOUT = "10s"
# The writer's joins are all lookups of a turn's few rows by key: a hash or merge join
# would scan the whole table (the planner chose one while a fresh table's statistics
# were missing or stale: a turn then cost a scan of every task).
WRITER_SETTINGS = ("enable_hashjoin = off", "enable_mergejoin = off")
# Keepalives after 5 s of silence, 3 probes 2 s apart; unacknowledged data for 10 s (ms).
# Named as libpq names them; the server's setting is the same name with ``tcp_`` in front.
DEAD_PEER = {
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
}
DEAD_PEER_SETTINGS = tuple(f"tcp_{k.removeprefix('tcp_')} = {v}" for k, v in DEAD_PEER.items())
DEAD_PEER_PARAMS = {"keepalives": 1, **DEAD_PEER}  # libpq's end (unless the URL sets them)
FENCED = "MM001"  # the SQLSTATE of mm_check_epoch's refusal
CONNECT_TIMEOUT = 10
MIGRATION_LOCK = 0x6D6D6C6564676572  # the advisory lock migrations hold ("mmledger")


def redact(url: str) -> str:
    """The URL without its password (and without its query, which may carry one)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(an unreadable PostgreSQL URL)"


TYPES = {  # the PostgreSQL type of each column a batch writes
    "id": "text", "type": "text", "payload": "text", "priority": "int",
    "constraints": "text", "preferences": "text", "max_attempts": "int",
    "timeout": "float8", "state": "text", "attempt": "int", "worker": "text",
    "submitted_at": "float8", "updated_at": "float8", "not_before": "float8",
    "assigned_at": "float8", "started_at": "float8", "finished_at": "float8",
    "output": "text", "error": "text", "reason": "text", "received_at": "float8",
    "owner": "text", "at": "float8", "note": "text",
}  # fmt: skip
INSERTED = (
    "id", "type", "payload", "priority", "constraints", "preferences", "max_attempts",
    "timeout", "submitted_at", "updated_at", "owner",
)  # fmt: skip


def _fields(names: tuple[str, ...]) -> str:
    """The columns ``names`` of a JSON array row ``r``, cast to their types."""
    return ", ".join(
        f"r->>{n}" if TYPES[name] == "text" else f"(r->>{n})::{TYPES[name]}"
        for n, name in enumerate(names)
    )


ROWS = "jsonb_array_elements(%s::jsonb) AS r"  # one parameter: the rows as a JSON array
KNOWN = (  # one index probe per id, whatever the statistics say (LIMIT keeps it a probe)
    "SELECT t.id, t.owner FROM jsonb_array_elements_text(?::jsonb) AS u(id)"
    " CROSS JOIN LATERAL (SELECT id, owner FROM tasks WHERE tasks.id = u.id LIMIT 1) AS t"
)
INSERT_TASKS = (
    f"INSERT INTO tasks ({', '.join(INSERTED)}, state, attempt)"
    f" SELECT {_fields(INSERTED)}, 'pending', 1 FROM {ROWS}"
)
TRANSITION = ("id", "attempt", "state", "worker", "at", "note")
INSERT_TRANSITIONS = (
    f"INSERT INTO transitions ({', '.join(TRANSITION)}) SELECT {_fields(TRANSITION)} FROM {ROWS}"
)


@functools.cache
def _update_arrays(names: tuple[str, ...]) -> str:
    """UPDATE of the columns ``names`` from JSON rows of (*values, id)."""
    sets = ", ".join(f"{n} = v.{n}" for n in names)
    return (
        f"UPDATE tasks SET {sets} FROM (SELECT {_fields((*names, 'id'))} FROM {ROWS})"
        f" AS v({', '.join(names)}, id) WHERE tasks.id = v.id"
    )


@functools.cache
def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _clean(text: Any) -> Any:
    return text.replace("\x00", "\ufffd") if isinstance(text, str) and "\x00" in text else text


def _sentence(error: psycopg.Error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else error.__class__.__name__


class PostgresLedger(TaskLedger):
    """Durable task states in a PostgreSQL database."""

    ORDER = "seq"
    LOCK_LEADER = " FOR SHARE"

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.location = redact(url)
        self.readonly = readonly
        try:
            given = psycopg.conninfo.conninfo_to_dict(url)  # the URL's own settings win
            probes = {k: v for k, v in DEAD_PEER_PARAMS.items() if k not in given}
            self.db = psycopg.connect(
                psycopg.conninfo.make_conninfo(url, **probes),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="matchmaker-cli" if readonly else "matchmaker-scheduler",
            )
        except psycopg.Error as error:
            raise LedgerError(
                f"cannot reach the ledger at {self.location}: {_sentence(error)}"
            ) from None
        try:
            if readonly:
                self.db.execute("SET default_transaction_read_only = on")
            else:
                self.db.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_TIMEOUT}'")
                for setting in (*WRITER_SETTINGS, *DEAD_PEER_SETTINGS):
                    self.db.execute(f"SET {setting}")
            self._migrate()
        except psycopg.Error as error:
            self.db.close()
            raise LedgerError(
                f"cannot open the ledger at {self.location}: {_sentence(error)}"
            ) from None
        except LedgerError:
            self.db.close()
            raise
        self._init_batches()

    def _version(self) -> int:
        exists = self.db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Apply the missing numbered migrations under an advisory lock, each with its
        new number in ``schema_version``; a reader only checks."""
        version = self._version()
        if version > migrations.LATEST:
            raise LedgerError(
                f"the ledger at {self.location} has schema version {version}, newer than "
                f"this matchmaker's {migrations.LATEST}: use a matchmaker at least as new"
            )
        if version == migrations.LATEST:
            return
        if self.readonly:
            raise LedgerError(
                f"the ledger at {self.location} has schema version {version}, older than "
                f"this matchmaker's {migrations.LATEST} (or none: has a scheduler run on it?)"
            )
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            version = self._version()  # another scheduler may have migrated meanwhile
            if version == 0:
                self.db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                self.db.execute("INSERT INTO schema_version VALUES (0)")
            for step in migrations.POSTGRES[version:]:
                self.db.execute(step)
            self.db.execute("UPDATE schema_version SET version = %s", (migrations.LATEST,))

    def close(self) -> None:
        self.db.close()

    # -- primitives -------------------------------------------------------------

    def _run(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cursor = self.db.execute(_pg(sql), params)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as error:
            raise self._failed(error) from None

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            with self.db.cursor() as cursor:
                cursor.executemany(_pg(sql), rows)
        except psycopg.Error as error:
            raise self._failed(error) from None

    # -- a turn's rows as JSON arrays: one statement per kind, not one per row ------------

    def _insert_tasks(self, rows: list[tuple[Any, ...]]) -> None:
        self._arrays(INSERT_TASKS, rows)

    def _insert_transitions(self, rows: list[Transition]) -> None:
        self._arrays(INSERT_TRANSITIONS, rows)

    def _update_tasks(self, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self._arrays(_update_arrays(names), rows)

    def _arrays(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``sql`` with ``rows`` as one JSON parameter (encoded in C by orjson, parsed once
        by the server: psycopg's array dumper is Python, and cost more than the rest)."""
        try:
            self.db.execute(sql, (orjson.dumps(rows).decode(),))
        except psycopg.Error as error:
            raise self._failed(error) from None

    def _known_owners(self, ids: list[str]) -> list[tuple[str, str]]:
        found = self._run(KNOWN, (orjson.dumps(ids).decode(),))
        return [(i, o) for i, o in found]

    # -- a turn in one round trip ---------------------------------------------------

    def write(self) -> None:
        """The batched writes in one pipeline: one round trip, not one per statement."""
        if not self._pending_writes():
            return
        try:
            with self.db.pipeline():
                TaskLedger.write(self)
        except psycopg.Error as error:
            raise self._failed(error) from None

    def commit(self) -> None:
        """What is batched, the epoch check (``mm_check_epoch``, which raises SQLSTATE
        MM001 when another scheduler took the lead) and COMMIT in one pipeline: a failed
        check aborts the transaction, so the COMMIT that follows it rolls back."""
        try:
            with self.db.pipeline():
                TaskLedger.write(self)
                if self._in_batch:
                    if self.epoch is not None:
                        self.db.execute("SELECT mm_check_epoch(%s)", (self.epoch,))
                    self.db.execute("COMMIT")
        except psycopg.Error as error:
            self.rollback()
            if error.sqlstate == FENCED:
                diagnostic = error.diag
                raise self._deposed(diagnostic.message_detail, diagnostic.message_hint) from None
            raise self._failed(error) from None
        except BaseException:
            self.rollback()
            raise
        self._in_batch = False

    def _begin(self) -> None:
        self._run("BEGIN")

    def _end(self, commit: bool) -> None:
        if commit:
            self._run("COMMIT")
        elif not self.db.closed:
            with contextlib.suppress(psycopg.Error):  # gone: the server rolled it back
                self.db.execute("ROLLBACK")

    def _failed(self, error: psycopg.Error) -> LedgerError:
        if isinstance(error, psycopg.errors.IdleInTransactionSessionTimeout) or (
            self.db.closed and self.epoch is not None
        ):
            return LeaderLost(
                f"the ledger at {self.location} ended this scheduler's session "
                f"({_sentence(error)}): it stops, another may have taken the lead"
            )
        return LedgerError(f"the ledger at {self.location} failed: {_sentence(error)}")

    # -- free text: no NUL in PostgreSQL's text ---------------------------------------

    def update(self, task_id: str, now: float, **fields: Any) -> None:
        super().update(task_id, now, **{k: _clean(v) for k, v in fields.items()})

    def transitions(self, rows: Iterable[Transition]) -> None:
        super().transitions((i, a, s, _clean(w), at, _clean(n)) for i, a, s, w, at, n in rows)

    def add_log(self, task_id: str, attempt: int, worker: str | None, at: float, text: str) -> None:
        super().add_log(task_id, attempt, _clean(worker), at, _clean(text))

    def set_reasons(self, reasons: Iterable[tuple[str, str]]) -> None:
        super().set_reasons((i, _clean(r)) for i, r in reasons)

    def outbox(self, letters: Iterable[Letter]) -> list[Letter]:
        cleaned = [
            letter if "\x00" not in letter.reason else _replace_reason(letter) for letter in letters
        ]
        return super().outbox(cleaned)


def _replace_reason(letter: Letter) -> Letter:
    return Letter(
        letter.key,
        letter.source,
        _clean(letter.reason),
        letter.body,
        letter.size,
        letter.sha256,
        letter.at,
    )
