"""The pending tasks, kept so that a round need not look at all of them.

Tasks are held by id and, beside that, in groups of the same class key and
priority, each group oldest first. No group can place more tasks in a round
than there are free slots, and within a group the engine always places the
oldest first, so ``oldest(now, limit)`` with ``limit`` = the free slots hands
the engine every task it could place: the same plan, at a cost that grows
with the free slots instead of the backlog.

Each group has two parts, both oldest first: ``arrived``, the tasks that came
in order (a dict keeps that order for free), and ``returned``, the tasks
that came back older than the newest one waiting (a retry, a lost worker's
tasks). Returned tasks are kept as a few sorted runs: the ones returned
since the last round are sorted on their own and become a run, and a run
is merged into the one before it while that one is no more than twice its
size, so there are O(log n) runs and each task is merged O(log n) times. A
round merges the runs with ``arrived`` lazily, so taking back a thousand
tasks costs about a sort of those thousand, not of everything returned
before them. Retry times wait in a heap, so noticing a backoff's end costs
nothing per task.

A round may consider at most ``classes`` groups (a flood of unique
constraints would otherwise make every round build a class per task). The
groups are then taken by rank: highest priority first, then oldest head
first; with aging, by the head's priority plus its wait in aging intervals,
whose floor is the engine's band, so no group of a lower band is considered
while one of a higher band is left out. The rest wait, untouched, for a later
round. Ranks wait in a heap built by the first capped round; an entry is
never better than its group's rank (a head only gets younger, except by an
add, which pushes a new entry), so a popped entry whose rank is stale is
pushed back corrected, and a round pops about as many entries as it takes
groups and places tasks. A group with nothing due is set aside until its
earliest retry time, or until something is added to it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from matchmaker.messages import TaskRequest
from matchmaker.models import Task

Key = tuple[str, int]


@dataclass
class OpenTask:
    """An open task as the scheduler holds it: its request, the engine's view of it, and
    where it is (``state``, ``worker``, ``attempt``, the retry time and the deadline)."""

    request: TaskRequest
    task: Task
    attempt: int = 1
    state: str = "pending"
    worker: str | None = None
    not_before: float = 0.0
    deadline: float = 0.0
    owner: str = ""  # the submitter's broker user ('' if unknown)
    output: dict[str, Any] | None = None  # of the succeeded attempt, for ``on_close``
    error: str | None = None  # of the last failed attempt


Rank = tuple[float, float, str]


def _age(t: OpenTask) -> tuple[float, str]:
    return (t.task.submitted_at, t.task.id)


Run = dict[str, OpenTask]  # oldest first


def _sorted_run(tasks: Iterable[OpenTask]) -> Run:
    return {t.task.id: t for t in sorted(tasks, key=_age)}


class Group:
    """The pending tasks of one class key and priority, oldest first."""

    def __init__(self) -> None:
        self.arrived: Run = {}
        self.runs: list[Run] = []  # returned tasks, each run oldest first
        self.fresh: Run = {}  # returned since the last round, in no order
        self.newest: tuple[float, str] | None = None  # no older than arrived's last

    def add(self, t: OpenTask) -> bool:
        """Add a task; False when it cannot have become the oldest."""
        age = _age(t)
        if self.newest is not None and self.newest > age:
            self.fresh[t.task.id] = t
            return True
        first = not self.arrived
        self.arrived[t.task.id] = t
        self.newest = age
        return first

    def head(self) -> Task:
        """The oldest task, due or not (the group is not empty)."""
        if not self.fresh and not self.runs:
            return next(iter(self.arrived.values())).task
        self._settle()
        firsts = [next(iter(run.values())) for run in (self.arrived, *self.runs) if run]
        return min(firsts, key=_age).task

    def next_due(self) -> float:
        """The earliest retry time of the group's tasks."""
        self._settle()
        runs = (self.arrived, *self.runs)
        return min(t.not_before for run in runs for t in run.values())

    def pop(self, task_id: str) -> None:
        if self.arrived.pop(task_id, None) is not None:
            if not self.arrived:
                self.newest = None
        elif self.fresh.pop(task_id, None) is None:
            for i, run in enumerate(self.runs):
                if run.pop(task_id, None) is not None:
                    if not run:
                        del self.runs[i]
                    break
            else:
                raise KeyError(task_id)

    def __len__(self) -> int:
        return len(self.arrived) + len(self.fresh) + sum(map(len, self.runs))

    def __bool__(self) -> bool:
        return bool(self.arrived or self.fresh or self.runs)  # no run is left empty

    def _settle(self) -> None:
        """The fresh returns become a run; runs merge until each is over twice the next."""
        if self.fresh:
            self.runs.append(_sorted_run(self.fresh.values()))
            self.fresh = {}
        runs = self.runs
        while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
            last = runs.pop()
            runs[-1] = _sorted_run([*runs[-1].values(), *last.values()])  # two runs: a merge

    def oldest(self, now: float, limit: int | None) -> Iterator[Task]:
        self._settle()
        merged: Iterable[OpenTask] = self.arrived.values()
        if self.runs:
            merged = heapq.merge(merged, *(run.values() for run in self.runs), key=_age)
        due = (t.task for t in merged if t.not_before <= now)
        return due if limit is None else islice(due, limit)


