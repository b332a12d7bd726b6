"""Stage 1b: worker speeds, as groups and as tiers.

A worker's speed on a task type is ``Worker.speed(type)``: a learned rate
when there is one, else its advertised ``perf`` (1.0 by default). The engine
sees it on a grid: the nearest power of ``STEP`` (``level``). Workers of one
group must be interchangeable for every class, so a group whose workers run
the round's types at different grid speeds is split by them (fastest first).
Grouping on the grid, not on the exact rate, keeps groups few: learned rates
differ from worker to worker, and a group per worker would make every round's
network as large as the cluster. When every worker has the default speed
nothing changes, and the rest of the engine sees the groups of stage 1.

A class compares the groups it may use by speed tier: the fastest eligible
group with a free slot is tier 0, and a group ``STEP ** t`` times slower on
the grid is tier ``t`` (at most ``MAX_TIER``). Speeds within a few percent
mostly share a grid point, so noise in learned rates does not override the
strategy.

Cost: O(n) for n workers, plus O(C * G) tier computations.
"""

from __future__ import annotations

import math
from functools import lru_cache
from operator import attrgetter

from matchmaker.engine.classes import WorkerGroup
from matchmaker.models import Worker

STEP = 1.25  # one tier: a quarter slower
MAX_TIER = 24  # 1.25 ** 24 ~ 211x, beyond the range of speeds
_LOG_STEP = math.log(STEP)
_timed = attrgetter("timed")


@lru_cache(maxsize=4096)  # a round asks it of every timed worker, and speeds repeat
def level(speed: float) -> int:
    """A speed's place on the grid: ``speed`` is about ``STEP ** level(speed)``."""
    return round(math.log(speed) / _LOG_STEP)


def group_speed(group: WorkerGroup, task_type: str) -> float:
    """The grid speed of the group's workers on a type (they all share it after the split)."""
    return float(STEP ** level(group.workers[0].speed(task_type)))


def split_by_speed(groups: list[WorkerGroup], types: frozenset[str]) -> list[WorkerGroup]:
    """The groups, with every group of mixed grid speeds split into groups of one each."""
    out: list[WorkerGroup] = []
    ordered = sorted(types)
    for g in groups:
        if not any(map(_timed, g.workers)):
            out.append(g)
            continue
        mine = [t for t in ordered if t in g.capabilities]
        keys = _grid_keys(g.workers, mine)
        if keys.count(keys[0]) == len(keys):
            out.append(g)
            continue
        parts: dict[tuple[int, ...], list[Worker]] = {}
        for key, w in zip(keys, g.workers, strict=True):
            parts.setdefault(key, []).append(w)
        for key in sorted(parts, reverse=True):
            out.append(WorkerGroup(parts[key], g.running, g.free, g.capabilities, dict(g.values)))
    return out


def _grid_keys(workers: list[Worker], types: list[str]) -> list[tuple[int, ...]]:
    """Each worker's grid speeds on ``types``; one type (the usual round) without a
    generator per worker."""
    if len(types) == 1:
        t = types[0]
        return [(level(w.speed(t)),) for w in workers]
    return [tuple(level(w.speed(t)) for t in types) for w in workers]


def tier(speed: float, fastest: float) -> int:
    """How many ``STEP``s slower than the fastest a speed is, rounded, at most ``MAX_TIER``."""
    if speed >= fastest:
        return 0
    return min(MAX_TIER, round(math.log(fastest / speed) / _LOG_STEP))
