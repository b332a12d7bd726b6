"""Acknowledging deliveries: a dispatch is acked only once the broker confirmed its result.

A worker's connection has two channels: one consumes (dispatches, or pull
requests) and one publishes reports and dead letters in confirm mode. The
deliveries of the consuming channel are settled here and nowhere else, and
only for two reasons: every dispatch a delivery holds has been answered by a
report (or a dead letter) that the broker confirmed (``workers.reports``
calls ``done_with`` from its confirms), or it was withdrawn unstarted while
draining (``hand_back``: nacked to its queue, if nothing else in it ran). So
a crash before the confirm means a redelivery, never a lost task.

A delivery tag belongs to the connection's session: after a reconnect the
broker has requeued every unacked delivery of the old one, so its tags are
skipped. Acks are queued with the loop's next write and cover the longest
done prefix with one ``multiple`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matchmaker.wire import amqp
from matchmaker.wire.broker import queued_ack
from matchmaker.wire.confirms import Confirms
from workers.reports import Outgoing
from workers.runner import Delivery


@dataclass
class Channels:
    """One connection's channels: ``consume`` with its consumers and unacked delivery tags,
    and ``reports`` (results and letters under confirms, on a channel of their own)."""

    session: int
    consume: amqp.Channel
    reports: Confirms[Outgoing]
    consumers: list[str] = field(default_factory=list)
    unacked: set[int] = field(default_factory=set)

    def done_with(self, deliveries: list[Delivery], hand_back: bool = False) -> None:
        """A part of each delivery is done with; ack or nack those with none left.
        Deliveries of an earlier session are gone (the broker requeued them)."""
        acks = []
        for delivery in deliveries:
            if delivery.session != self.session:
                continue
            outcome = delivery.done_with(hand_back)
            if outcome == "ack":
                acks.append(delivery.tag)
            elif outcome == "nack":
                self.nack(delivery.tag)
        self.ack(acks)

    def ack(self, tags: list[int]) -> None:
        """Acknowledge ``tags``: the prefix below every other unacked tag in one frame."""
        if not tags:
            return
        done = set(tags)
        others = self.unacked - done
        lowest_other = min(others) if others else None
        below = [t for t in tags if lowest_other is None or t < lowest_other]
        ack = queued_ack(self.consume)  # sent with the loop's next I/O step
        if below:
            ack(max(below), True)
        for tag in tags:
            if lowest_other is not None and tag > lowest_other:
                ack(tag, False)
        self.unacked = others

    def nack(self, tag: int) -> None:
        """Hand a delivery back to its queue."""
        if self.consume.is_open and tag in self.unacked:
            self.unacked.discard(tag)
            self.consume.basic_nack(tag, requeue=True)
