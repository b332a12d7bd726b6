"""What the loop hands the API: an immutable view of its live state, made in the loop's
thread (plain tuples and dicts, built fresh each time and never changed after), and a
short history of them for the rounds and throughput series.

The snapshot reads the scheduler through ``Observed`` only (the book's and the metrics'
public readers, and the scheduler's live workers and drains). The API thread only swaps
and reads references; it never touches the loop's objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matchmaker.book import Book
    from matchmaker.metrics import Metrics
    from matchmaker.models import Worker

HISTORY = 720  # samples kept: six minutes at one per PUBLISH_INTERVAL
PUBLISH_INTERVAL = 0.5


class Observed(Protocol):
    """What a snapshot reads of the scheduler (``scheduler.events.Events``)."""

    book: Book
    metrics: Metrics

    def live_workers(self) -> list[tuple[str, Worker]]: ...

    def drain_of(self, worker: str, now: float) -> tuple[bool, float | None]: ...


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
    name: str, worker: Worker, running: int, status: str, deadline: float | None = None
) -> dict[str, Any]:
    attributes = dict(worker.attributes)
    return {
        "name": name,
        "capabilities": sorted(worker.capabilities),
        "slots": int(worker.slots),
        "running": running,
        "site": attributes.get("site"),
        "speed": attributes.get("speed"),
        "attributes": attributes,
        "status": status,
        "drain_deadline": deadline,  # seconds until its tasks move elsewhere (drains.py)
    }


def snapshot_of(scheduler: Observed, now: float) -> Snapshot:
    """The scheduler's live state now; called in the loop's thread."""
    book = scheduler.book
    workers = []
    for name, w in scheduler.live_workers():
        drained, deadline = scheduler.drain_of(name, now)
        status = "drained" if drained else "alive"
        workers.append(_worker(name, w, book.running(name), status, deadline))
    pending, in_flight, running = book.sizes()
    rounds, round_seconds = scheduler.metrics.rounds()
    return Snapshot(
        at=now,
        workers=tuple(workers),
        pending=pending,
        in_flight=in_flight,
        running=running,
        counters=book.counts(),
        rounds=rounds,
        round_seconds=round_seconds,
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
