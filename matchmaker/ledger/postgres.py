"""The PostgreSQL backend (psycopg 3): the ledger on a database server, so that a
standby scheduler on another host, and the CLI anywhere, read the same state.

The connection runs in autocommit; a batch is an explicit ``BEGIN`` ...
``COMMIT`` (one a turn), so reads outside a batch never leave a transaction
open. ``executemany`` sends a batch's rows in psycopg's pipeline mode: one
round trip per statement kind, not per row. The writer's session sets
``idle_in_transaction_session_timeout`` (``IDLE_TIMEOUT``): a scheduler
paused or cut off inside a transaction has it ended by the server, so its
row locks never hold up the standby that took over.

Fencing: the epoch check (``TaskLedger.commit``) reads the leader row ``FOR
SHARE`` inside the transaction it commits, so a take-over (an UPDATE of that
row) waits for a commit already checked, and a commit checked after the
take-over sees the new epoch and rolls back.

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

import psycopg

from matchmaker.ledger import migrations
from matchmaker.ledger.base import TaskLedger
from matchmaker.ledger.rows import LeaderLost, LedgerError, Letter, Transition

IDLE_TIMEOUT = "10s"
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
            self.db = psycopg.connect(
                url,
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
