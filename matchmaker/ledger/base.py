"""The task ledger's interface and its batched writes, the same for every backend.

One row per task, keyed by the client's id (so a second submit is a no-op),
with its owner (the submitter's broker user, ``''`` when unknown: another
owner's submit of a known id is a clash, ``add_owned``), plus an append-only
``transitions`` log (every state change, stale and duplicate results
included), the set of drained workers, the dead-letter outbox
(``dead_letters``: each rejected message once, keyed by the hash of its
source queue and body, marked sent once the broker confirmed it on
``mm.dead``) and the ``leader`` row (the fencing epoch).

States: ``pending`` -> ``assigned`` -> ``running`` -> ``succeeded``; a failed
attempt goes back to ``pending`` with attempt + 1 (after a backoff) or ends
``dead``; ``cancelled`` from any open state. Only the active scheduler writes;
the CLI reads. Writes are batched: callers group them and call ``commit()``
once per batch (one transaction per turn of the scheduler's loop).

A task is open exactly while its ``finished_at`` is NULL (a retry clears it),
and the index of open tasks is partial on that column: a task enters it once
and leaves it once, so the steps pending -> assigned -> running do not touch
it (an index keyed on ``state`` would be rewritten at every step).

Fencing: a scheduler that becomes active calls ``take_lead()``, which raises
the ledger's leader epoch by one in a transaction of its own and remembers
the new value. From then on every ``commit()`` reads the epoch inside the
transaction it commits (locking the row against a concurrent take-over) and
rolls back with ``LeaderLost`` if another scheduler took a higher one: a
deposed leader still running writes nothing. A handle that never took the
lead (a tool, a test) writes unfenced.

Backends implement five primitives (``_run``, ``_many``, ``_begin``, ``_end``,
``close``) and a few dialect strings; the SQL here uses ``?`` placeholders.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from matchmaker.ledger.rows import (
    FINISHED,
    TASK_COLUMNS,
    LeaderLost,
    Letter,
    Owned,
    TaskRow,
    Transition,
    dumps,
)
from matchmaker.messages import TaskRequest

INSERT_TASK = (
    "INSERT INTO tasks (id, type, payload, priority, constraints, preferences,"
    " max_attempts, timeout, state, attempt, submitted_at, updated_at, owner)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 1, ?, ?, ?)"
)
INSERT_TRANSITION = (
    "INSERT INTO transitions (id, attempt, state, worker, at, note) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_LETTER = (
    "INSERT INTO dead_letters (key, source, reason, body, size, sha256, at, sent)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT DO NOTHING"
)
INSERT_LOG = (
    "INSERT INTO task_logs (id, attempt, worker, at, text) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (id, attempt) DO UPDATE"
    " SET worker = excluded.worker, at = excluded.at, text = excluded.text"
)
SET_DRAINED = (
    "INSERT INTO drained (worker, at, deadline) VALUES (?, ?, ?)"
    " ON CONFLICT (worker) DO UPDATE SET at = excluded.at, deadline = excluded.deadline"
)
OPEN = "finished_at IS NULL AND state IN ('pending', 'assigned', 'running')"
SELECT_TASK = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks"
TAKE_LEAD = "UPDATE leader SET epoch = epoch + 1, holder = ?, at = ? WHERE id = 1 RETURNING epoch"
CHUNK = 500  # ids per ``IN (...)`` query


@functools.cache
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{k} = ?" for k in columns)
    return f"UPDATE tasks SET {sets} WHERE id = ?"


def holder_name() -> str:
    """Who takes the lead: ``host:pid``, as the ledger's ``leader`` row shows it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskLedger:
    """Durable task states: the interface every backend implements, and its batching."""

    location: str  # where it is, for messages (a path, or a URL without its password)
    readonly: bool = False
    ORDER = "rowid"  # the column that orders ``transitions`` as written
    LOCK_LEADER = ""  # appended to the epoch check to lock the row against a take-over

    def _init_batches(self) -> None:
        self.epoch: int | None = None  # the leader epoch this handle took, if any
        self._in_batch = False
        self._inserts: list[tuple[Any, ...]] = []
        self._inserting: dict[str, str] = {}  # the ids of ``_inserts``, with their owners
        self._changes: dict[str, dict[str, Any]] = {}  # by task id: column -> value
        self._transitions: list[Transition] = []
        self._drained: list[tuple[str, tuple[Any, ...]]] = []  # (statement, row) in order
        self._letters: dict[str, Letter] = {}  # by key: into the outbox at the next write
        self._sent: list[tuple[str]] = []
        self._logs: dict[tuple[str, int], tuple[str, int, str | None, float, str]] = {}

    # -- the backend's primitives ---------------------------------------------

    def _run(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement; its rows (empty for one that returns none)."""
        raise NotImplementedError

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement for each row."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Begin a write transaction."""
        raise NotImplementedError

    def _end(self, commit: bool) -> None:
        """Commit or roll back the open transaction."""
        raise NotImplementedError

    def _committed(self) -> None:
        """After each commit (SQLite copies the last frames of its log here)."""

    def close(self) -> None:
        raise NotImplementedError

    # -- writes (batched) ---------------------------------------------------
    #
    # Writes wait in memory and reach the database at ``write()`` or ``commit()`` (or
    # before any read): new tasks, then each changed task's columns merged into
    # one row (every change sets columns to values, so the last value of each column
    # is what the UPDATEs in turn would have left), then the transitions, then
    # the drained set. One ``executemany`` per kind of statement: a turn's
    # assigned, running and succeeded changes of a task cost one UPDATE, and
    # a batch of them a statement, not a statement per task and change.

    def _pending_writes(self) -> bool:
        return bool(
            self._inserts
            or self._changes
            or self._transitions
            or self._drained
            or self._letters
            or self._sent
            or self._logs
        )

    def write(self) -> None:
        """Run the batched writes in the open transaction (begun here if none is), uncommitted."""
        if not self._pending_writes():
            return
        if not self._in_batch:
            self._begin()
            self._in_batch = True
        if self._inserts:
            self._insert_tasks(self._inserts)
            self._inserts = []
            self._inserting.clear()
        if self._changes:
            by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for task_id, columns in self._changes.items():
                by_columns.setdefault(tuple(columns), []).append((*columns.values(), task_id))
            for names, rows in by_columns.items():
                self._update_tasks(names, rows)
            self._changes = {}
        if self._transitions:
            self._insert_transitions(self._transitions)
            self._transitions = []
        for sql, row in self._drained:
            self._many(sql, [row])
        self._drained = []
        if self._letters:
            rows = [(*vars(letter).values(),) for letter in self._letters.values()]
            self._many(INSERT_LETTER, rows)
            self._letters = {}
        if self._sent:
            self._many("UPDATE dead_letters SET sent = 1 WHERE key = ?", self._sent)
            self._sent = []
        if self._logs:
            self._many(INSERT_LOG, list(self._logs.values()))
            self._logs = {}

    def _insert_tasks(self, rows: list[tuple[Any, ...]]) -> None:
        """New tasks: rows of ``INSERT_TASK``'s parameters."""
        self._many(INSERT_TASK, rows)

    def _update_tasks(self, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Set the columns ``names`` of tasks: rows of (*values, id)."""
        self._many(_update_sql(names), rows)

    def _insert_transitions(self, rows: list[Transition]) -> None:
        self._many(INSERT_TRANSITION, rows)

    def _known_owners(self, ids: list[str]) -> list[tuple[str, str]]:
        """(id, owner) of those of ``ids`` the ledger holds."""
        found: list[tuple[str, str]] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT id, owner FROM tasks WHERE id IN ({marks})"
            found += [(i, o) for i, o in self._run(query, chunk)]
        return found

    def _change(self, task_id: str, columns: dict[str, Any]) -> None:
        known = self._changes.get(task_id)
        if known is None:
            self._changes[task_id] = columns
        else:
            known.update(columns)

    def commit(self) -> None:
        """Write what is batched and commit it; for a leader, only while its epoch is the
        ledger's (else ``LeaderLost``, and nothing of the transaction stays)."""
        self.write()
        if not self._in_batch:
            return
        try:
            if self.epoch is not None:
                self._check_epoch()
            self._end(commit=True)
        except BaseException:
            self.rollback()
            raise
        self._in_batch = False
        self._committed()

    def _deposed(self, epoch: object, holder: object) -> LeaderLost:
        return LeaderLost(
            f"another scheduler ({holder or 'unknown'}) took the lead in the ledger at "
            f"{self.location} (epoch {epoch}, this one held {self.epoch}): this one "
            "stops, and its last turn was rolled back"
        )

    def rollback(self) -> None:
        """Forget the open transaction and everything batched."""
        if self._in_batch:
            self._in_batch = False
            self._end(commit=False)
        self._init_batches_keep_epoch()

    def _init_batches_keep_epoch(self) -> None:
        epoch = self.epoch
        self._init_batches()
        self.epoch = epoch

    def _check_epoch(self) -> None:
        rows = self._run(f"SELECT epoch, holder FROM leader WHERE id = 1{self.LOCK_LEADER}")
        epoch, holder = rows[0] if rows else (None, "")
        if epoch != self.epoch:
            raise self._deposed(epoch, holder)

    def take_lead(self, holder: str | None = None) -> int:
        """Become the ledger's leader: commit what is batched (under the old epoch, if
        any), then raise the epoch by one in a transaction of its own; returns it."""
        self.commit()
        self._begin()
        try:
            rows = self._run(TAKE_LEAD, (holder or holder_name(), time.time()))
            self._end(commit=True)
        except BaseException:
            self._end(commit=False)
            raise
        self.epoch = int(rows[0][0])
        return self.epoch

    def leader(self) -> tuple[int, str, float]:
        """The ledger's leader epoch, its holder and when it took the lead."""
        epoch, holder, at = self._run("SELECT epoch, holder, at FROM leader WHERE id = 1")[0]
        return int(epoch), str(holder), float(at)

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
        for known_id, known_owner in self._known_owners(list(fresh)) if fresh else ():
            r, owner = fresh.pop(known_id)
            if known_owner != owner:
                clashes.append((r, known_owner))
        added = list(fresh.values())
        rows = [  # all encoded before anything changes: an error leaves nothing half added
            (
                r.id,
                r.type,
                dumps(r.payload),
                r.priority,
                dumps(r.constraints),
                dumps(r.preferences),
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
            fields["output"] = dumps(fields["output"])
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
            self._drained.append((SET_DRAINED, (worker, now, deadline_at)))
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
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT key FROM dead_letters WHERE key IN ({marks})"
            for (known,) in self._run(query, chunk):
                del fresh[known]
        self._letters.update(fresh)
        return list(fresh.values())

    def letters_sent(self, keys: Iterable[str]) -> None:
        """The broker confirmed these letters on ``mm.dead``."""
        self._sent.extend((key,) for key in keys)

    def unsent_letters(self) -> list[Letter]:
        """The outbox's letters not yet confirmed by the broker, oldest first."""
        self.write()
        rows = self._run(
            "SELECT key, source, reason, body, size, sha256, at FROM dead_letters"
            " WHERE sent = 0 ORDER BY at"
        )
        return [Letter(k, s, r, bytes(b), n, h, at) for k, s, r, b, n, h, at in rows]

    def add_log(self, task_id: str, attempt: int, worker: str | None, at: float, text: str) -> None:
        """Keep an attempt's log (written with the next commit; a second one replaces it)."""
        self._logs[(task_id, attempt)] = (task_id, attempt, worker, at, text)

    def prune_letters(self, before: float) -> None:
        """Forget letters sent before ``before`` (their messages were acked long since)."""
        self._ensure_batch()
        self._run("DELETE FROM dead_letters WHERE sent = 1 AND at < ?", (before,))

    def _ensure_batch(self) -> None:
        self.write()
        if not self._in_batch:
            self._begin()
            self._in_batch = True

    def prune_tasks(self, before: float, limit: int) -> list[str]:
        """Delete up to ``limit`` tasks finished before ``before`` (oldest first) and their
        transitions, in the open transaction (committed with the next ``commit()``);
        returns their ids."""
        self.write()
        finished = ", ".join(f"'{s}'" for s in FINISHED)
        rows = self._run(
            "SELECT id FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?"
            f" AND state IN ({finished}) ORDER BY finished_at LIMIT ?",
            (before, limit),
        )
        return self.delete_finished([i for (i,) in rows], before)

    def delete_finished(self, ids: list[str], before: float) -> list[str]:
        """Delete those of these tasks still finished before ``before`` (one retried
        meanwhile is open again, and stays), with their transitions, in the open
        transaction; returns the ids deleted."""
        if not ids:
            return []
        self._ensure_batch()
        finished = ", ".join(f"'{s}'" for s in FINISHED)
        deleted: list[str] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            gone = self._run(
                f"DELETE FROM tasks WHERE id IN ({marks}) AND finished_at IS NOT NULL"
                f" AND finished_at < ? AND state IN ({finished}) RETURNING id",
                [*chunk, before],
            )
            done = [i for (i,) in gone]
            if done:
                marks = ", ".join("?" * len(done))
                self._run(f"DELETE FROM transitions WHERE id IN ({marks})", done)
                self._run(f"DELETE FROM task_logs WHERE id IN ({marks})", done)
            deleted += done
        return deleted

    # -- reads --------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """Any read, with ``?`` placeholders, as tuples (for tools and tests)."""
        self.write()
        return [tuple(row) for row in self._run(sql, params)]

    def get(self, task_id: str) -> TaskRow | None:
        self.write()
        rows = self._run(f"{SELECT_TASK} WHERE id = ?", (task_id,))
        return TaskRow.from_values(rows[0]) if rows else None

    def finished_before(self, before: float, limit: int) -> list[TaskRow]:
        """Up to ``limit`` tasks finished before ``before``, oldest first (for archives)."""
        self.write()
        finished = ", ".join(f"'{s}'" for s in FINISHED)
        rows = self._run(
            f"{SELECT_TASK} WHERE finished_at IS NOT NULL AND finished_at < ?"
            f" AND state IN ({finished}) ORDER BY finished_at LIMIT ?",
            (before, limit),
        )
        return [TaskRow.from_values(r) for r in rows]

    def open_tasks(self) -> Iterator[TaskRow]:
        """Every pending, assigned or running task: what a restarted scheduler rebuilds from."""
        self.write()
        for row in self._run(f"{SELECT_TASK} WHERE {OPEN}"):
            yield TaskRow.from_values(row)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        self.write()
        rows = self._run(
            "SELECT attempt, state, worker, at, note FROM transitions WHERE id = ?"
            f" ORDER BY {self.ORDER}",
            (task_id,),
        )
        names = ("attempt", "state", "worker", "at", "note")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def histories(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The history of each of these tasks (for archives)."""
        names = ("attempt", "state", "worker", "at", "note")
        return self._by_task("transitions", names, ids, self.ORDER)

    def logs(self, task_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        """The kept logs of a task's attempts (or of one), by attempt."""
        self.write()
        query = "SELECT attempt, worker, at, text FROM task_logs WHERE id = ?"
        args: tuple[Any, ...] = (task_id,)
        if attempt is not None:
            query += " AND attempt = ?"
            args += (attempt,)
        names = ("attempt", "worker", "at", "text")
        rows = self._run(query + " ORDER BY attempt", args)
        return [dict(zip(names, r, strict=True)) for r in rows]

    def logs_of(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The logs of each of these tasks, by attempt (for archives)."""
        return self._by_task("task_logs", ("attempt", "worker", "at", "text"), ids, "attempt")

    def _by_task(
        self, table: str, names: tuple[str, ...], ids: list[str], order: str
    ) -> dict[str, list[dict[str, Any]]]:
        """Rows of ``table`` for these task ids, ``CHUNK`` ids a query, grouped by task."""
        self.write()
        out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._run(
                f"SELECT id, {', '.join(names)} FROM {table}"
                f" WHERE id IN ({marks}) ORDER BY {order}",
                chunk,
            )
            for i, *values in rows:
                out[i].append(dict(zip(names, values, strict=True)))
        return out

    def counts(self) -> dict[str, int]:
        self.write()
        rows = self._run("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {state: int(count) for state, count in rows}

    def in_flight_by_worker(self) -> dict[str, int]:
        self.write()
        rows = self._run(
            "SELECT worker, COUNT(*) FROM tasks"
            " WHERE finished_at IS NULL AND state IN ('assigned', 'running') GROUP BY worker"
        )
        return {worker: int(count) for worker, count in rows}

    def drained(self) -> set[str]:
        self.write()
        return {row[0] for row in self._run("SELECT worker FROM drained")}

    def drain_deadlines(self) -> dict[str, float]:
        """Drained workers with a deadline -> when it passes (wall clock)."""
        self.write()
        rows = self._run("SELECT worker, deadline FROM drained WHERE deadline IS NOT NULL")
        return {worker: deadline for worker, deadline in rows}

    def recent_transitions(self, limit: int, states: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The last ``limit`` state changes (of ``states``, if any), oldest first."""
        self.write()
        wanted = sorted(states)
        where = f" WHERE state IN ({', '.join('?' * len(wanted))})" if wanted else ""
        rows = self._run(
            f"SELECT id, state, attempt, worker, at, note FROM transitions{where}"
            f" ORDER BY {self.ORDER} DESC LIMIT ?",
            (*wanted, limit),
        )
        keys = ("id", "state", "attempt", "worker", "at", "note")
        return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]
