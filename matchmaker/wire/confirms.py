"""Asynchronous publisher confirms on one channel: publish now, learn the outcome later.

A channel in confirm mode (``Confirm.Select``) numbers its publishes from 1;
the broker answers each with ``Basic.Ack`` (stored: for a persistent message
to a durable queue, on disk) or ``Basic.Nack`` (refused), often one frame for
all numbers up to a tag (``multiple``). ``Confirms`` keeps the item each
publish stands for until its answer comes and hands the answers out with
``confirmed()``; ``pending`` is what is still unanswered, lost if the
connection drops.

pika's BlockingChannel has only synchronous confirms (each publish waits), so
this drives the channel underneath it (``pika_shim.confirm_delivery``) and publishes with
``frames.FramePublisher``. The answers are read inside
``process_data_events`` on the owner's thread (by ``frames.DeliveryReader``
when it reads the connection, else by pika); the handler only records them.
With ``wake``, an answer ends the owner's ``process_data_events`` (through the
reader) for an owner that has to act on it at once.
"""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar

from matchmaker.wire import amqp, pika_shim
from matchmaker.wire.frames import queued_publish, reader_of

T = TypeVar("T")


class Confirms(Generic[T]):
    """A channel put in confirm mode, with the items of its unanswered publishes."""

    def __init__(self, channel: amqp.Channel, *, wake: bool = False) -> None:
        pika_shim.confirm_delivery(channel, self._on_frame)
        reader = reader_of(channel)
        if reader is not None:
            reader.on_confirm(channel.channel_number, self._on_confirm, wake=wake)
        self.send = queued_publish(channel)
        self.sequence = 0
        self.pending: dict[int, T] = {}  # by publish number, in publish order
        self.acked: list[tuple[T, float]] = []
        self.nacked: list[T] = []

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: amqp.Properties, item: T
    ) -> None:
        """Queue the message (sent at the connection's next I/O step); ``item`` stands for it."""
        self.send(exchange, routing_key, body, properties)
        self.sequence += 1
        self.pending[self.sequence] = item

    def _on_frame(self, frame: Any) -> None:
        method = frame.method
        self._on_confirm(method.delivery_tag, method.multiple, isinstance(method, amqp.Ack))

    def _on_confirm(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        items: list[T] = []
        if not multiple:
            item = self.pending.pop(delivery_tag, None)
            items = [item] if item is not None else []
        else:
            while self.pending:
                tag = next(iter(self.pending))
                if tag > delivery_tag:
                    break
                items.append(self.pending.pop(tag))
        if acked:
            now = time.time()
            self.acked.extend((item, now) for item in items)
        else:
            self.nacked.extend(items)

    def outstanding(self) -> bool:
        """Whether some publish is unanswered, or answered and not yet collected."""
        return bool(self.pending or self.acked or self.nacked)

    def confirmed(self) -> tuple[list[tuple[T, float]], list[T]]:
        """What the broker acked (with when the answer was read) and nacked since the last call."""
        acked, nacked = self.acked, self.nacked
        self.acked, self.nacked = [], []
        return acked, nacked
