"""A worker's own Prometheus endpoint: what it ran, how long, and how busy it is.

Served only when ``--metrics-port`` is given; the scheduler's metrics cover placement and
queue wait, these cover execution as the worker saw it (run time from start to its result).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from workers.runtime import Worker

RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    def __init__(self, worker: Worker) -> None:
        r = self.registry = CollectorRegistry()
        self.tasks = Counter(
            "mm_worker_tasks", "Attempts this worker ended, by task type and state",
            ["type", "state"], registry=r,
        )  # fmt: skip
        self.run_time = Histogram(
            "mm_worker_run_seconds", "Run time of an attempt on this worker, by task type",
            ["type"], buckets=RUN_BUCKETS, registry=r,
        )  # fmt: skip
        busy = Gauge("mm_worker_busy_slots", "Slots running a task now", registry=r)
        busy.set_function(lambda: worker.runner.busy())
        slots = Gauge("mm_worker_slots", "Slots this worker offers", registry=r)
        slots.set_function(lambda: worker.runner.slots)
        received = Gauge("mm_worker_received", "Dispatches received", registry=r)
        received.set_function(lambda: worker.stats.received)
        worker.runner.observer = self.finished

    def finished(self, task_type: str, state: str, seconds: float) -> None:
        self.tasks.labels(task_type, state).inc()
        self.run_time.labels(task_type).observe(max(0.0, seconds))

    def serve(self, port: int, bind: str) -> None:
        start_http_server(port, addr=bind, registry=self.registry)
