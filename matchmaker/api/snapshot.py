"""What the loop hands the API: an immutable view of its live state, made in the loop's
thread (plain tuples and dicts, built fresh each time and never changed after), and a
short history of them for the rounds and throughput series.

The API thread only swaps and reads references; it never touches the loop's objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 720  # samples kept: six minutes at one per PUBLISH_INTERVAL
PUBLISH_INTERVAL = 0.5


@dataclass(frozen=True)
class Snapshot:
    at: float
    workers: tuple[dict[str, Any], ...]
    pending: int
    in_flight: int
    running: int
    counters: dict[str, int]
    rounds: int  # rounds run so far
    round_seconds: float  # their total time
    seq: int = 0


@dataclass(frozen=True)
class Sample:
    """One interval between two snapshots: what happened in it."""

    at: float
    seconds: float
    rounds: int
    round_ms: float  # mean round time in the interval (0 with no round)
    placed: int
    succeeded: int
    submitted: int
    pending: int
    in_flight: int


def _worker(
    name: str, worker: Any, running: int, status: str, deadline: float | None = None
) -> dict[str, Any]:
    attributes = dict(getattr(worker, "attributes", {}) or {})
    return {
        "name": name,
        "capabilities": sorted(getattr(worker, "capabilities", ())),
        "slots": int(getattr(worker, "slots", 0)),
        "running": running,
        "site": attributes.get("site"),
        "speed": attributes.get("speed"),
        "attributes": attributes,
        "status": status,
        "drain_deadline": deadline,  # seconds until its tasks move elsewhere (drains.py)
    }


def snapshot_of(scheduler: Any, now: float) -> Snapshot:
    """The scheduler's live state now; called in the loop's thread."""
    book = scheduler.book
    drained = set(scheduler.drained)
    deadlines = getattr(scheduler, "drain_deadlines", None)
    workers = tuple(
        _worker(
            name,
            w,
            book.running(name),
            "drained" if name in drained else "alive",
            deadlines.left(name, now) if deadlines is not None and name in drained else None,
        )
        for name, w in sorted(scheduler.live.items())
    )
    registry = scheduler.metrics.registry
    return Snapshot(
        at=now,
        workers=workers,
        pending=len(book.pending),
        in_flight=len(book.in_flight),
        running=int(book.running_count),
        counters=dict(book.counters),
        rounds=int(registry.get_sample_value("mm_round_seconds_count") or 0),
        round_seconds=float(registry.get_sample_value("mm_round_seconds_sum") or 0.0),
    )


def sample(before: Snapshot, after: Snapshot) -> Sample:
    def delta(key: str) -> int:
        return max(0, after.counters.get(key, 0) - before.counters.get(key, 0))

    rounds = max(0, after.rounds - before.rounds)
    spent = max(0.0, after.round_seconds - before.round_seconds)
    return Sample(
        at=after.at,
        seconds=max(1e-6, after.at - before.at),
        rounds=rounds,
        round_ms=1000 * spent / rounds if rounds else 0.0,
        placed=delta("placements"),
        succeeded=delta("succeeded"),
        submitted=delta("submitted"),
        pending=after.pending,
        in_flight=after.in_flight,
    )


@dataclass
class Board:
    """The latest snapshot and the recent samples; the loop writes, the API reads."""

    latest: Snapshot | None = None
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY))
    changed: threading.Condition = field(default_factory=threading.Condition)
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def publish(self, snapshot: Snapshot) -> None:
        previous = self.latest
        seq = previous.seq + 1 if previous else 1
        snapshot = Snapshot(**{**vars(snapshot), "seq": seq})
        if previous is not None:
            self.samples.append(sample(previous, snapshot))
        self.latest = snapshot  # one reference swap: readers see the old or the new one
        self.next_at = snapshot.at + PUBLISH_INTERVAL

    def fresh(self, stale_after: float = 5.0) -> Snapshot | None:
        """The latest snapshot if the loop published it recently (it is active)."""
        latest = self.latest
        if latest is None or time.time() - latest.at > stale_after:
            return None
        return latest

    def history(self) -> list[Sample]:
        return list(self.samples)
