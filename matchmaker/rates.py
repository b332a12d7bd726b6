"""Learned service rates: how fast each worker runs each task type, from its run times.

Model. For a worker w and a type T the scheduler keeps a decaying average of
w's run times of T: each observation has weight 1 and every earlier one is
multiplied by ``decay``. The worker's advertised ``perf`` enters as a prior
worth ``prior_weight`` observations made before the first run (so it decays
like them) of ``base(T) / perf``, where ``base(T)`` is the decaying average,
over every worker, of ``seconds * perf`` (a run time brought back to the
reference speed). With p the prior's decayed weight, the estimate is

    seconds(w, T) = (p * base(T) / perf + sum of decayed runs)
                    / (p + sum of decayed weights)

and the relative speed handed to the engine is ``base(T) / seconds(w, T)``,
kept in ``MIN_SPEED..MAX_SPEED``. Before any run of T, the speed is
``perf``; after many runs, it is what the runs say. ``speeds()`` rounds it
to the engine's tier grid (powers of ``engine.speed.STEP``): the engine
tells speeds apart only by tiers, and workers that run alike then form one
worker group. Only the ratios between workers
matter to the engine, so a type's scale (milliseconds or hours) does not.

Pure and single-threaded: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matchmaker.engine.speed import STEP
from matchmaker.models import MAX_SPEED, MIN_SPEED

SHORTEST = 1e-6  # run times are counted as at least a microsecond


@dataclass
class _Average:
    prior: float = 0.0
    total: float = 0.0
    weight: float = 0.0

    def add(self, value: float, decay: float) -> None:
        self.prior *= decay
        self.total = self.total * decay + value
        self.weight = self.weight * decay + 1.0


@dataclass
class ServiceRates:
    """Per (worker, type) run-time averages, blended with each worker's advertised perf."""

    decay: float = 0.9
    prior_weight: float = 3.0
    _runs: dict[str, dict[str, _Average]] = field(default_factory=dict, repr=False)
    _base: dict[str, _Average] = field(default_factory=dict, repr=False)
    _perf: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        if not (self.prior_weight >= 0 and math.isfinite(self.prior_weight)):
            raise ValueError("prior_weight must be a finite number >= 0")

    def advertise(self, worker: str, perf: float) -> None:
        """The worker's advertised relative speed (its prior); 1.0 until told otherwise."""
        if not (math.isfinite(perf) and MIN_SPEED <= perf <= MAX_SPEED):
            raise ValueError(f"perf of {worker!r} must be from {MIN_SPEED:g} to {MAX_SPEED:g}")
        self._perf[worker] = perf

    def forget(self, worker: str) -> None:
        """Drop a worker that left (its runs stay in the types' base averages)."""
        self._perf.pop(worker, None)
        self._runs.pop(worker, None)

    def observe(self, worker: str, task_type: str, seconds: float) -> None:
        """One finished run of ``task_type`` on ``worker`` that took ``seconds``."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"run time of {task_type!r} on {worker!r} is not a number")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"run time of {task_type!r} on {worker!r} must be finite and >= 0")
        seconds = max(float(seconds), SHORTEST)
        mine = self._runs.setdefault(worker, {})
        mine.setdefault(task_type, _Average(self.prior_weight)).add(seconds, self.decay)
        perf = self._perf.get(worker, 1.0)
        self._base.setdefault(task_type, _Average()).add(seconds * perf, self.decay)

    def rate(self, worker: str, task_type: str) -> float:
        """The worker's relative speed on the type (1.0 = the reference speed)."""
        perf = self._perf.get(worker, 1.0)
        base = self._base.get(task_type)
        runs = self._runs.get(worker, {}).get(task_type)
        if base is None or runs is None:
            return perf
        reference = base.total / base.weight
        seconds = (runs.prior * reference / perf + runs.total) / (runs.prior + runs.weight)
        return min(MAX_SPEED, max(MIN_SPEED, reference / seconds))

    def speeds(self, worker: str) -> dict[str, float]:
        """The learned speed of every type the worker has run, on the tier grid:
        ``Worker(speeds=...)``."""
        return {t: on_grid(self.rate(worker, t)) for t in self._runs.get(worker, {})}


def on_grid(speed: float) -> float:
    """The power of ``STEP`` nearest to a speed (in log terms), within the speed range."""
    power = STEP ** round(math.log(speed) / math.log(STEP))
    return min(MAX_SPEED, max(MIN_SPEED, power))
