"""Events and observation: state changes to ``mm.events``, metrics, and the periodic sweep."""

from __future__ import annotations

import logging

import orjson

from matchmaker.book import Event
from matchmaker.messages import VERSION
from matchmaker.models import Worker
from matchmaker.scheduler.state import Core

log = logging.getLogger("matchmaker.service")

LETTERS_KEPT = 24 * 3600.0  # sent dead letters are remembered this long (then pruned)


class Events(Core):
    """The scheduler's events, metrics and sweeps."""

    def _publish_events(self, events: list[Event] | None = None) -> None:
        """Events go out batched per state: one message per routing key ``task.<state>``;
        ``events`` are ones taken from the book earlier (default: all it holds now)."""
        if self.transport is not None:
            self.notices.publish(self.transport.notice)  # client hook: after the commit
        if events is None:
            events = self.book.take_events() if self.transport is not None else []
        if self.transport is None or not events:
            return
        self.metrics.record(events)
        by_state: dict[str, list[Event]] = {}
        for e in events:
            by_state.setdefault(e.state, []).append(e)
        for state, items in by_state.items():
            body = orjson.dumps({"v": VERSION, "kind": "events", "events": items})  # Event's fields
            self.transport.event(f"task.{state}", body)

    def _observe(self) -> None:
        m = self.metrics
        pending, in_flight, running = self.book.sizes()
        m.pending.set(pending)
        m.running.set(running)
        m.assigned.set(in_flight - running)
        m.workers.set(len(self.live))
        m.sync(self.book.counters)
        if self.api is not None:  # api hook: a snapshot at most every 0.5 s
            self.api.offer(self)

    def live_workers(self) -> list[tuple[str, Worker]]:
        """The workers rounds may use, by name (for the API's snapshot)."""
        return sorted(self.live.items())

    def drain_of(self, worker: str, now: float) -> tuple[bool, float | None]:
        """Whether ``worker`` is drained, and the seconds until its drain deadline (None
        when it has none, or is not drained)."""
        if worker not in self.drained:
            return False, None
        return True, self.drain_deadlines.left(worker, now)

    def _sweep(self, prune: bool = False) -> None:
        """Periodically: deadlines passed with no result, retries whose backoff ended, metrics,
        and (with ``prune``) the sent dead letters old enough to forget."""
        now = self.clock.time()
        if prune:
            self.ledger.prune_letters(now - LETTERS_KEPT)
        self._observe()
        if self.book.expire(now):
            self.dirty = True
        if self.book.backoff_ended(now):
            self.dirty = True
