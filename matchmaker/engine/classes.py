"""Stage 1: equivalence classes of tasks and of workers.

Tasks with the same type, constraints, preferences and priority band form a
class: one flow node whose supply is its size. A task's band is its priority
plus one for every ``Policy.aging_interval`` seconds it has waited, so aging
is just a move to a higher class. Bands stop at ``MAX_BAND`` (a million
intervals of waiting), which keeps costs far inside int64.

Workers that look the same to every class of the round (same capabilities
among the round's task types, same values of the attributes some class
mentions, same running and free counts) form a group: one flow node.

Cost: O(m + n) dictionary operations for m tasks and n workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter, itemgetter

import numpy as np
import numpy.typing as npt

from matchmaker.models import Policy, Scalar, Task, Worker, worker_value

MAX_BAND = 1_000_000
FEW = 16  # rounds of at most this many tasks are grouped without numpy

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]

_id = attrgetter("id")
_class_key = attrgetter("class_key")
_priority = attrgetter("priority")
_submitted_at = attrgetter("submitted_at")


@dataclass
class TaskClass:
    """Tasks interchangeable for the solver, kept as indices into the round's tasks.

    Ordering is lazy: ``oldest(k)`` sorts only the k tasks a round places, so a
    round's cost grows with what it places, not with the backlog.
    """

    key: str
    band: int
    sample: Task
    members: IntArray
    submitted: FloatArray
    ids: ObjectArray

    @property
    def size(self) -> int:
        return len(self.members)

    def oldest(self, k: int) -> tuple[list[str], list[str]]:
        """The ids of the k oldest tasks, oldest first (ties by id), and the ids of the rest."""
        ids, members, submitted = self.ids, self.members, self.submitted
        if len(members) <= FEW and (k == 0 or k >= len(members)):  # all or none, in Python
            order = members.tolist()
            if k == 0:
                return [], [ids[i] for i in order]
            stamp = dict(zip(order, submitted.tolist(), strict=True))
            order.sort(key=lambda i: (stamp[i], ids[i]))
            return [ids[i] for i in order], []
        if k >= len(members):
            chosen, rest = members, members[:0]
        elif k == 0:
            chosen, rest = members[:0], members
        else:
            cutoff = np.partition(submitted, k - 1)[k - 1]
            below, at = submitted < cutoff, submitted == cutoff
            ties = sorted(members[at].tolist(), key=ids.__getitem__)
            need = k - int(below.sum())
            chosen = np.concatenate([members[below], np.asarray(ties[:need], dtype=np.int64)])
            rest = np.concatenate(
                [members[submitted > cutoff], np.asarray(ties[need:], dtype=np.int64)]
            )
        stamps = self.stamp_of(chosen)
        order = np.argsort(stamps, kind="stable")
        chosen, stamps = chosen[order], stamps[order]
        placed: list[str] = ids[chosen].tolist()
        if len(stamps) > 1 and (np.diff(stamps) == 0).any():
            placed = [i for _, i in sorted(zip(stamps.tolist(), placed, strict=True))]
        return placed, ids[rest].tolist()

    def stamp_of(self, chosen: IntArray) -> FloatArray:
        position = np.searchsorted(self.members, chosen)
        return self.submitted[position]


@dataclass
class WorkerGroup:
    """Workers interchangeable for every class of the round, in name order."""

    workers: list[Worker]
    running: int
    free: int
    capabilities: frozenset[str]
    values: dict[str, Scalar | None] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def total_free(self) -> int:
        return self.free * len(self.workers)


def task_classes(tasks: Sequence[Task], policy: Policy) -> list[TaskClass]:
    """Group tasks into classes, highest band first, then by key (members in input order).

    Up to ``FEW`` tasks, plain Python: numpy's fixed cost per call would be
    most of such a round, the usual one at low load. Above, vectorised.
    """
    if len(tasks) <= FEW:
        return _few_classes(tasks, policy)
    return _many_classes(tasks, policy)


def band_of(task: Task, policy: Policy) -> int:
    """The task's priority plus one per ``aging_interval`` waited, at most ``MAX_BAND``."""
    if policy.now is None or policy.aging_interval <= 0:
        return task.priority
    waited = (policy.now - task.submitted_at) / policy.aging_interval
    if not waited > 0:  # not yet submitted, or NaN
        return task.priority
    if waited >= MAX_BAND:
        return MAX_BAND
    return min(task.priority + math.floor(waited), MAX_BAND)


