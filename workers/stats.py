"""What a worker counted: logged when it stops, read by its metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    received: int = 0  # dispatches (or pull requests) delivered, each part of a batch counted
    succeeded: int = 0  # final results the broker confirmed, by state
    failed: int = 0
    dead_lettered: int = 0  # rejected messages the broker confirmed on ``mm.dead``
    requeued: int = 0  # pull requests handed back to their queue
    redelivered: int = 0  # deliveries of an attempt this worker already held or reported
    requeues_by_task: dict[str, int] = field(default_factory=dict)
