"""What the scheduler tells a task's owner, over the broker: the scheduler's side of
``matchmaker.client``.

Each notice goes to the topic exchange ``mm.notices`` with the owner's broker user as
its routing key. A client reads them through an exclusive queue of its own bound with
its own user as the key; RabbitMQ lets it bind no other key (a topic permission, made by
``identity.client_role``), so a client sees only its own tasks. The owner is the
request's AMQP ``user_id``, which RabbitMQ checked against the sender's login.

Three things make a notice (``messages.Notice``):

- a task closed (``closed``, the book's ``on_close``): ``succeeded`` with its output,
  ``dead`` with its last error, or ``cancelled``;
- a submit refused at intake (``refused``): ``rejected``, with the reason as the error
  (the same reason its dead letter carries), so a client waiting on it is not left
  waiting;
- a ``status`` request (``answer``): the state of each id asked about, ``unknown`` for
  an id that is no task of the sender's (an admin, or a trusted user, may ask about
  any), with the request's ``ref`` echoed so the client can tell which answer is which.
  An id of a closed task costs the loop a ledger read, so each sender may ask about
  ``STATUS_RATE`` ids a second, ``STATUS_BURST`` at once (a client following that many
  tasks resyncs them all after a reconnect); a request past that is refused whole
  (dead-lettered with the reason), and the client asks again at its next resync.

Notices are queued and published with the turn's events, after the ledger's commit, in
one message per owner (``notices`` batches, packed under the message size limit), not
persistent and without confirms: a client that was not connected, or a notice lost with a
scheduler that died between its commit and its publish, is made good by the client asking
again (``status``) when it reconnects and at a bounded interval. At most ``LIMIT`` notices
wait while the broker is away; beyond that the oldest are dropped (the clients' next status
requests make good on those too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from matchmaker.identity import Senders
from matchmaker.messages import MAX_MESSAGE_BYTES, NAME, VERSION, MessageError, Notice, Status
from matchmaker.wire import amqp, broker

if TYPE_CHECKING:
    from matchmaker.backlog import OpenTask
    from matchmaker.book import Book
    from matchmaker.ledger import TaskLedger

log = logging.getLogger(__name__)

LIMIT = 100_000
STATUS_RATE = 2000.0  # ids a second per sender
STATUS_BURST = 20_000.0
PROPERTIES = amqp.Properties(content_type="application/json")
Publish = Callable[[str, str, bytes, amqp.Properties], None]  # a basic_publish
Send = Callable[[str, bytes], None]  # (owner, body): one message to mm.notices


def over(publish: Publish) -> Send:
    """``Send`` through a publish of pika's shape (exchange, routing key, body, properties)."""
    return lambda owner, body: publish(broker.NOTICES, owner, body, PROPERTIES)


class Notices:
    """The notices of one scheduler, by owner, until the next ``publish``."""

    def __init__(self, senders: Senders, limit: int = LIMIT) -> None:
        self.senders = senders
        self.limit = limit
        self.queued: dict[str, list[Notice]] = {}
        self.count = 0
        self.dropped = 0
        self.budgets: dict[str, tuple[float, float]] = {}  # sender -> (ids it may ask, when)

    def _add(self, owner: str, notice: Notice) -> None:
        if not owner:  # an anonymous sender (authenticated_senders = false) has no inbox
            return
        if self.count >= self.limit:
            self.dropped += 1
            return
        self.queued.setdefault(owner, []).append(notice)
        self.count += 1

    def waiting(self) -> bool:
        """Whether notices wait to be published."""
        return bool(self.queued)

    def closed(self, t: OpenTask) -> None:
        """A task succeeded, died or was cancelled (the book's ``on_close``)."""
        at = time.time()
        output = t.output if t.state == "succeeded" else None
        error = t.error if t.state == "dead" else None
        self._add(t.owner, Notice(t.request.id, t.state, t.attempt, t.worker, at, output, error))

    def refused(self, user: str | None, body: bytes, reason: str) -> None:
        """A request refused at intake: if it was a submit with a readable id, its sender
        hears ``rejected`` with the reason."""
        if not user:
            return
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict) or message.get("kind", "submit") != "submit":
            return
        task_id = message.get("id")
        if isinstance(task_id, str) and NAME.fullmatch(task_id):
            self._add(user, Notice(task_id, "rejected", error=reason))

    def answer(self, status: Status, sender: str, book: Book, ledger: TaskLedger) -> None:
        """A notice per id of ``status``, to its sender: the task's state if the sender owns
        it (or is an admin), else ``unknown``. MessageError past the sender's budget."""
        self._spend(sender, len(status.ids))
        admin = self.senders.admin(sender)
        for task_id in dict.fromkeys(status.ids):  # each id once
            t = book.open_task(task_id)
            if t is not None:
                if t.owner == sender or admin:
                    state = "assigned" if t.state == "dispatching" else t.state
                    notice = Notice(task_id, state, t.attempt, t.worker, ref=status.ref)
                    self._add(sender, notice)
                    continue
            else:
                row = ledger.get(task_id)
                if row is not None and (row.owner == sender or admin):
                    output = row.output if row.state == "succeeded" else None
                    error = row.error if row.state == "dead" else None
                    at = row.finished_at or row.updated_at
                    notice = Notice(
                        task_id, row.state, row.attempt, row.worker, at, output, error, status.ref
                    )
                    self._add(sender, notice)
                    continue
            self._add(sender, Notice(task_id, "unknown", ref=status.ref))

    def _spend(self, sender: str, ids: int) -> None:
        """Take ``ids`` from the sender's budget (a token bucket) or refuse the request."""
        now = time.monotonic()
        left, then = self.budgets.get(sender, (STATUS_BURST, now))
        left = min(STATUS_BURST, left + (now - then) * STATUS_RATE)
        if ids > left:
            self.budgets[sender] = (left, now)
            raise MessageError(
                f"status refused: {sender!r} asks about more than {STATUS_RATE:g} tasks a "
                f"second ({STATUS_BURST:g} at once); ask again later"
            )
        self.budgets[sender] = (left - ids, now)

    def publish(self, send: Send) -> None:
        """Send what is queued: per owner, ``notices`` messages under the size limit."""
        if self.dropped:
            log.warning("dropped %d notices while the broker was away", self.dropped)
            self.dropped = 0
        if not self.queued:
            return
        queued, self.queued, self.count = self.queued, {}, 0
        for owner, notices in queued.items():
            for body in bodies(notices):
                send(owner, body)


def bodies(notices: list[Notice], limit: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """``notices`` batches of at most ``limit`` bytes, in order; a single notice over it (a
    large output) goes alone, and the client takes notices up to twice the limit.

    The dataclasses are dumped a batch at a time, one orjson call for the batch rather than
    an ``encode`` per notice; a batch over the limit is dumped again in parts, as many as it
    is over."""
    body = orjson.dumps({"v": VERSION, "kind": "notices", "notices": notices})
    if len(body) <= limit or len(notices) == 1:
        return [body]
    parts = min(len(notices), -(-len(body) // limit) + 1)
    step = -(-len(notices) // parts)
    return [b for n in range(0, len(notices), step) for b in bodies(notices[n : n + step], limit)]
