"""The scheduler loop's seam to the broker: what it receives, what it sends.

The loop sees the broker only through a ``Transport``, which a ``Connector``
hands it once this scheduler leads (it holds the leader queue, the core
objects are declared and it consumes ``mm.requests`` and ``mm.results``):

- ``poll(timeout)`` sends what was queued since the last poll (acks,
  dispatches, letters, events, cancels) and waits at most ``timeout`` seconds
  for something to arrive; it returns as soon as a delivery did, with every
  delivery and publisher confirm received since the last poll. It does no
  domain work: deciding, decoding and writing happen in the loop.
- ``dispatch``, ``letter``, ``event``, ``notice`` and ``cancel`` queue a publish; a
  dispatch and a letter are confirmed (or refused) in a later ``poll``.
- ``ack(source, tag)`` queues a ``multiple`` ack of every delivery of that
  queue up to ``tag``. Nothing is nacked: a message the scheduler cannot use
  is dead-lettered and acked.
- ``declare_worker`` and ``purge`` are the two synchronous calls (a
  newcomer's queue before its first dispatch, a lost worker's queue emptied).

A broker failure, and the loss of leadership with the connection, is
``TransportLost`` from any call: the loop forgets what was delivered and not
acked (the broker delivers it again) and connects anew. ``pika_transport`` is
the RabbitMQ implementation; ``memory`` one in memory for unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from matchmaker.ledger import Letter

Confirmed = tuple[str, str, float]  # (task id, worker, when the broker confirmed it)
Item = tuple[str, str]  # (task id, worker)


class TransportError(Exception):
    """The broker failed (or the transport's connection did); it ends the turn."""


class TransportLost(TransportError):
    """The connection is gone, and leadership with it: connect again."""


@dataclass
class Delivery:
    tag: int
    body: bytes
    user: str | None = None  # the AMQP user_id, checked by the broker


@dataclass
class Polled:
    """What arrived since the last poll."""

    requests: list[Delivery] = field(default_factory=list)
    results: list[Delivery] = field(default_factory=list)
    dispatched: list[Confirmed] = field(default_factory=list)  # dispatches the broker stored
    undispatched: list[Item] = field(default_factory=list)  # dispatches it refused
    letters_sent: list[str] = field(default_factory=list)  # letter keys it stored
    letters_refused: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.requests
            or self.results
            or self.dispatched
            or self.undispatched
            or self.letters_sent
            or self.letters_refused
        )


class Transport(Protocol):
    """One connection of the leading scheduler to the broker."""

    def poll(self, timeout: float) -> Polled: ...

    def dispatch(self, worker: str, task_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        """Queue the encoded dispatches of ``task_ids`` (in order) to ``worker``'s queue."""

    def letter(self, letter: Letter) -> None:
        """Queue a dead letter for ``mm.dead``, its key as ``message_id``."""

    def event(self, routing_key: str, body: bytes) -> None:
        """Queue an event message for ``mm.events``."""

    def notice(self, owner: str, body: bytes) -> None:
        """Queue a ``notices`` message for ``mm.notices``, routed to ``owner``."""

    def cancel(self, worker: str, task_id: str) -> None:
        """Queue a cancel of ``task_id`` to ``worker``'s control queue."""

    def ack(self, source: str, tag: int) -> None:
        """Queue a ``multiple`` ack of the deliveries of ``source`` up to ``tag``."""

    def declare_worker(self, worker: str) -> None:
        """The worker's queues exist (once per connection, before its first dispatch)."""

    def purge(self, worker: str) -> int:
        """Empty a lost worker's queue; how many messages it held."""

    def close(self) -> None: ...


class Connector(Protocol):
    """Makes a ``Transport`` once this scheduler leads; waits (standing by) until then."""

    def __call__(self, stopping: Callable[[], bool]) -> Transport: ...
