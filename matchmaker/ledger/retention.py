"""Retention: finished tasks older than ``ledger_retention`` leave the ledger.

In the scheduler, a ``Pruner`` takes a small step in the loop's own turn:
at most ``BATCH`` tasks (and their transitions), oldest finished first, deleted
in the turn's transaction, so they are committed (and fenced) with it. It is
a step per turn and not a thread because the ledger has one writer: SQLite
has one write lock, which a thread's own connection would contend for
(SQLite's busy wait sleeps in steps of milliseconds, a stall of the loop),
and in PostgreSQL a deposed leader's thread would need fencing of its own.
While a step finds a full batch the next is due the next turn (catching up
at up to ``BATCH`` per turn); otherwise it pauses ``PAUSE`` seconds, and an
idle step is one indexed query (``tasks_finished``).

By hand: ``prune()`` and ``archive()`` (``python -m matchmaker ledger
prune|archive``) go in batches of their own, one transaction each. The
archive writes a batch as JSON lines (each task's row, history and logs),
flushes it to disk, and only then deletes it: a crash in between leaves the
batch in the file and in the ledger, so a second run appends it again (at
least once in the file, never lost).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from matchmaker.ledger.base import TaskLedger

BATCH = 100  # tasks per step in the loop
PAUSE = 1.0  # seconds between steps once caught up
HAND_BATCH = 1000  # tasks per transaction by hand


class Pruner:
    """The scheduler's background pruning, a bounded step at a time (``step``)."""

    def __init__(self, retention: float, batch: int = BATCH, pause: float = PAUSE) -> None:
        self.retention = retention
        self.batch = batch
        self.pause = pause
        self.next = 0.0  # monotonic
        self.pruned = 0

    def step(self, ledger: TaskLedger) -> int:
        """Delete at most a batch if one is due; returns how many tasks went."""
        if not self.retention:
            return 0
        clock = time.monotonic()
        if clock < self.next:
            return 0
        gone = len(ledger.prune_tasks(time.time() - self.retention, self.batch))
        self.pruned += gone
        self.next = clock if gone == self.batch else clock + self.pause
        return gone


def prune(ledger: TaskLedger, before: float, batch: int = HAND_BATCH) -> int:
    """Delete every task finished before ``before``, a committed batch at a time."""
    total = 0
    while ids := ledger.prune_tasks(before, batch):
        ledger.commit()
        total += len(ids)
    return total


def archive(ledger: TaskLedger, before: float, out: Path, batch: int = HAND_BATCH) -> int:
    """Append every task finished before ``before`` to ``out`` as JSON lines (made 0600),
    then delete it; a batch is deleted only once it is on disk. Returns how many."""
    total = 0
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as file:
        while rows := ledger.finished_before(before, batch):
            ids = [r.id for r in rows]
            histories, logs = ledger.histories(ids), ledger.logs_of(ids)
            for row in rows:
                line = {**vars(row), "history": histories[row.id], "logs": logs[row.id]}
                file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())
            total += len(ledger.delete_finished([r.id for r in rows], before))
            ledger.commit()
    return total
