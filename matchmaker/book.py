"""The scheduler's book of open tasks: the state machine, kept in step with the ledger.

Every open task is in exactly one place: ``pending`` (waiting for a round)
or ``in_flight`` on one worker (assigned or running). Each method applies one
kind of event, writes the change to the ledger (uncommitted: the service
commits once per batch) and queues an event for ``mm.events``.

Attempts: a task starts at attempt 1; a failed attempt, a lost worker or a
missed deadline moves it to attempt + 1. A result counts only for a task in
flight, for its current attempt, from the worker that attempt was dispatched
to (``refusal``); any other (stale, forged, for a pending or unknown task) is
recorded as an ``ignored-<state>`` transition with the reason, and changes
nothing.

Deadlines wait in a heap of (deadline, id), so a sweep looks only at the
tasks whose deadline passed; entries of tasks no longer in flight (or in
flight again, with a new deadline) are skipped when they come up, and the
heap is rebuilt from ``in_flight`` once it holds twice as many entries.
``running_count`` follows every move in and out of ``in_flight``, so nothing
scans the tasks in flight.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from matchmaker.backlog import Backlog, OpenTask
from matchmaker.ledger import Owned, TaskLedger, TaskRow
from matchmaker.messages import MAX_ATTEMPTS, MessageError, TaskRequest, TaskResult
from matchmaker.models import Task

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


@dataclass  # not slots: orjson writes a slots dataclass several times slower
class Event:
    id: str
    state: str
    attempt: int
    worker: str | None
    at: float
    note: str | None = None


@dataclass
class Book:
    ledger: TaskLedger
    retry_backoff: float = 1.0
    result_grace: float = 30.0
    pending: Backlog = field(default_factory=Backlog)
    in_flight: dict[str, OpenTask] = field(default_factory=dict)
    by_worker: dict[str, set[str]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    deadlines: list[tuple[float, str]] = field(default_factory=list)  # heap
    running_count: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # why a pending task waits, as written
    on_open: Callable[[OpenTask], None] | None = None  # a task was recorded or restored open
    on_close: Callable[[OpenTask], None] | None = None  # it succeeded, died or was cancelled

    # -- bookkeeping ----------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _event(self, t: OpenTask, state: str, at: float, note: str | None = None) -> None:
        self.events.append(Event(t.request.id, state, t.attempt, t.worker, at, note))
        self.ledger.transitions([(t.request.id, t.attempt, state, t.worker, at, note)])

    def _put_in_flight(self, t: OpenTask, worker: str) -> None:
        """From pending to in flight on ``worker``."""
        self.pending.pop(t.request.id)
        self.reasons.pop(t.request.id, None)
        t.worker = worker
        self.in_flight[t.request.id] = t
        self.by_worker.setdefault(worker, set()).add(t.request.id)
        if t.state == "running":
            self.running_count += 1
        if t.deadline:
            heapq.heappush(self.deadlines, (t.deadline, t.request.id))
            if len(self.deadlines) > 2 * len(self.in_flight) + 1024:
                self.deadlines = [(f.deadline, i) for i, f in self.in_flight.items() if f.deadline]
                heapq.heapify(self.deadlines)

    def _remove(self, t: OpenTask) -> None:
        """Out of pending or in flight, wherever it is (its state is the caller's)."""
        self.reasons.pop(t.request.id, None)
        if self.in_flight.pop(t.request.id, None) is not None and t.state == "running":
            self.running_count -= 1
        self.pending.pop(t.request.id)
        if t.worker is not None:
            self.by_worker.get(t.worker, set()).discard(t.request.id)

    def _closed(self, t: OpenTask) -> None:
        if self.on_close is not None:
            self.on_close(t)

    def _requeue(self, t: OpenTask, now: float, note: str, delay: float = 0.0) -> None:
        """Back to pending with the next attempt (the caller checked max_attempts)."""
        self._remove(t)
        t.attempt += 1
        t.state, t.worker, t.not_before = "pending", None, now + delay
        self.pending.add(t)
        self.ledger.update(
            t.request.id,
            now,
            state="pending",
            attempt=t.attempt,
            worker=None,
            not_before=t.not_before,
            finished_at=None,
        )
        self._event(t, "pending", now, note)

    def running(self, worker: str) -> int:
        return len(self.by_worker.get(worker, ()))

    def loads(self) -> dict[str, int]:
        """Worker -> its tasks in flight, for the workers with any."""
        return {worker: len(ids) for worker, ids in self.by_worker.items() if ids}

    # -- what the scheduler reads ---------------------------------------------

    def has_pending(self) -> bool:
        return bool(self.pending)

    def sizes(self) -> tuple[int, int, int]:
        """(pending, in flight, running) tasks."""
        return len(self.pending), len(self.in_flight), self.running_count

    def counts(self) -> dict[str, int]:
        """A copy of the running totals (submitted, placements, succeeded, ...)."""
        return dict(self.counters)

    def open_task(self, task_id: str) -> OpenTask | None:
        """The open task (pending or in flight) of that id, None if it is not open."""
        return self.in_flight.get(task_id) or self.pending.get(task_id)

    def workers_with_tasks(self) -> set[str]:
        """The workers that have tasks in flight."""
        return {w for w, ids in self.by_worker.items() if ids}

    def has_events(self) -> bool:
        return bool(self.events)

    def take_events(self) -> list[Event]:
        """The events queued since the last call (the caller publishes them)."""
        events, self.events = self.events, []
        return events

    def backoff_ended(self, now: float) -> bool:
        """Whether some retry became due since the last call (``Backlog.backoff_ended``)."""
        return self.pending.backoff_ended(now)

    def explain(self, reasons: Iterable[tuple[str, str]]) -> int:
        """Record why these pending tasks wait (id, reason); only a reason that changed is
        written to the ledger. Returns how many changed."""
        changed = [(i, why) for i, why in reasons if self.reasons.get(i) != why]
        if changed:
            self.reasons.update(changed)
            self.ledger.set_reasons(changed)
        return len(changed)

    # -- events ---------------------------------------------------------------

    def restore(self, rows: Iterable[TaskRow]) -> None:
        """Rebuild the open tasks from the ledger after a restart."""
        for row in rows:
            t = OpenTask(
                request=row.request(),
                task=make_task(row.request(), row.submitted_at),
                attempt=row.attempt,
                state=row.state,
                not_before=row.not_before,
                owner=row.owner,
            )
            if row.state == "pending" or row.worker is None:
                t.state = "pending"
                self.pending.add(t)
            else:
                t.deadline = (row.assigned_at or row.updated_at) + row.timeout + self.result_grace
                self._put_in_flight(t, row.worker)
            if self.on_open is not None:
                self.on_open(t)

    def submit(self, requests: list[TaskRequest], now: float) -> int:
        """Record new tasks; duplicates of known ids are ignored. Returns how many were new."""
        return self.submit_owned([(r, "") for r in requests], now)[0]

    def submit_owned(self, items: list[Owned], now: float) -> tuple[int, list[Owned]]:
        """Record new tasks of (request, owner): a known id with the same owner is a
        duplicate and ignored. Returns how many were new, and the clashes (a known id
        with another owner: (request, that owner)), which change nothing."""
        added, clashes = self.ledger.add_owned(items, now)
        for r, owner in added:
            t = OpenTask(r, make_task(r, now), owner=owner)
            self.pending.add(t)
            if self.on_open is not None:
                self.on_open(t)
            self.events.append(Event(r.id, "pending", 1, None, now, "submitted"))
        self.count("submitted", len(added))
        self.count("duplicates", len(items) - len(added) - len(clashes))
        return len(added), clashes

    def due(
        self,
        now: float,
        limit: int | None = None,
        classes: int | None = None,
        aging_interval: float = 0.0,
    ) -> list[Task]:
        """Pending tasks whose backoff is over; with ``limit``, the oldest that many per group;
        with ``classes``, of that many groups at most (``Backlog.oldest``)."""
        return self.pending.oldest(now, limit, classes, aging_interval)

    def dispatching(self, items: list[tuple[str, str]], now: float) -> None:
        """Dispatches of (id, worker) pairs are on their way: the slots are taken."""
        for task_id, worker in items:
            t = self.pending[task_id]
            t.state = "dispatching"
            t.deadline = now + t.request.timeout + self.result_grace
            self._put_in_flight(t, worker)

    def assigned(self, items: list[tuple[str, str, float]]) -> None:
        """The broker confirmed these dispatches (id, worker, when): record them assigned."""
        rows = []
        for task_id, worker, at in items:
            t = self.in_flight.get(task_id)
            if t is None or t.state != "dispatching" or t.worker != worker:
                continue  # already reported on, cancelled or moved
            t.state = "assigned"
            rows.append((task_id, t.attempt, worker, at))
            self.events.append(Event(task_id, "assigned", t.attempt, worker, at))
        self.ledger.assign(rows)
        self.count("placements", len(rows))

    def undispatched(self, items: list[tuple[str, str]]) -> None:
        """Dispatches the broker refused or may not have received: pending again."""
        for task_id, worker in items:
            t = self.in_flight.get(task_id)
            if t is not None and t.state == "dispatching" and t.worker == worker:
                self._remove(t)
                t.state, t.worker = "pending", None
                self.pending.add(t)

    def refusal(self, r: TaskResult) -> str | None:
        """Why a result cannot count, or None: it counts only for a task in flight, for
        its current attempt, from the worker that attempt was dispatched to. (The one
        place that decides; a check of who sent it belongs here too.)"""
        t = self.in_flight.get(r.id)
        if t is None:
            if r.id in self.pending:
                return "the task is pending: no attempt of it is in flight"
            known = self.ledger.get(r.id)
            return "unknown task" if known is None else f"the task is {known.state}"
        if r.attempt != t.attempt:
            return f"stale: attempt {r.attempt}, current attempt {t.attempt}"
        if r.worker != t.worker:
            return f"attempt {t.attempt} was dispatched to {t.worker}, not to {r.worker}"
        return None

    def result(self, r: TaskResult, now: float) -> str:
        """Apply a worker's report; returns what it did (for logs and tests). A result
        ``refusal`` refuses is recorded as ``ignored-<state>`` with the reason and
        changes nothing."""
        why = self.refusal(r)
        if why is not None:
            self.ledger.transitions([(r.id, r.attempt, f"ignored-{r.state}", r.worker, now, why)])
            self.count("ignored_results")
            return "ignored"
        t = self.in_flight[r.id]
        if r.logs:  # the attempt's captured output, kept whatever its outcome
            self.ledger.add_log(r.id, r.attempt, r.worker, now, r.logs)
        if t.state == "dispatching":  # the worker's report overtook the broker's confirm
            self.assigned([(r.id, r.worker, r.received_at or r.started_at or now)])
        ran = {"worker": r.worker, "received_at": r.received_at, "started_at": r.started_at}
        if r.state == "running":
            if t.state != "running":
                t.state = "running"
                self.running_count += 1
            self.ledger.update(r.id, now, state="running", **ran)
            self._event(t, "running", now)
            return "running"
        self._remove(t)
        if r.state == "succeeded":
            t.state, t.output = "succeeded", r.output
            done = {"finished_at": r.finished_at or now, "output": r.output, "error": None}
            self.ledger.update(r.id, now, state="succeeded", **ran, **done)
            self._event(t, "succeeded", now)
            self.count("succeeded")
            self._closed(t)
            return "succeeded"
        return self.fail(t, r.error or "failed without a message", now, finished_at=r.finished_at)

    def fail(self, t: OpenTask, error: str, now: float, finished_at: float | None = None) -> str:
        """An attempt failed: retry with exponential backoff, or dead after max_attempts."""
        self._remove(t)
        t.error = error
        self.ledger.update(t.request.id, now, error=error, finished_at=finished_at or now)
        self._event(t, "failed", now, error)
        if t.attempt >= t.request.max_attempts:
            t.state = "dead"
            self.ledger.update(t.request.id, now, state="dead")
            self._event(t, "dead", now, f"gave up after {t.attempt} attempts: {error}")
            self.count("dead")
            self._closed(t)
            return "dead"
        delay = min(self.retry_backoff * 2 ** (t.attempt - 1), MAX_BACKOFF)
        self._requeue(t, now, f"retry in {delay:g}s", delay)
        self.count("retries")
        return "retry"

    def worker_lost(self, worker: str, now: float, why: str) -> int:
        """A worker failed or left: its tasks go back to pending with attempt + 1."""
        ids = sorted(self.by_worker.get(worker, ()))
        for task_id in ids:
            self._requeue(self.in_flight[task_id], now, f"worker {worker} {why}")
        self.by_worker.pop(worker, None)
        self.count("reschedules", len(ids))
        return len(ids)

    def owner(self, task_id: str) -> str | None:
        """The owner of an open task, None if the task is not open."""
        t = self.in_flight.get(task_id) or self.pending.get(task_id)
        return None if t is None else t.owner

    def ignore(self, r: TaskResult, now: float, why: str) -> None:
        """Record a result refused before it reached ``result`` (its sender may not report
        for its worker): an ``ignored-<state>`` transition with the reason."""
        self.ledger.transitions([(r.id, r.attempt, f"ignored-{r.state}", r.worker, now, why)])
        self.count("ignored_results")

    def retry(self, row: TaskRow, now: float) -> None:
        """A dead or cancelled task pending again as one more attempt; MessageError if the
        task is in any other state (open tasks run already; succeeded ones are done)."""
        if row.state not in ("dead", "cancelled"):
            raise MessageError(
                f"retry of {row.id} refused: it is {row.state}; only a dead or cancelled task "
                "runs again"
            )
        if row.attempt >= MAX_ATTEMPTS:
            raise MessageError(f"retry of {row.id} refused: it has had {MAX_ATTEMPTS} attempts")
        request = row.request()
        t = OpenTask(
            request, make_task(request, row.submitted_at), row.attempt + 1, owner=row.owner
        )
        self.pending.add(t)
        self.ledger.update(
            row.id, now, state="pending", attempt=t.attempt, worker=None, not_before=0.0,
            finished_at=None, error=None, reason=None,
        )  # fmt: skip
        self._event(t, "pending", now, "retried")
        if self.on_open is not None:
            self.on_open(t)
        self.count("retried")

    def cancel(self, task_id: str, now: float) -> tuple[bool, str | None]:
        """Cancel an open task; returns (whether it was open, the worker running it)."""
        t = self.in_flight.get(task_id) or self.pending.get(task_id)
        if t is None:
            return False, None
        worker = t.worker if task_id in self.in_flight else None
        self._remove(t)
        t.state = "cancelled"
        self.ledger.update(task_id, now, state="cancelled", finished_at=now)
        self._event(t, "cancelled", now)
        self._closed(t)
        return True, worker

    def expire(self, now: float) -> int:
        """Tasks in flight past deadline + grace with no result count as a failed attempt."""
        late = 0
        while self.deadlines and self.deadlines[0][0] < now:
            deadline, task_id = heapq.heappop(self.deadlines)
            t = self.in_flight.get(task_id)
            if t is not None and t.deadline == deadline:  # else no longer in flight, or again since
                self.fail(t, f"no result from worker {t.worker} by the deadline", now)
                late += 1
        return late


def make_task(r: TaskRequest, submitted_at: float) -> Task:
    """The engine's view of a request."""
    return Task(
        r.id,
        r.type,
        priority=r.priority,
        constraints=r.constraints,
        preferences=r.preferences,
        submitted_at=submitted_at,
    )
