"""The task ledger: durable task states, in embedded SQLite (the default) or PostgreSQL.

``open_ledger(config)`` opens the one the configuration names (``ledger_url``:
empty for ``<state_dir>/ledger.sqlite``, ``sqlite:///PATH`` or
``postgresql://user@host:port/db``); both backends implement ``TaskLedger``
(``base.py``), and ``Ledger`` stays the name of the SQLite one, for callers
that open a file. The modules: ``rows`` (what it holds), ``base`` (the
interface, batching, fencing), ``sqlite`` and ``postgres`` (the backends),
``migrations`` (the numbered schema), ``retention`` (pruning and archives).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from matchmaker.ledger.base import TaskLedger, holder_name
from matchmaker.ledger.migrations import SQLITE_BASELINE as SCHEMA
from matchmaker.ledger.rows import (
    DEAD_BODY_BYTES,
    LeaderLost,
    LedgerError,
    Letter,
    Owned,
    TaskRow,
    Transition,
)
from matchmaker.ledger.sqlite import Checkpointer, SqliteLedger, private_dir

Ledger = SqliteLedger  # the embedded ledger under its old name: ``Ledger(path)``
DEFAULT_FILE = "ledger.sqlite"
SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
# What ends a turn of the loop rather than one message: the ledger itself failed.
FAILURES: tuple[type[BaseException], ...] = (LedgerError, sqlite3.OperationalError)

__all__ = [
    "DEAD_BODY_BYTES",
    "FAILURES",
    "SCHEMA",
    "Checkpointer",
    "LeaderLost",
    "Ledger",
    "LedgerError",
    "Letter",
    "Owned",
    "SqliteLedger",
    "TaskLedger",
    "TaskRow",
    "Transition",
    "check_url",
    "holder_name",
    "open_ledger",
    "open_url",
    "private_dir",
    "sqlite_path",
]


class Located(Protocol):
    """What names a ledger: a ``Config``, or anything with these two."""

    @property
    def ledger_url(self) -> str: ...

    @property
    def state_dir(self) -> Path: ...


def check_url(url: str) -> str:
    """``url`` if it names a ledger; else ``ValueError`` with a sentence."""
    if url == "" or url.startswith(POSTGRES_PREFIXES):
        return url
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        return url
    raise ValueError(
        "ledger_url must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB (empty: the "
        "SQLite file in state_dir)"
    )


def sqlite_path(url: str, state_dir: Path) -> Path | None:
    """The SQLite file a ledger URL names (None for PostgreSQL)."""
    if url == "":
        return state_dir / DEFAULT_FILE
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    return None


def open_url(
    url: str, state_dir: Path, *, readonly: bool = False, background_checkpoints: bool = False
) -> TaskLedger:
    try:
        check_url(url)
    except ValueError as error:
        raise LedgerError(str(error)) from None
    path = sqlite_path(url, state_dir)
    if path is not None:
        return SqliteLedger(
            path, readonly=readonly, background_checkpoints=background_checkpoints and not readonly
        )
    from matchmaker.ledger.postgres import PostgresLedger

    return PostgresLedger(url, readonly=readonly)


def open_ledger(
    config: Located, *, readonly: bool = False, background_checkpoints: bool = False
) -> TaskLedger:
    """The ledger ``config`` names, for writing (migrated) or read-only."""
    return open_url(
        config.ledger_url,
        config.state_dir,
        readonly=readonly,
        background_checkpoints=background_checkpoints,
    )
