"""The push stage: dispatches to workers' queues under asynchronous publisher confirms.

A round publishes its dispatches and returns at once; the broker confirms
them (``Basic.Ack``, often one frame for thousands with ``multiple``) while
the scheduler goes on with intake. Only a confirmed dispatch is recorded
``assigned``; a nacked one, or one unconfirmed when the connection drops,
goes back to pending. Confirms are the only way to pipeline durable publishes
on one connection: a transaction would stall the loop for every commit.

pika's BlockingChannel has no asynchronous confirms, so this drives the
channel underneath it (``_impl``) and publishes with ``frames.FramePublisher``.
Confirm frames are read inside ``process_data_events`` on the loop's own
thread (by ``frames.DeliveryReader`` when it reads the connection, else by
pika); the handler only queues them, and the loop collects them with
``confirmed()`` at its next turn (a confirm needs no turn of its own: the
slot was taken when the dispatch went out, and the handler notes the time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic

from matchmaker import broker
from matchmaker.frames import reader_of

Item = tuple[str, str]  # (task id, worker)
Confirmed = tuple[str, str, float]  # (task id, worker, when the broker confirmed it)


@dataclass
class Dispatcher:
    channel: BlockingChannel
    declared: set[str] = field(default_factory=set)
    unconfirmed: dict[int, Item] = field(default_factory=dict)
    acked: list[Confirmed] = field(default_factory=list)
    nacked: list[Item] = field(default_factory=list)
    sequence: int = 0

    def __post_init__(self) -> None:
        self.impl: Any = self.channel._impl
        self.impl.confirm_delivery(self._on_confirm_frame)
        reader = reader_of(self.channel)
        if reader is not None:
            reader.on_confirm(self.impl.channel_number, self._on_confirm)
        self.send = broker.queued_publish(self.channel)

    def declare(self, worker: str) -> str:
        """The worker's queue, declared once per connection (on join, before any dispatch)."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            broker.declare_worker(self.channel, worker)
            self.declared.add(queue)
        return queue

    def publish(self, worker: str, body: bytes, task_id: str) -> None:
        queue = self.declare(worker)
        self.send("", queue, body, broker.PERSISTENT)
        self.sequence += 1
        self.unconfirmed[self.sequence] = (task_id, worker)

    def _on_confirm_frame(self, frame: Any) -> None:
        method = frame.method
        self._on_confirm(method.delivery_tag, method.multiple, isinstance(method, Basic.Ack))

    def _on_confirm(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        items: list[Item] = []
        if not multiple:
            item = self.unconfirmed.pop(delivery_tag, None)
            items = [item] if item is not None else []
        else:
            while self.unconfirmed:  # a dict keeps publish order
                tag = next(iter(self.unconfirmed))
                if tag > delivery_tag:
                    break
                items.append(self.unconfirmed.pop(tag))
        if acked:
            now = time.time()
            self.acked.extend((task_id, worker, now) for task_id, worker in items)
        else:
            self.nacked.extend(items)

    def confirmed(self) -> tuple[list[Confirmed], list[Item]]:
        """What the broker acked (with when) and nacked since the last call."""
        acked, nacked = self.acked, self.nacked
        self.acked, self.nacked = [], []
        return acked, nacked

    def purge(self, worker: str) -> int:
        """Empty a lost worker's queue; its tasks are already pending again."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            return 0
        return int(self.channel.queue_purge(queue).method.message_count)
