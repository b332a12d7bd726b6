"""Reports and letters out to the broker under publisher confirms, and what comes of them.

A flush (at most every ``FLUSH_INTERVAL``, so reports share the broker's
writes under load; at once when dead letters wait) publishes every report
ready (running reports and final results, coalesced by the ``Runner``) as one
``results`` message (more if they pass the message size limit), and every
letter, on the connection's confirm channel, and goes on: the loop never
waits for the broker to write. Results go to the ``mm.results`` exchange
(``broker.route``), the one thing a worker may write, and dead letters to
``mm.dead``, with the worker's broker user as the AMQP ``user_id`` (checked by
RabbitMQ, then by the scheduler); a pull request handed back
(``workers.pull.HandBack``) is published again to the end of its queue.

Once the broker confirms a final result (or a letter), the deliveries it
answers are done with (``workers.acks``: acked). A crash in between means a
redelivery (at-least-once), which the runner recognises by ``(id, attempt)``
and does not run twice. A report the broker refuses, or one unconfirmed when
the connection drops, is given back and sent again; a channel that keeps
refusing is replaced by a new connection (``Refusing``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from matchmaker.messages import MAX_MESSAGE_BYTES, encode, pack
from matchmaker.wire import amqp
from matchmaker.wire.broker import DEAD, RESULTS, dead_letter_properties, persistent, route
from workers.runner import Delivery, Report, Runner
from workers.stats import Stats

if TYPE_CHECKING:  # workers.acks holds the confirms of what is published here
    from workers.acks import Channels

log = logging.getLogger("workers.runtime")  # the worker's one log, as operators filter it

RUNNING_HOLD = 0.05  # a task shorter than this reports only its final result
FLUSH_INTERVAL = 0.005  # reports wait at most this long to go out together
REFUSED_PAUSE = 1.0  # after the broker refused reports, the next flush waits this long
# Refusals in a row after which the connection is opened anew: after a cluster node's
# kill, a channel opened while a quorum queue elected its leader went on refusing every
# publish to that queue (RabbitMQ 3.10), and the next connection did not.
REFUSED_RECONNECT = 3


@dataclass
class Letter:
    """A message to park on ``mm.dead`` (or, ``requeue``, to publish again to the end of
    ``source``), and the delivery to ack once it is there."""

    body: bytes
    reason: str
    source: str
    delivery: Delivery | None
    requeue: bool = False


@dataclass
class ReportBatch:
    """Reports sent together in one message (a ``results`` batch, or a lone ``result``)."""

    reports: list[Report]
    body: bytes


Outgoing = ReportBatch | Letter  # what one publish on the confirm channel stands for


def batches(reports: list[Report], limit: int = MAX_MESSAGE_BYTES) -> list[ReportBatch]:
    """``reports`` packed in order into messages of at most ``limit`` bytes (``pack``)."""
    packed = pack("results", reports, [encode(r.result) for r in reports], limit)
    return [ReportBatch(list(group), body) for group, body in packed]


def _split(items: list[Outgoing]) -> tuple[list[Report], list[Letter]]:
    reports = [r for i in items if isinstance(i, ReportBatch) for r in i.reports]
    return reports, [i for i in items if isinstance(i, Letter)]


class Refusing(amqp.AMQPError):
    """The broker keeps refusing reports on this connection: open a new one."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "reports refused"


class Reporter:
    """The runner's reports and the letters waiting to go, published and settled."""

    def __init__(self, runner: Runner, stats: Stats, user: str) -> None:
        self.runner = runner
        self.stats = stats
        self.letters: list[Letter] = []  # waiting for the next flush
        self.running_due: float | None = None  # when a held running report is due
        self._last_flush = 0.0
        self._refusals = 0  # flushes refused in a row (REFUSED_RECONNECT)
        self._user = user
        self._persistent = persistent(user)  # one object: its encoding is cached

    def add(self, letter: Letter) -> None:
        """A letter to publish with the next flush."""
        self.letters.append(letter)

    def waiting(self) -> bool:
        """Whether letters or reports wait to be published."""
        return bool(self.letters) or self.runner.reporting()

    def flush_in(self) -> float:
        """Seconds until the next flush is due (<= 0: now); letters do not wait."""
        interval = 0.0 if self.letters else FLUSH_INTERVAL
        return interval - (time.monotonic() - self._last_flush)

    def idle(self, ch: Channels) -> bool:
        """Nothing waits to be published and nothing published waits for its answer."""
        return not self.letters and not ch.reports.outstanding()

    def flush(self, ch: Channels) -> None:
        """Publish every ready report and letter under confirms; ``settle`` acks."""
        self._last_flush = time.monotonic()
        reports, self.running_due = self.runner.take(hold=RUNNING_HOLD)
        letters, self.letters = self.letters, []
        outgoing: list[Outgoing] = [*batches(reports), *letters]
        for n, item in enumerate(outgoing):
            try:
                if isinstance(item, ReportBatch):
                    ch.reports.publish(*route(RESULTS), item.body, self._persistent, item)
                elif item.requeue:
                    ch.reports.publish(*route(item.source), item.body, self._persistent, item)
                else:
                    properties = dead_letter_properties(item.reason, item.source, user=self._user)
                    ch.reports.publish(*route(DEAD), item.body, properties, item)
            except BaseException:
                self._give_back(outgoing[n:])
                raise

    def settle(self, ch: Channels) -> None:
        """Ack the dispatches whose final results (or dead letters) the broker confirmed;
        give back what it refused. Raises ``Refusing`` after ``REFUSED_RECONNECT`` in a row."""
        confirmed, refused = ch.reports.confirmed()
        if refused:
            log.warning(
                "the broker refused %d report(s) (a full queue?); sending them again in %gs",
                len(refused),
                REFUSED_PAUSE,
            )
            self._give_back(refused)
            self._last_flush = time.monotonic() + REFUSED_PAUSE  # no flush until then
            self._refusals += 1
            if self._refusals >= REFUSED_RECONNECT:
                self._refusals = 0
                raise Refusing(f"reports refused {REFUSED_RECONNECT} times in a row")
        if confirmed:
            self._refusals = 0
            ch.done_with(self._sent([item for item, _ in confirmed]))

    def lost(self, ch: Channels) -> None:
        """The connection dropped: what it confirmed is in the broker (its deliveries come
        back and are acked as seen), what it did not is sent again on the next one."""
        confirmed, refused = ch.reports.confirmed()
        self._sent([item for item, _ in confirmed])  # their deliveries come back
        self._give_back([*refused, *ch.reports.pending.values()])
        ch.reports.pending.clear()
        # a refused request not yet in its queue again is still the broker's (it comes back)
        self.letters = [letter for letter in self.letters if not letter.requeue]

    def _sent(self, items: list[Outgoing]) -> list[Delivery]:
        """Record reports and dead letters as in the broker; the deliveries they answer."""
        reports, letters = _split(items)
        answered = []
        for job in self.runner.sent(reports):
            if job.final is not None and job.final.state == "succeeded":
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
            answered += job.deliveries
        for letter in letters:
            self.stats.dead_lettered += not letter.requeue
            if letter.delivery is not None:
                answered.append(letter.delivery)
        return answered

    def _give_back(self, items: list[Outgoing]) -> None:
        """Reports and letters to publish again at the next flush."""
        reports, letters = _split(items)
        self.runner.unsent(reports)
        self.letters = letters + self.letters
