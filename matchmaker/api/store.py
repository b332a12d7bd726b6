"""The API's and the CLI's read-only view of the ledger the configuration names, SQLite
or PostgreSQL (``ledger_url``), through a read-only ``TaskLedger``.

The handle is opened at the first read, not before: an API that starts before its
scheduler has made a SQLite ledger answers "the scheduler has no ledger yet" until it
has, and a PostgreSQL server that does not answer gets its sentence at each read, not
a failed start. The API's threads share the one handle, one read at a time (a lock); a
failed read drops it, and a read that fails on a handle kept from earlier reads is tried
once more on a new one (its session may have ended: a PostgreSQL server that restarted,
a connection cut), so such a break costs no request an error.

Pages of tasks go newest first by ``(submitted_at, id)``, both descending, on either
backend (the index ``tasks_submitted``, migration 5); a page's cursor is the key of its
last task, base64url-encoded JSON: opaque to clients, and the same on both backends.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import orjson

from matchmaker.ledger import LedgerError, Located, TaskLedger, open_ledger, sqlite_path
from matchmaker.messages import NAME

STATES = ("pending", "assigned", "running", "succeeded", "dead", "cancelled")
OPEN_STATES = ("pending", "assigned", "running")
LISTED = (
    "id", "type", "priority", "state", "attempt", "max_attempts", "worker", "submitted_at",
    "updated_at", "assigned_at", "started_at", "finished_at", "error", "reason", "not_before",
    "owner",
)  # fmt: skip
NEWEST_FIRST = "ORDER BY submitted_at DESC, id DESC"
MAX_CURSOR = 400  # characters: the encoding of a time and a 128-character id, with room
BAD_CURSOR = "cursor must be the next_cursor of a previous page"
T = TypeVar("T")


class StoreError(RuntimeError):
    """The ledger cannot be read; the text says why."""


def cursor_of(submitted_at: float, task_id: str) -> str:
    """The cursor of the page that follows the task with this key."""
    return base64.urlsafe_b64encode(orjson.dumps([submitted_at, task_id])).decode().rstrip("=")


def parse_cursor(text: str) -> tuple[float, str]:
    """The key a cursor names; ``ValueError`` (``BAD_CURSOR``) for anything else."""
    try:
        if len(text) > MAX_CURSOR:
            raise ValueError
        key = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        at, task_id = key
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError
        if not isinstance(task_id, str) or not NAME.fullmatch(task_id):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):  # orjson's decode error is a ValueError
        raise ValueError(BAD_CURSOR) from None
    return float(at), task_id


class Store:
    """Reads of the ledger ``where`` names (a ``Config``), for the API and the CLI."""

    def __init__(self, where: Located) -> None:
        self.where = where
        self._ledger: TaskLedger | None = None
        self._lock = threading.Lock()
        self._counts: tuple[float, dict[str, int]] = (0.0, {})

    def _open(self) -> TaskLedger:
        if self._ledger is None:
            path = sqlite_path(self.where.ledger_url, self.where.state_dir)
            if path is not None and not path.exists():
                raise StoreError("the scheduler has no ledger yet")
            try:
                self._ledger = open_ledger(self.where, readonly=True)
            except LedgerError as error:
                raise StoreError(str(error)) from None
        return self._ledger

    def _read(self, read: Callable[[TaskLedger], T]) -> T:
        """``read`` on the handle, under the lock. A failure drops the handle; one kept
        from an earlier read is given a second try on a new one (its session may have
        ended meanwhile: a server restarted, a connection cut), a new one is not."""
        with self._lock:
            if self._ledger is not None:
                try:
                    return read(self._ledger)
                except (LedgerError, sqlite3.Error):
                    self._drop()
            try:
                return read(self._open())
            except (LedgerError, sqlite3.Error) as error:
                self._drop()
                raise StoreError(f"cannot read the ledger: {error}") from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._read(lambda ledger: ledger.query(sql, args))

    def tasks(
        self, filters: dict[str, Any], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks, newest first, and the cursor of the next (None at the end);
        ``ValueError`` for a cursor that no page gave."""
        where, args = [], []
        for key in ("state", "type", "worker", "owner"):
            if filters.get(key) is not None:
                where.append(f"{key} = ?")
                args.append(filters[key])
        if filters.get("since") is not None:
            where.append("submitted_at >= ?")
            args.append(filters["since"])
        if cursor is not None:
            where.append("(submitted_at, id) < (?, ?)")
            args.extend(parse_cursor(cursor))
        sql = f"SELECT {', '.join(LISTED)} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(f"{sql} {NEWEST_FIRST} LIMIT ?", (*args, limit + 1))
        page = [dict(zip(LISTED, row, strict=True)) for row in rows[:limit]]
        if len(rows) <= limit or not page:
            return page, None
        return page, cursor_of(page[-1]["submitted_at"], page[-1]["id"])

    def task(self, task_id: str) -> dict[str, Any] | None:
        """A task with its history, its attempts' logs and why it is where it is."""

        def read(ledger: TaskLedger) -> dict[str, Any] | None:
            row = ledger.get(task_id)
            if row is None:
                return None
            task = asdict(row)
            task["history"] = ledger.history(task_id)
            task["logs"] = ledger.logs(task_id)
            return task

        task = self._read(read)
        if task is not None:
            task["explanation"] = explain(task)
        return task

    def counts(self, max_age: float = 2.0) -> dict[str, int]:
        """Tasks by state, at most ``max_age`` seconds old (a count scans the table)."""
        at, counts = self._counts
        if time.time() - at > max_age:
            counts = self._read(lambda ledger: ledger.counts())
            self._counts = (time.time(), counts)
        return counts

    def reasons(self, top: int = 20) -> list[dict[str, Any]]:
        """Why pending tasks wait: the most common stored reasons and how many have each."""
        rows = self._query(
            "SELECT COALESCE(reason, 'not yet considered by a round') AS reason, COUNT(*) AS n"
            " FROM tasks WHERE finished_at IS NULL AND state = 'pending'"
            " GROUP BY 1 ORDER BY 2 DESC LIMIT ?",
            (top,),
        )
        return [{"reason": reason, "tasks": int(n)} for reason, n in rows]

    def waits(self, last: int = 500) -> list[dict[str, float]]:
        """The most recent tasks that started: when submitted, how long they waited and ran."""
        rows = self._query(
            "SELECT submitted_at, started_at, finished_at FROM"
            " (SELECT submitted_at, started_at, finished_at FROM tasks"
            f" {NEWEST_FIRST} LIMIT ?) AS recent WHERE started_at IS NOT NULL",
            (last,),
        )
        out = []
        for submitted, started, finished in rows:
            run = finished - started if finished else None
            out.append({"at": submitted, "wait": started - submitted, "run": run})
        out.sort(key=lambda w: w["at"])
        return out

    def _drop(self) -> None:
        if self._ledger is not None:
            ledger, self._ledger = self._ledger, None
            with contextlib.suppress(LedgerError, sqlite3.Error):  # gone: nothing to free
                ledger.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def explain(task: dict[str, Any]) -> str:
    """Why a task is where it is, in one sentence (as ``matchmaker explain``)."""
    if task["state"] != "pending":
        where = f" on worker {task['worker']}" if task.get("worker") else ""
        return f"{task['state']}{where}, not waiting"
    if (task.get("not_before") or 0) > time.time():
        return "waits for its retry backoff"
    return task.get("reason") or "not yet considered by a round"
