"""What the scheduler's jobs share: the loop's state, declared once, and the helpers all use.

``Scheduler`` (``matchmaker.service``) is made of one class per job (intake,
results, letters, rounds, events), each in its own module and each a ``Core``:
they share the state declared here, set by ``Scheduler.__init__``.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping
from typing import Protocol

from matchmaker.api import server as api_server
from matchmaker.book import Book
from matchmaker.config import Config
from matchmaker.drains import DrainDeadlines
from matchmaker.identity import Senders
from matchmaker.ledger import FAILURES, Letter, TaskLedger
from matchmaker.limits import Quotas
from matchmaker.liveness import Liveness
from matchmaker.metrics import Metrics
from matchmaker.models import Worker
from matchmaker.notices import Notices
from matchmaker.rates import ServiceRates
from matchmaker.scheduler.clock import Clock, TurnClock
from matchmaker.scheduler.transport import Delivery as Delivery  # re-exported
from matchmaker.scheduler.transport import Transport, TransportError
from matchmaker.wire.frames import AckWindow
from membership.inventory import Change, LiveWorker

log = logging.getLogger("matchmaker.service")

# Not one message's fault: the broker or the ledger itself failed. They end the turn.
FATAL: tuple[type[BaseException], ...] = (TransportError, *FAILURES)


def describe_error(error: BaseException) -> str:
    """``Class: text`` of an exception, bounded, even if its text cannot be made."""
    try:
        text = str(error)
    except Exception:  # its str() is itself broken (a value too deep to repr)
        text = "(no text)"
    return f"{error.__class__.__name__}: {text[:300]}"


class Members(Protocol):
    """The live workers, as the membership inventory (Serf) advertises them."""

    def snapshot(self) -> Mapping[str, LiveWorker]: ...


class Core:
    """The state every job of the scheduler reads and writes (set by ``Scheduler``)."""

    config: Config
    senders: Senders
    ledger: TaskLedger
    quotas: Quotas
    notices: Notices  # client hook
    book: Book
    metrics: Metrics
    changes: queue.Queue[Change]
    inventory: Members | None
    live: dict[str, Worker]
    in_pool: set[str]  # the inventory's workers, consuming or not (``live`` is those consuming)
    loaded: dict[str, Worker]
    rates: ServiceRates
    timed: set[str]
    drained: set[str]
    drain_deadlines: DrainDeadlines
    requests: list[Delivery]
    results: list[Delivery]
    arrived: int
    request_acks: AckWindow
    result_acks: AckWindow
    rejects: list[tuple[str, bytes, str, bytes]]
    letters: list[Letter]
    unconfirmed: dict[str, Letter]
    dirty: bool
    api: api_server.ApiServer | None
    liveness: Liveness | None  # broker-side failure detection (matchmaker.liveness)
    transport: Transport | None
    clock: Clock
    turns: TurnClock

    def _internal_error(
        self, source: str, body: bytes, error: Exception, origin: bytes | None = None
    ) -> None:
        """A message whose handling failed for a reason no check foresaw: dead-lettered
        with the error, logged once with its traceback; the loop goes on."""
        reason = f"internal error: {describe_error(error)}"
        log.error("dead-lettered a message from %s: %s", source, reason, exc_info=error)
        self.rejects.append((source, body, reason, body if origin is None else origin))
