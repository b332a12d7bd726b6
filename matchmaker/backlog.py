"""The pending tasks, kept so that a round need not look at all of them.

Tasks are held by id and, beside that, in groups of the same class key and
priority, each group oldest first. No group can place more tasks in a round
than there are free slots, and within a group the engine always places the
oldest first, so ``oldest(now, limit)`` with ``limit`` = the free slots hands
the engine every task it could place: the same plan, at a cost that grows
with the free slots instead of the backlog.

A group stays in arrival order while tasks arrive in order; a task that comes
back (a retry, a lost worker) marks its group for one sort at the next round.
Retry times wait in a heap, so noticing a backoff's end costs nothing per task.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

from matchmaker.models import Task

if TYPE_CHECKING:
    from matchmaker.book import OpenTask

Key = tuple[str, int]


def _age(t: OpenTask) -> tuple[float, str]:
    return (t.task.submitted_at, t.task.id)


class Backlog:
    def __init__(self) -> None:
        self.by_id: dict[str, OpenTask] = {}
        self.groups: dict[Key, dict[str, OpenTask]] = {}
        self.unsorted: set[Key] = set()
        self.backoffs: list[float] = []  # heap of retry times still to come

    @staticmethod
    def _key(t: OpenTask) -> Key:
        return (t.task.class_key, t.task.priority)

    def add(self, t: OpenTask) -> None:
        key = self._key(t)
        group = self.groups.setdefault(key, {})
        if group and _age(next(reversed(group.values()))) > _age(t):
            self.unsorted.add(key)
        group[t.task.id] = t
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
            del group[task_id]
            if not group:
                del self.groups[key]
                self.unsorted.discard(key)
        return t

    def oldest(self, now: float, limit: int | None = None) -> list[Task]:
        """The due tasks, or at most ``limit`` of each group, oldest first."""
        for key in self.unsorted:
            group = self.groups[key]
            self.groups[key] = dict(sorted(group.items(), key=lambda item: _age(item[1])))
        self.unsorted.clear()
        out: list[Task] = []
        for group in self.groups.values():
            due = (t.task for t in group.values() if t.not_before <= now)
            out.extend(due if limit is None else islice(due, limit))
        return out

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
