"""Prometheus metrics of the scheduler, served over HTTP when a port is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

COUNTERS = ("submitted", "duplicates", "placements", "retries", "reschedules", "dead", "rejected")


class Metrics:
    def __init__(self, port: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.pending = Gauge(
            "mm_pending_tasks", "Tasks waiting for a round", registry=self.registry
        )
        self.assigned = Gauge(
            "mm_assigned_tasks", "Tasks pushed, not yet running", registry=self.registry
        )
        self.running = Gauge(
            "mm_running_tasks", "Tasks a worker reported running", registry=self.registry
        )
        self.workers = Gauge("mm_live_workers", "Workers in the inventory", registry=self.registry)
        self.round_seconds = Histogram(
            "mm_round_seconds",
            "Duration of a scheduling round (plan and push)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.counters = {
            name: Counter(f"mm_{name}", f"Tasks {name}", registry=self.registry)
            for name in COUNTERS
        }
        self._seen: dict[str, int] = {}
        if port:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def sync(self, counts: dict[str, int]) -> None:
        """Advance the counters to the totals the book keeps."""
        for name, counter in self.counters.items():
            total = counts.get(name, 0)
            delta = total - self._seen.get(name, 0)
            if delta > 0:
                counter.inc(delta)
                self._seen[name] = total
