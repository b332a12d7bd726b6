"""The push stage: dispatches to workers' queues under asynchronous publisher confirms.

A round publishes its dispatches and returns at once; the broker confirms
them (``Basic.Ack``, often one frame for thousands with ``multiple``) while
the scheduler goes on with intake. Only a confirmed dispatch is recorded
``assigned``; a nacked one, or one unconfirmed when the connection drops,
goes back to pending. Confirms are the only way to pipeline durable publishes
on one connection: a transaction would stall the loop for every commit.

The loop collects the answers (``confirms.Confirms``) with ``confirmed()`` at
its next turn: a confirm needs no turn of its own, since the slot was taken
when the dispatch went out, and the time of the answer is noted when it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pika.adapters.blocking_connection import BlockingChannel

from matchmaker import broker
from matchmaker.confirms import Confirms

Item = tuple[str, str]  # (task id, worker)
Confirmed = tuple[str, str, float]  # (task id, worker, when the broker confirmed it)


@dataclass
class Dispatcher:
    channel: BlockingChannel
    declared: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.confirms: Confirms[Item] = Confirms(self.channel)

    def declare(self, worker: str) -> str:
        """The worker's queue, declared once per connection (on join, before any dispatch)."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            broker.declare_worker(self.channel, worker)
            self.declared.add(queue)
        return queue

    def publish(self, worker: str, body: bytes, task_id: str) -> None:
        self.confirms.publish("", self.declare(worker), body, broker.PERSISTENT, (task_id, worker))

    def confirmed(self) -> tuple[list[Confirmed], list[Item]]:
        """What the broker acked (with when) and nacked since the last call."""
        acked, nacked = self.confirms.confirmed()
        return [(task_id, worker, at) for (task_id, worker), at in acked], nacked

    def purge(self, worker: str) -> int:
        """Empty a lost worker's queue; its tasks are already pending again."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            return 0
        return int(self.channel.queue_purge(queue).method.message_count)