def _few_classes(tasks: Sequence[Task], policy: Policy) -> list[TaskClass]:
    rows = sorted((-band_of(t, policy), t.class_key, i) for i, t in enumerate(tasks))
    ids = np.array([t.id for t in tasks], dtype=object)
    classes = []
    for (negative_band, key), group in groupby(rows, key=itemgetter(0, 1)):
        members = [i for _, _, i in group]  # ascending: the sort's last key
        submitted = np.array([tasks[i].submitted_at for i in members], dtype=np.float64)
        members_array = np.array(members, dtype=np.int64)
        sample = tasks[members[0]]
        classes.append(TaskClass(key, -negative_band, sample, members_array, submitted, ids))
    return classes


def _many_classes(tasks: Sequence[Task], policy: Policy) -> list[TaskClass]:
    """Vectorised: one pass over the tasks reads id, key, priority and
    submission time; numpy computes the bands and sorts by class."""
    m = len(tasks)
    if m == 0:
        return []
    ids = np.fromiter(map(_id, tasks), object, m)
    class_keys = list(map(_class_key, tasks))
    key_ids = {k: i for i, k in enumerate(dict.fromkeys(class_keys))}
    keys = list(key_ids)
    key_rank = np.empty(len(keys), np.int64)
    key_rank[sorted(range(len(keys)), key=keys.__getitem__)] = np.arange(len(keys))
    rank = key_rank[np.fromiter(map(key_ids.__getitem__, class_keys), np.int64, m)]
    band = np.fromiter(map(_priority, tasks), np.int64, m)
    submitted = np.fromiter(map(_submitted_at, tasks), np.float64, m)
    if policy.now is not None and policy.aging_interval > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            waited = np.floor(np.maximum(policy.now - submitted, 0.0) / policy.aging_interval)
        waited = np.nan_to_num(waited, nan=0.0, posinf=MAX_BAND)
        band = np.minimum(band + np.minimum(waited, MAX_BAND).astype(np.int64), MAX_BAND)
    combined = (MAX_BAND - band) * len(keys) + rank
    order = np.argsort(combined, kind="stable")
    combined = combined[order]
    cut = np.flatnonzero(np.diff(combined)) + 1
    classes = []
    for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, m].tolist(), strict=True):
        members = np.sort(order[a:b])
        sample = tasks[int(members[0])]
        key_band = int(band[members[0]])
        classes.append(
            TaskClass(sample.class_key, key_band, sample, members, submitted[members], ids)
        )
    return classes


def duplicate_ids_message(tasks: Sequence[Task]) -> str:
    """The error for a round whose tasks repeat an id (found by the plan's size)."""
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            return f"duplicate task id {t.id!r}: task ids must be unique in a round"
        seen.add(t.id)
    return "task ids must be unique in a round"


def referenced_attributes(classes: Iterable[TaskClass]) -> list[str]:
    """The worker attributes that some class constrains or prefers."""
    names: set[str] = set()
    for c in classes:
        names.update(x.attribute for x in c.sample.constraints)
        names.update(x.attribute for x in c.sample.preferences)
    return sorted(names)


def worker_groups(
    workers: Sequence[Worker], types: frozenset[str], attributes: Sequence[str]
) -> list[WorkerGroup]:
    """Group workers by what the round can tell apart, in a deterministic order.

    Two passes: workers by (profile, running, slots), a cheap key; then those
    few buckets merged by what the round's classes look at (read once per profile).
    """
    buckets: dict[tuple[str, int, int], list[Worker]] = {}
    for w in workers:
        buckets.setdefault((w.profile, w.running, w.slots), []).append(w)
    if sum(map(len, buckets.values())) != len({w.name for w in workers}):
        seen: set[str] = set()
        for w in workers:
            if w.name in seen:
                raise ValueError(f"duplicate worker name {w.name!r}: worker names must be unique")
            seen.add(w.name)
    by_name = "name" in attributes
    looks: dict[str, tuple[frozenset[str], dict[str, Scalar | None], tuple[str, ...]]] = {}
    groups: dict[tuple[frozenset[str], tuple[str, ...], int, int], WorkerGroup] = {}
    for members in buckets.values():
        for part in ([w] for w in members) if by_name else [members]:
            w = part[0]
            look = None if by_name else looks.get(w.profile)
            if look is None:  # what the round sees of a profile, once per profile
                caps = w.capabilities & types
                values = {a: worker_value(w, a) for a in attributes}
                look = caps, values, tuple(repr(v) for v in values.values())
                if not by_name:
                    looks[w.profile] = look
            caps, values, shown = look
            key = (caps, shown, w.running, w.free)
            group = groups.get(key)
            if group is None:
                group = groups[key] = WorkerGroup([], w.running, w.free, caps, dict(values))
            group.workers.extend(part)
    order = {repr((sorted(k[0]), list(k[1]), k[2], k[3])): g for k, g in groups.items()}
    ordered = [order[k] for k in sorted(order)]
    for g in ordered:
        g.workers.sort(key=attrgetter("name"))
    return ordered
