"""Drain deadlines: when a drained worker's deadline passes, what still runs there is
cancelled on the worker and runs elsewhere.

A drain stops new work going to a worker at once; with a deadline (seconds, from when the
scheduler receives the drain) the scheduler also keeps, in memory, when the tasks still on
the worker must leave it. Once that time passes, each of the worker's tasks gets a cancel
on ``mm.control`` (routing key ``cancel.<worker>``: the worker stops it for real), its
queued dispatches are purged, and the tasks go back to pending with attempt + 1, as for a
worker that left; a late result of the old attempt is ignored. An undrain, or a new drain
without a deadline, forgets the deadline. The ledger keeps each deadline with the drain,
so a scheduler that takes over (or restarts) keeps it too (``from_ledger``); one that
passed meanwhile is acted on at its first sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Evict = Callable[[str, float], int]  # (worker, now) -> how many tasks moved


@dataclass
class DrainDeadlines:
    due_at: dict[str, float] = field(default_factory=dict)  # worker -> wall-clock deadline

    def drained(self, worker: str, on: bool, deadline: float | None, now: float) -> float | None:
        """A drain (``on``) with or without a deadline, or an undrain, received at ``now``;
        when the deadline passes (wall clock), for the ledger."""
        if on and deadline is not None:
            self.due_at[worker] = at = now + deadline
            return at
        self.due_at.pop(worker, None)
        return None

    def due(self, now: float) -> list[str]:
        """The workers whose deadline has passed, forgotten as they are returned."""
        if not self.due_at:
            return []
        passed = sorted(w for w, at in self.due_at.items() if at <= now)
        for worker in passed:
            del self.due_at[worker]
        return passed

    def left(self, worker: str, now: float) -> float | None:
        """Seconds until ``worker``'s deadline (0 when passed), None without one."""
        at = self.due_at.get(worker)
        return None if at is None else max(0.0, at - now)
