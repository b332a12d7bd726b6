"""The API's own read-only view of the ledger: a SQLite connection opened with
``mode=ro`` beside the scheduler's writer (WAL lets a reader see the last commit)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

STATES = ("pending", "assigned", "running", "succeeded", "dead", "cancelled")
OPEN_STATES = ("pending", "assigned", "running")
COLUMNS = (
    "id, type, priority, state, attempt, max_attempts, worker, submitted_at, updated_at,"
    " assigned_at, started_at, finished_at, error, reason, not_before"
)
JSON_COLUMNS = ("payload", "constraints", "preferences", "output")


class StoreError(RuntimeError):
    """The ledger cannot be read; the text says why."""


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner_column: bool | None = None
        self._logs_table: bool | None = None
        self._counts: tuple[float, dict[str, int]] = (0.0, {})

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.path.exists():
                raise StoreError("the scheduler has no ledger yet")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5)
            db.row_factory = sqlite3.Row
            self._db = db
        return self._db

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._connect().execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"cannot read the ledger: {error}") from None

    def has_owners(self) -> bool:
        if self._owner_column is None:
            names = {r[1] for r in self._query("PRAGMA table_info(tasks)")}
            self._owner_column = "owner" in names
        return self._owner_column

    def tasks(
        self, filters: dict[str, Any], limit: int, cursor: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; the cursor is the rowid the next page starts below."""
        where, args = [], []
        for key in ("state", "type", "worker", "owner"):
            if filters.get(key) is not None:
                where.append(f"{key} = ?")
                args.append(filters[key])
        if filters.get("since") is not None:
            where.append("submitted_at >= ?")
            args.append(filters["since"])
        if cursor is not None:
            where.append("rowid < ?")
            args.append(cursor)
        owner = ", owner" if self.has_owners() else ""
        sql = f"SELECT rowid, {COLUMNS}{owner} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC LIMIT ?"
        rows = self._query(sql, (*args, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        out = [{k: v for k, v in dict(r).items() if k != "rowid"} for r in rows]
        return out, (rows[-1]["rowid"] if more and rows else None)

    def task(self, task_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            return None
        task = dict(rows[0])
        for key in JSON_COLUMNS:
            task[key] = _json(task.get(key))
        history = self._query(
            "SELECT attempt, state, worker, at, note FROM transitions WHERE id = ? ORDER BY rowid",
            (task_id,),
        )
        task["history"] = [dict(h) for h in history]
        task["logs"] = self.logs(task_id)
        task["explanation"] = explain(task)
        return task

    def logs(self, task_id: str) -> list[dict[str, Any]]:
        """The kept logs of a task's attempts (none from a ledger that predates them)."""
        if not self._logs_table:  # looked for again until a scheduler has made it
            made = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_logs'"
            self._logs_table = bool(self._query(made))
            if not self._logs_table:
                return []
        rows = self._query(
            "SELECT attempt, worker, at, text FROM task_logs WHERE id = ? ORDER BY attempt",
            (task_id,),
        )
        return [dict(r) for r in rows]

    def counts(self, max_age: float = 2.0) -> dict[str, int]:
        """Tasks by state, at most ``max_age`` seconds old (a count scans the table)."""
        at, counts = self._counts
        if time.time() - at > max_age:
            rows = self._query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            counts = {r[0]: r[1] for r in rows}
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
        return [{"reason": r["reason"], "tasks": r["n"]} for r in rows]

    def waits(self, last: int = 500) -> list[dict[str, float]]:
        """The most recent tasks that started: when submitted, how long they waited and ran."""
        rows = self._query(
            "SELECT submitted_at, started_at, finished_at FROM"
            " (SELECT * FROM tasks ORDER BY rowid DESC LIMIT ?) WHERE started_at IS NOT NULL",
            (last,),
        )
        out = []
        for r in rows:
            run = r["finished_at"] - r["started_at"] if r["finished_at"] else None
            out.append(
                {"at": r["submitted_at"], "wait": r["started_at"] - r["submitted_at"], "run": run}
            )
        out.sort(key=lambda w: w["at"])
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def explain(task: dict[str, Any]) -> str:
    """Why a task is where it is, in one sentence (as ``matchmaker explain``)."""
    if task["state"] != "pending":
        where = f" on worker {task['worker']}" if task.get("worker") else ""
        return f"{task['state']}{where}, not waiting"
    if (task.get("not_before") or 0) > time.time():
        return "waits for its retry backoff"
    return task.get("reason") or "not yet considered by a round"
