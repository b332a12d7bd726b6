"""Events and observation: state changes to ``mm.events``, metrics, and the periodic sweep."""

from __future__ import annotations

import logging
import time

import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel

from matchmaker import broker
from matchmaker.book import Event
from matchmaker.messages import (
    VERSION,
)
from matchmaker.scheduler.state import Core

log = logging.getLogger("matchmaker.service")

EVENT_PROPERTIES = pika.BasicProperties(content_type="application/json")
SWEEP_INTERVAL = 0.25
LETTERS_KEPT = 24 * 3600.0  # sent dead letters are remembered this long (then pruned)
PRUNE_INTERVAL = 3600.0


class Events(Core):
    """The scheduler's events, metrics and sweeps."""

    def _publish_events(self, channel: BlockingChannel) -> None:
        """Events go out batched per state: one message per routing key ``task.<state>``."""
        self.last_events = time.monotonic()
        if not self.book.events:
            return
        events, self.book.events = self.book.events, []
        publish = broker.queued_publish(channel)
        by_state: dict[str, list[Event]] = {}
        for e in events:
            by_state.setdefault(e.state, []).append(e)
        for state, items in by_state.items():
            body = orjson.dumps({"v": VERSION, "kind": "events", "events": items})  # Event's fields
            publish(broker.EVENTS, f"task.{state}", body, EVENT_PROPERTIES)

    def _observe(self) -> None:
        m = self.metrics
        m.pending.set(len(self.book.pending))
        m.running.set(self.book.running_count)
        m.assigned.set(len(self.book.in_flight) - self.book.running_count)
        m.workers.set(len(self.live))
        m.sync(self.book.counters)
        if self.api is not None:  # api hook: a snapshot at most every 0.5 s
            self.api.offer(self)

    def _sweep(self) -> None:
        """Periodically: deadlines passed with no result, retries whose backoff ended, metrics,
        and (rarely) the sent dead letters old enough to forget."""
        now, clock = time.time(), time.monotonic()
        self.next_sweep = clock + SWEEP_INTERVAL
        if clock >= self.next_prune:
            self.next_prune = clock + PRUNE_INTERVAL
            self.ledger.prune_letters(now - LETTERS_KEPT)
        self._observe()
        if self.book.expire(now):
            self.dirty = True
        if self.book.pending.backoff_ended(now):
            self.dirty = True
