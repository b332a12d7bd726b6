"""What one simulated run leaves behind, and the metrics computed from it.

Both modes fill a ``RunRecord``: per task the start and finish of the run
that completed it (the first completion; later ones are counted as
duplicates), the worker, whether that worker matched the task's
preferences and constraints; the busy-slot and live-capacity step functions
over time; and the counters of the mode (requeues, rounds, plan() seconds).

Metrics: makespan (last finish - first arrival), t99 (when 99 % of the tasks
had finished: the makespan without the luck of where the longest task ran),
throughput (tasks / makespan), wait = start - arrival (p50/p95/p99 overall, per priority,
and for priorities 7-9 together), completion = finish - arrival (wait + run),
utilisation (busy slot-seconds / live slot-seconds from the first arrival to
t99, so the drain of the last few long tasks does not hide how well the slots
were used; work lost on a crashed worker counts as busy; the same ratio over
the whole makespan is ``utilisation_makespan``), locality hits (tasks with a
preference that ran where they preferred / tasks with a preference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.scenarios import Scenario
from matchmaker.models import Task, Worker

FloatArray = npt.NDArray[np.float64]
CDF_POINTS = 200
SERIES_POINTS = 200
HIGH = 7  # priorities HIGH..9 are "the high priorities" of the priorities target


def check_placement(task: Task, worker: Worker) -> tuple[bool, bool]:
    """(matches every preference, violates a constraint)."""
    local = bool(task.preferences) and all(
        p.allows(worker.attributes.get(p.attribute)) for p in task.preferences
    )
    return local, not task.feasible_on(worker)


@dataclass
class RunRecord:
    mode: str
    size: int
    start: FloatArray = field(init=False)
    finish: FloatArray = field(init=False)
    worker: npt.NDArray[np.int64] = field(init=False)
    local: npt.NDArray[np.bool_] = field(init=False)
    violation: npt.NDArray[np.bool_] = field(init=False)
    busy_t: list[float] = field(default_factory=list)
    busy_d: list[int] = field(default_factory=list)
    cap_t: list[float] = field(default_factory=list)
    cap_d: list[int] = field(default_factory=list)
    completions: int = 0
    duplicates: int = 0
    lost_runs: int = 0
    requeues: int = 0
    rounds: int = 0
    plan_seconds: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.start = np.full(self.size, np.nan)
        self.finish = np.full(self.size, np.nan)
        self.worker = np.full(self.size, -1, dtype=np.int64)
        self.local = np.zeros(self.size, dtype=np.bool_)
        self.violation = np.zeros(self.size, dtype=np.bool_)

    def busy(self, t: float, delta: int) -> None:
        self.busy_t.append(t)
        self.busy_d.append(delta)

    def capacity(self, t: float, delta: int) -> None:
        self.cap_t.append(t)
        self.cap_d.append(delta)

    def complete(
        self, i: int, started: float, t: float, worker: int, local: bool, violation: bool
    ) -> None:
        if not np.isnan(self.finish[i]):
            self.duplicates += 1
            return
        self.completions += 1
        self.start[i] = started
        self.finish[i] = t
        self.worker[i] = worker
        self.local[i] = local
        self.violation[i] = violation


def _integral(times: list[float], deltas: list[int], edges: FloatArray) -> FloatArray:
    """The integral of the step function (sum of deltas so far) at each edge."""
    if not times:
        return np.zeros(len(edges))
    order = np.argsort(np.asarray(times), kind="stable")
    t = np.asarray(times)[order]
    level = np.cumsum(np.asarray(deltas, dtype=np.float64)[order])
    area = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(t))])
    at = np.searchsorted(t, edges, side="right") - 1
    before = at < 0
    at = np.maximum(at, 0)
    out = area[at] + level[at] * (edges - t[at])
    out[before] = 0.0
    return np.asarray(out, dtype=np.float64)


def _percentiles(values: FloatArray) -> dict[str, float]:
    if len(values) == 0:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "p999": nan, "max": nan, "mean": nan}
    p50, p95, p99, p999 = np.percentile(values, [50, 95, 99, 99.9])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "p999": float(p999),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def metrics(record: RunRecord, scenario: Scenario) -> dict[str, Any]:
    """The per-run figures reported in the table and the JSON."""
    load = scenario.workload
    done = ~np.isnan(record.finish)
    arrival = load.arrival
    first = float(arrival.min()) if len(arrival) else 0.0
    makespan = float(np.nanmax(record.finish) - first) if done.any() else 0.0
    wait = (record.start - arrival)[done]
    priority = np.array([t.priority for t in load.tasks])
    per_priority = {
        str(p): _percentiles(wait[priority[done] == p]) for p in sorted(set(priority.tolist()))
    }
    wants = np.array([bool(t.preferences) for t in load.tasks])
    with_pref = int(wants[done].sum())
    t99 = float(np.percentile(record.finish[done], 99) - first) if done.any() else 0.0
    edges = np.linspace(first, first + makespan, SERIES_POINTS + 1)
    busy = _integral(record.busy_t, record.busy_d, edges)
    cap = _integral(record.cap_t, record.cap_d, edges)
    until = np.array([first, first + t99])
    busy99 = np.diff(_integral(record.busy_t, record.busy_d, until))[0]
    cap99 = np.diff(_integral(record.cap_t, record.cap_d, until))[0]
    d_busy, d_cap = np.diff(busy), np.diff(cap)
    series = np.divide(d_busy, d_cap, out=np.zeros_like(d_busy), where=d_cap > 0)
    sorted_wait = np.sort(wait)
    q = np.linspace(0, 1, CDF_POINTS)
    cdf_x = np.quantile(sorted_wait, q) if len(sorted_wait) else q * 0
    return {
        "tasks": len(load),
        "completed": record.completions,
        "lost": len(load) - record.completions,
        "duplicates": record.duplicates,
        "lost_runs": record.lost_runs,
        "makespan": makespan,
        "t99": t99,
        "throughput": record.completions / makespan if makespan > 0 else 0.0,
        "wait": _percentiles(wait),
        "wait_by_priority": per_priority if len(per_priority) > 1 else {},
        "wait_high": _percentiles(wait[priority[done] >= HIGH]) if len(per_priority) > 1 else None,
        "completion": _percentiles((record.finish - arrival)[done]),
        "utilisation": float(busy99 / cap99) if cap99 > 0 else 0.0,
        "utilisation_makespan": float(busy[-1] / cap[-1]) if cap[-1] > 0 else 0.0,
        "requeues": record.requeues,
        "constraint_violations": int(record.violation[done].sum()),
        "locality_hits": int(record.local[done & wants].sum()),
        "with_preference": with_pref,
        "locality_rate": float(record.local[done & wants].sum() / with_pref) if with_pref else None,
        "rounds": record.rounds,
        "scheduler_cpu_per_task_us": 1e6 * record.plan_seconds / max(record.completions, 1),
        "round_ms": _percentiles(np.asarray(record.round_seconds) * 1e3)
        if record.round_seconds
        else None,
        "wall_seconds": record.wall_seconds,
        "wait_cdf": {"seconds": cdf_x.tolist(), "fraction": q.tolist()},
        "utilisation_series": {
            "t": ((edges[:-1] + edges[1:]) / 2).tolist(),
            "busy": series.tolist(),
        },
    }
