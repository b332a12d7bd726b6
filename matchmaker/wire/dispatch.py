"""The push stage: dispatches to workers' queues under asynchronous publisher confirms.

A round publishes the dispatches it places on a worker as one ``dispatches``
message (more if they pass the size limit, the dispatch itself if alone), so
the broker stores, confirms and delivers one message per worker per round
instead of one per task. A round publishes and returns at once; the broker confirms
them (``Basic.Ack``, often one frame for thousands with ``multiple``) while
the scheduler goes on with intake. Only a confirmed dispatch is recorded
``assigned``; a nacked one, or one unconfirmed when the connection drops,
goes back to pending. Confirms are the only way to pipeline durable publishes
on one connection: a transaction would stall the loop for every commit.

The loop collects the answers (``confirms.Confirms``) with ``confirmed()`` at
its next turn: a confirm needs no turn of its own, since the slot was taken
when the dispatch went out, and the time of the answer is noted when it is read.

A worker's queue whose dispatches the broker refused ``REFUSED_RECONNECT`` times in a
row, none accepted between, makes ``stuck()`` say so: the loop then opens a new
connection: after a cluster node's kill, a channel opened while a quorum queue elected
its leader went on refusing every publish to that queue (RabbitMQ 3.10), and the next
connection did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matchmaker.messages import pack
from matchmaker.wire import amqp, broker
from matchmaker.wire.confirms import Confirms

Item = tuple[str, str]  # (task id, worker)
Confirmed = tuple[str, str, float]  # (task id, worker, when the broker confirmed it)
Sent = tuple[Sequence[str], str]  # the task ids of one message, and its worker
REFUSED_RECONNECT = 3


@dataclass
class Dispatcher:
    channel: amqp.Channel
    declared: set[str] = field(default_factory=set)
    queue_type: str | None = None  # of the worker queues it declares (``broker.queue_type``)
    refusals: dict[str, int] = field(default_factory=dict)  # worker -> refused in a row

    def __post_init__(self) -> None:
        self.confirms: Confirms[Sent] = Confirms(self.channel)

    def declare(self, worker: str) -> str:
        """The worker's queue, declared once per connection (on join, before any dispatch)."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            broker.declare_worker(self.channel, worker, kind=self.queue_type)
            self.declared.add(queue)
        return queue

    def publish(self, worker: str, task_ids: list[str], dispatches: list[bytes]) -> None:
        """The encoded ``dispatches`` (of ``task_ids``, in order) to ``worker``'s queue."""
        queue = self.declare(worker)
        for ids, body in pack("dispatches", task_ids, dispatches):
            self.confirms.publish("", queue, body, broker.PERSISTENT, (ids, worker))

    def confirmed(self) -> tuple[list[Confirmed], list[Item]]:
        """What the broker acked (with when) and nacked since the last call."""
        acked, nacked = self.confirms.confirmed()
        for (_, worker), _at in acked:
            self.refusals.pop(worker, None)
        for _, worker in nacked:
            self.refusals[worker] = self.refusals.get(worker, 0) + 1
        return (
            [(task_id, worker, at) for (ids, worker), at in acked for task_id in ids],
            [(task_id, worker) for ids, worker in nacked for task_id in ids],
        )

    def stuck(self) -> str | None:
        """Why this connection should be replaced (a queue refusing every dispatch), or None."""
        for worker, count in self.refusals.items():
            if count >= REFUSED_RECONNECT:
                return f"dispatches to {worker} refused {count} times in a row"
        return None

    def purge(self, worker: str) -> int:
        """Empty a lost worker's queue (how many messages it held); its tasks are pending
        again. Its queues are declared (and its cancels bound) again when it comes back:
        ``workers gc`` or the expiry policy may delete them meanwhile. A queue already
        deleted is found on a channel of its own (a purge of it would close this one); the
        purge itself stays on this channel, after the dispatches it sent."""
        queue = broker.worker_queue(worker)
        if queue not in self.declared:
            return 0
        self.declared.discard(queue)
        probe = self.channel.connection.channel()
        try:
            probe.queue_declare(queue, passive=True)
        except amqp.ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            return 0
        probe.close()
        return int(self.channel.queue_purge(queue).method.message_count)