class Backlog:
    def __init__(self) -> None:
        self.by_id: dict[str, OpenTask] = {}
        self.groups: dict[Key, Group] = {}
        self.backoffs: list[float] = []  # heap of retry times still to come
        self.ranked: list[tuple[Rank, Key]] | None = None  # heap, once a round was capped
        self.aging = 0.0  # the aging interval the ranks were made with
        self.parked: dict[Key, float] = {}  # groups with nothing due, until when
        self.unpark: list[tuple[float, Key]] = []  # heap of those times

    @staticmethod
    def _key(t: OpenTask) -> Key:
        return (t.task.class_key, t.task.priority)

    def add(self, t: OpenTask) -> None:
        key = self._key(t)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group()
        may_lead = group.add(t)
        if key in self.parked:
            self._push_rank(key, group.head())
        elif may_lead:
            self._push_rank(key, t.task)  # no better than the group's rank: safe
        self.by_id[t.task.id] = t
        if t.not_before:
            heapq.heappush(self.backoffs, t.not_before)

    def backoff_ended(self, now: float) -> bool:
        """Whether some retry became due since the last call (a round may place it now)."""
        ended = False
        while self.backoffs and self.backoffs[0] <= now:
            heapq.heappop(self.backoffs)
            ended = True
        return ended

    def pop(self, task_id: str) -> OpenTask | None:
        t = self.by_id.pop(task_id, None)
        if t is not None:
            key = self._key(t)
            group = self.groups[key]
            group.pop(task_id)
            if not group:
                del self.groups[key]
                self.parked.pop(key, None)
        return t

    def oldest(
        self,
        now: float,
        limit: int | None = None,
        classes: int | None = None,
        aging_interval: float = 0.0,
    ) -> list[Task]:
        """The due tasks, or at most ``limit`` of each group, oldest first; with ``classes``,
        of at most that many groups, by rank (``aging_interval`` as the engine's policy)."""
        groups: Iterable[Group] = self.groups.values()
        if classes is not None and len(self.groups) > classes:
            groups = self._ranked_groups(now, classes, aging_interval)
        out: list[Task] = []
        for group in groups:
            out.extend(group.oldest(now, limit))
        return out

    # -- ranks, for a capped round ---------------------------------------------

    def _rank(self, key: Key, head: Task) -> Rank:
        if self.aging > 0:
            return (head.submitted_at - head.priority * self.aging, -head.priority, key[0])
        return (-head.priority, head.submitted_at, key[0])

    def _push_rank(self, key: Key, head: Task) -> None:
        self.parked.pop(key, None)
        if self.ranked is not None:
            heapq.heappush(self.ranked, (self._rank(key, head), key))

    def _rerank(self, aging_interval: float) -> None:
        self.aging = aging_interval
        self.ranked = [(self._rank(k, g.head()), k) for k, g in self.groups.items()]
        heapq.heapify(self.ranked)
        self.parked.clear()
        self.unpark.clear()

    def _ranked_groups(self, now: float, k: int, aging_interval: float) -> list[Group]:
        """The k best-ranked groups with something due."""
        ranked = self.ranked
        if ranked is None or self.aging != aging_interval or len(ranked) > 2 * len(self) + 1024:
            self._rerank(aging_interval)
            ranked = self.ranked
        assert ranked is not None
        while self.unpark and self.unpark[0][0] <= now:
            when, key = heapq.heappop(self.unpark)
            group = self.groups.get(key)
            if group is not None and self.parked.get(key) == when:
                self._push_rank(key, group.head())
        chosen: dict[Key, tuple[Rank, Group]] = {}
        while ranked and len(chosen) < k:
            rank, key = heapq.heappop(ranked)
            group = self.groups.get(key)
            if group is None or key in chosen or key in self.parked:
                continue  # gone, or a second entry
            real = self._rank(key, group.head())
            if real != rank:
                heapq.heappush(ranked, (real, key))
            elif next(group.oldest(now, 1), None) is not None:
                chosen[key] = (rank, group)
            else:
                when = self.parked[key] = group.next_due()
                heapq.heappush(self.unpark, (when, key))
        for key, (rank, _) in chosen.items():
            heapq.heappush(ranked, (rank, key))
        return [group for _, group in chosen.values()]

    def get(self, task_id: str) -> OpenTask | None:
        return self.by_id.get(task_id)

    def __getitem__(self, task_id: str) -> OpenTask:
        return self.by_id[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_id)

    def __len__(self) -> int:
        return len(self.by_id)

    def values(self) -> Iterator[OpenTask]:
        return iter(self.by_id.values())
