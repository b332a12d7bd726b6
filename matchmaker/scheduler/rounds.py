"""Rounds: the live workers from the inventory, and ``plan()`` over the backlog and free slots."""

from __future__ import annotations

import logging
import time

from matchmaker.engine import plan
from matchmaker.messages import (
    TaskDispatch,
    encode,
)
from matchmaker.models import Policy, Worker
from matchmaker.scheduler.state import Core

log = logging.getLogger("matchmaker.service")

MIN_CONSIDERED = 64  # per group, so new work gets a reason even when every slot is taken


class Rounds(Core):
    """The scheduler's rounds and the workers they place on."""

    def _refresh_speeds(self) -> None:
        """The workers whose learned speeds moved get views with them before the round."""
        for name in self.timed:
            live = self.live.get(name)
            if live is not None:
                self.live[name] = live.with_speeds(self.rates.speeds(name))
                self.loaded.pop(name, None)
        self.timed.clear()

    def _refresh_live(self) -> None:
        """The inventory's workers; a newcomer's queue is declared before its first dispatch."""
        assert self.inventory is not None
        advertised = {name: lw.worker for name, lw in self.inventory.snapshot().items()}
        for gone in set(self.live) - set(advertised):
            self.rates.forget(gone)
        self.live, self.loaded = {}, {}
        for name, worker in advertised.items():
            self.rates.advertise(name, worker.perf)
            speeds = self.rates.speeds(name)
            self.live[name] = worker.with_speeds(speeds) if speeds else worker
            self.dispatcher.declare(name)

    def _reconcile_inventory(self) -> None:
        self._refresh_live()
        now = time.time()
        for worker in sorted(set(self.book.by_worker) - set(self.live)):
            moved = self.book.worker_lost(worker, now, "is not in the inventory")
            log.info("worker %s is gone; %d tasks back to pending", worker, moved)
        self.ledger.commit()
        self.dirty = True

    def _apply_changes(self) -> None:
        if self.changes.empty():
            return
        assert self.inventory is not None
        now = time.time()
        while not self.changes.empty():
            change = self.changes.get_nowait()
            if change.kind == "rejected":
                log.warning("worker %s left out of the inventory: %s", change.name, change.reason)
            if change.gone:
                moved = self.book.worker_lost(change.name, now, change.kind)
                drained = self.dispatcher.purge(change.name)
                log.info(
                    "worker %s %s: %d tasks rescheduled, %d queued dispatch messages drained",
                    change.name,
                    change.kind,
                    moved,
                    drained,
                )
        self._refresh_live()
        self.dirty = True

    def _round_due(self, now: float) -> bool:
        return (
            self.dirty
            and bool(self.book.pending)
            and now - self.last_round >= self.config.round_interval
        )

    def _policy(self, now: float) -> Policy:
        c = self.config
        return Policy(c.strategy, c.priority_weight, c.aging_interval, c.preference_bonus, now)

    def _round(self, turn: float) -> None:
        """The round of the full turn that started at ``turn`` (monotonic)."""
        started = time.time()
        self.last_round, self.dirty = turn, False
        self._refresh_speeds()
        workers = self._loaded_workers()
        free = sum(w.free for w in workers)
        tasks = self.book.due(
            started,
            limit=max(free, MIN_CONSIDERED),
            classes=self.config.max_classes_per_round or None,
            aging_interval=self.config.aging_interval,
        )
        result = plan(tasks, workers, self._policy(started))
        planned = time.time()
        placed = list(result.assignments.items())
        by_worker: dict[str, tuple[list[str], list[bytes]]] = {}
        for task_id, worker in placed:
            t = self.book.pending[task_id]
            dispatch = TaskDispatch(
                task_id, t.attempt, t.request.type, t.request.payload, started + t.request.timeout
            )
            ids, bodies = by_worker.setdefault(worker, ([], []))
            ids.append(task_id)
            bodies.append(encode(dispatch))
        for worker, (ids, bodies) in by_worker.items():
            self.dispatcher.publish(worker, ids, bodies)
        self.book.dispatching(placed, started)
        published = time.time()
        changed = [
            (i, u.message) for i, u in result.unplaced.items() if self.reasons.get(i) != u.message
        ]
        if changed:
            self.reasons.update(changed)
            self.ledger.set_reasons(changed)
        for task_id, _ in placed:
            self.reasons.pop(task_id, None)
        self.metrics.round_seconds.observe(time.time() - started)
        if placed or changed:
            log.debug(
                "round: %d placed, %d waiting, %.1f ms (plan %.1f, publish %.1f)",
                len(placed),
                len(result.unplaced),
                1000 * (time.time() - started),
                1000 * (planned - started),
                1000 * (published - planned),
            )

    def _loaded_workers(self) -> list[Worker]:
        """The live workers not drained, with their in-flight counts; a worker's view is
        made again only when its count changed (a round with a thousand workers would
        otherwise spend more on copies than ``plan()`` spends on the round)."""
        workers = []
        for name, live in self.live.items():
            if name in self.drained:
                continue
            running = self.book.running(name)
            view = self.loaded.get(name)
            if view is None or view.running != running:
                view = self.loaded[name] = live.with_running(running)
            workers.append(view)
        return workers
