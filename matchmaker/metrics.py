"""Prometheus metrics of the scheduler, served over HTTP when a port is set.

Task metrics are read off the book's event stream (``record``): every state change of every
task passes through it once, so counting there needs no hook in each path that changes a
state. Labels are bounded sets: task types (validated names some worker runs), owners (broker
users) and worker names; a task's id is never a label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

COUNTERS = ("submitted", "duplicates", "placements", "retries", "reschedules", "dead", "rejected")
FINAL = ("succeeded", "failed", "dead", "cancelled")  # "failed": an attempt, maybe retried
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class TaskEvent(Protocol):
    id: str
    state: str
    worker: str | None
    at: float
    note: str | None


class Metrics:
    def __init__(self, port: int = 0, bind: str = "127.0.0.1") -> None:
        r = self.registry = CollectorRegistry()
        self.pending = Gauge("mm_pending_tasks", "Tasks waiting for a round", registry=r)
        self.assigned = Gauge("mm_assigned_tasks", "Tasks pushed, not yet running", registry=r)
        self.running = Gauge("mm_running_tasks", "Tasks a worker reported running", registry=r)
        self.workers = Gauge("mm_live_workers", "Workers in the inventory", registry=r)
        self.leader = Gauge("mm_leader", "1 while this scheduler is the active one", registry=r)
        self.round_seconds = Histogram(
            "mm_round_seconds",
            "Duration of a scheduling round (plan and push)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mm_ledger_commit_seconds",
            "Duration of one ledger commit (one per turn)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.reconnects = Counter(
            "mm_broker_reconnects", "Times the scheduler lost the broker and reconnected",
            registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "mm_dead_letters", "Messages parked on mm.dead (rejected input)", registry=r
        )
        self.tasks = Counter(
            "mm_tasks",
            "Task state changes: submitted, and each attempt's end (succeeded, failed, dead, "
            "cancelled), by task type and owner",
            ["type", "owner", "state"],
            registry=r,
        )
        self.worker_tasks = Counter(
            "mm_worker_tasks",
            "Attempts ended on a worker (succeeded or failed), by worker",
            ["worker", "state"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "mm_queue_wait_seconds",
            "From submission (or the retry that made it pending) to its dispatch's confirm",
            ["type"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "mm_run_seconds",
            "From the running report (the dispatch if none came) to the attempt's end",
            ["type"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.counters = {
            name: Counter(f"mm_{name}", f"Tasks {name}", registry=r) for name in COUNTERS
        }
        self._seen: dict[str, int] = {}
        self._open: dict[str, tuple[str, str]] = {}  # id -> (type, owner) while open
        self._since: dict[str, float] = {}  # id -> when it became pending, then running
        self._children: dict[tuple[str, ...], Any] = {}  # labels() takes a lock: cache them
        if port:
            start_http_server(port, addr=bind, registry=r)

    def rounds(self) -> tuple[int, float]:
        """Rounds run so far, and their total seconds."""
        r = self.registry
        count = r.get_sample_value("mm_round_seconds_count") or 0
        return int(count), float(r.get_sample_value("mm_round_seconds_sum") or 0.0)

    def sync(self, counts: dict[str, int]) -> None:
        """Advance the counters to the totals the book keeps."""
        for name, counter in self.counters.items():
            total = counts.get(name, 0)
            delta = total - self._seen.get(name, 0)
            if delta > 0:
                counter.inc(delta)
                self._seen[name] = total

    def opened(self, task_id: str, task_type: str, owner: str) -> None:
        """A task is open (submitted, retried or restored): its labels, until it closes."""
        self._open[task_id] = (task_type, owner or "-")

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, events: Iterable[TaskEvent]) -> None:
        """Count the book's events (before they are published)."""
        for e in events:
            labels = self._open.get(e.id)
            if labels is None:
                continue  # opened before this process watched it
            task_type, owner = labels
            if e.state == "pending":
                self._since[e.id] = e.at
                if e.note == "submitted":
                    self._child(self.tasks, task_type, owner, "submitted").inc()
                continue
            if e.state in ("assigned", "running"):
                began = self._since.get(e.id)
                if began is not None and e.state == "assigned":
                    self._child(self.queue_wait, task_type).observe(max(0.0, e.at - began))
                self._since[e.id] = e.at
                continue
            if e.state not in FINAL:
                continue
            self._child(self.tasks, task_type, owner, e.state).inc()
            began = self._since.pop(e.id, None)
            if e.state in ("succeeded", "failed"):
                if began is not None:
                    self._child(self.run_time, task_type).observe(max(0.0, e.at - began))
                if e.worker:
                    self._child(self.worker_tasks, e.worker, e.state).inc()
            if e.state != "failed":  # a failed attempt may run again
                del self._open[e.id]
