"""The simulated workloads: who the workers are and what work arrives when.

A ``Scenario`` is a list of ``SimWorker`` and a ``Workload`` (engine ``Task``
objects, their arrival times and base durations). Push and pull run the very
same scenario object. A task's run time on a worker is its base duration
divided by the worker's speed.

Common ground: four task types (the gateway's env_setup, data_staging,
job_submission, output_staging), workers with 4 slots that run every type,
three sites, log-normal durations (sigma 0.8) with mean ``mean_duration``, and
Poisson arrivals whose rate offers ``load`` times the capacity
(sum of slots x speed / mean duration).

- ``homogeneous``: identical workers, priority 0, no constraints; load 0.9.
- ``heterogeneous``: worker speeds 0.5, 1 or 2 (a third each); load 0.9.
- ``constraints``: 20 % of workers have a GPU; 25 % of tasks need one site,
  10 % need ``gpu >= 1``, 40 % prefer a site (soft); load 0.8.
- ``priorities``: priorities 0..9 uniform, arriving at load 1.5 (a backlog
  builds, then drains): who gets the contested slots.
- ``failure``: homogeneous at load 0.8, and 10 % of the workers crash at 40 %
  of the arrival window and never come back.
- ``trace``: an SWF log replayed (``benchmarks.trace`` documents the mapping).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from matchmaker.models import Task

FloatArray = npt.NDArray[np.float64]

TYPES = ("env_setup", "data_staging", "job_submission", "output_staging")
SITES = ("iu", "tacc", "sdsc")
SLOTS = 4
NAMES = ("homogeneous", "heterogeneous", "constraints", "priorities", "failure", "trace")


@dataclass(frozen=True)
class SimWorker:
    """A simulated worker; ``fails_at`` (sim seconds) is when it crashes, if ever."""

    name: str
    capabilities: tuple[str, ...]
    slots: int
    speed: float = 1.0
    attributes: dict[str, Any] = field(default_factory=dict)
    fails_at: float | None = None


@dataclass
class Workload:
    """Tasks in arrival order: ``tasks[i]`` arrives at ``arrival[i]`` (= its submitted_at)."""

    tasks: list[Task]
    arrival: FloatArray
    duration: FloatArray

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass
class Scenario:
    name: str
    description: str
    workers: list[SimWorker]
    workload: Workload
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScenarioParams:
    tasks: int = 20_000
    workers: int = 200
    seed: int = 1
    mean_duration: float = 1.0


def durations(rng: np.random.Generator, count: int, mean: float, sigma: float = 0.8) -> FloatArray:
    """Log-normal durations with the given mean."""
    mu = np.log(mean) - sigma**2 / 2
    return np.asarray(rng.lognormal(mu, sigma, count), dtype=np.float64)


def poisson_arrivals(
    rng: np.random.Generator, count: int, load: float, capacity: float, mean: float
) -> FloatArray:
    """Arrival times of a Poisson stream offering ``load`` x ``capacity`` slot-seconds/s."""
    rate = load * capacity / mean
    return np.cumsum(rng.exponential(1.0 / rate, count))


def _workers(
    count: int, speeds: FloatArray | None = None, gpu_share: float = 0.0
) -> list[SimWorker]:
    workers = []
    gpus = round(count * gpu_share)
    for k in range(count):
        gpu = int(k * gpus // count != (k + 1) * gpus // count)
        attributes: dict[str, Any] = {"site": SITES[k % len(SITES)], "gpu": gpu}
        speed = 1.0 if speeds is None else float(speeds[k])
        workers.append(SimWorker(f"w{k:05d}", TYPES, SLOTS, speed, attributes))
    return workers


def _tasks(
    arrival: FloatArray,
    types: npt.NDArray[np.int64],
    priority: npt.NDArray[np.int64] | None = None,
    constraints: list[dict[str, Any]] | None = None,
    preferences: list[dict[str, Any]] | None = None,
) -> list[Task]:
    tasks = []
    for i in range(len(arrival)):
        tasks.append(
            Task(
                f"t{i}",
                TYPES[int(types[i])],
                priority=0 if priority is None else int(priority[i]),
                constraints=constraints[i] if constraints else {},
                preferences=preferences[i] if preferences else {},
                submitted_at=float(arrival[i]),
            )
        )
    return tasks


def _basic(
    p: ScenarioParams, load: float, speeds: FloatArray | None = None
) -> tuple[np.random.Generator, list[SimWorker], FloatArray, FloatArray, npt.NDArray[np.int64]]:
    rng = np.random.default_rng(p.seed)
    workers = _workers(p.workers, speeds)
    capacity = sum(w.slots * w.speed for w in workers)
    arrival = poisson_arrivals(rng, p.tasks, load, capacity, p.mean_duration)
    duration = durations(rng, p.tasks, p.mean_duration)
    types = rng.integers(0, len(TYPES), p.tasks)
    return rng, workers, arrival, duration, types


def homogeneous(p: ScenarioParams) -> Scenario:
    _, workers, arrival, duration, types = _basic(p, 0.9)
    return Scenario(
        "homogeneous",
        "identical workers, one priority, no constraints, load 0.9",
        workers,
        Workload(_tasks(arrival, types), arrival, duration),
    )


def heterogeneous(p: ScenarioParams) -> Scenario:
    rng = np.random.default_rng(p.seed + 1000)
    speeds = rng.choice(np.array([0.5, 1.0, 2.0]), p.workers)
    _, workers, arrival, duration, types = _basic(p, 0.9, speeds)
    return Scenario(
        "heterogeneous",
        "worker speeds 0.5x / 1x / 2x, load 0.9 of the speed-weighted capacity",
        workers,
        Workload(_tasks(arrival, types), arrival, duration),
    )


def constraints(p: ScenarioParams) -> Scenario:
    rng = np.random.default_rng(p.seed)
    workers = _workers(p.workers, gpu_share=0.2)
    capacity = sum(w.slots * w.speed for w in workers)
    arrival = poisson_arrivals(rng, p.tasks, 0.8, capacity, p.mean_duration)
    duration = durations(rng, p.tasks, p.mean_duration)
    types = rng.integers(0, len(TYPES), p.tasks)
    kind = rng.random(p.tasks)
    sites = rng.integers(0, len(SITES), p.tasks)
    prefers = rng.random(p.tasks) < 0.4
    cons: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    for i in range(p.tasks):
        site = SITES[int(sites[i])]
        if kind[i] < 0.25:
            cons.append({"site": site})
        elif kind[i] < 0.35:
            cons.append({"gpu": {">=": 1}})
        else:
            cons.append({})
        prefs.append({"site": [site]} if prefers[i] and not kind[i] < 0.25 else {})
    return Scenario(
        "constraints",
        "25% of tasks need a site, 10% need a GPU (20% of workers), 40% prefer a site; load 0.8",
        workers,
        Workload(_tasks(arrival, types, None, cons, prefs), arrival, duration),
    )


def priorities(p: ScenarioParams) -> Scenario:
    rng, workers, arrival, duration, types = _basic(p, 1.5)
    priority = rng.integers(0, 10, p.tasks)
    return Scenario(
        "priorities",
        "priorities 0..9 arriving at load 1.5: a backlog builds, then drains",
        workers,
        Workload(_tasks(arrival, types, priority), arrival, duration),
    )


def failure(p: ScenarioParams) -> Scenario:
    _, workers, arrival, duration, types = _basic(p, 0.8)
    crash = float(arrival[-1]) * 0.4
    step = 10
    failed = [
        SimWorker(w.name, w.capabilities, w.slots, w.speed, w.attributes, crash)
        if k % step == 0
        else w
        for k, w in enumerate(workers)
    ]
    return Scenario(
        "failure",
        f"load 0.8; every {step}th worker crashes at t={crash:.1f} s and stays down",
        failed,
        Workload(_tasks(arrival, types), arrival, duration),
        {"crash_at": crash, "crashed": sum(1 for w in failed if w.fails_at is not None)},
    )


BUILDERS: dict[str, Callable[[ScenarioParams], Scenario]] = {
    "homogeneous": homogeneous,
    "heterogeneous": heterogeneous,
    "constraints": constraints,
    "priorities": priorities,
    "failure": failure,
}
