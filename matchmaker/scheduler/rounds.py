"""Rounds: the live workers from the inventory, and ``plan()`` over the backlog and free slots."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from matchmaker.engine import plan
from matchmaker.messages import (
    TaskDispatch,
    encode,
)
from matchmaker.models import Policy, Worker
from matchmaker.scheduler.state import Core
from membership.tags import Advertised

log = logging.getLogger("matchmaker.service")

MIN_CONSIDERED = 64  # per group, so new work gets a reason even when every slot is taken


def worker_of(advertised: Advertised) -> Worker:
    """The engine's view of a worker the inventory lists (nothing running yet)."""
    return Worker(
        advertised.name,
        advertised.capabilities,
        advertised.slots,
        attributes=advertised.attributes,
        perf=advertised.perf,
    )


@dataclass
class Views:
    """The workers of the last round: kept up to date by difference, so a turn remakes
    the views of the workers whose in-flight counts or speeds moved, not every view."""

    live: dict[str, Worker]  # the live workers they were made from
    drained: frozenset[str]
    loads: dict[str, int]  # ``Book.loads()`` then
    workers: list[Worker]
    at: dict[str, int]  # name -> place in ``workers``
    free: int
    stale: set[str] = field(default_factory=set)  # names whose live worker changed


class Rounds(Core):
    """The scheduler's rounds and the workers they place on."""

    views: Views | None = None

    def _refresh_speeds(self) -> None:
        """The workers whose learned speeds moved get views with them before the round
        (speeds are on the tier grid, so most results move none)."""
        for name in self.timed:
            live = self.live.get(name)
            speeds = self.rates.speeds(name)
            if live is not None and speeds != live.speeds:
                self.live[name] = live.with_speeds(speeds)
                if self.views is not None:
                    self.views.stale.add(name)
        self.timed.clear()

    def _refresh_live(self) -> None:
        """The inventory's workers; a newcomer's queue is declared before its first dispatch."""
        assert self.inventory is not None
        advertised = {name: worker_of(lw.worker) for name, lw in self.inventory.snapshot().items()}
        for gone in set(self.live) - set(advertised):
            self.rates.forget(gone)
        self.in_pool = set(advertised)
        if self.liveness is not None:  # only those consuming their queue get dispatches
            advertised = self.liveness.present(advertised)
        self.live = {}
        for name, worker in advertised.items():
            self.rates.advertise(name, worker.perf)
            speeds = self.rates.speeds(name)
            self.live[name] = worker.with_speeds(speeds) if speeds else worker
            if self.config.pipeline_depth and worker.slots:  # k dispatches beyond its slots
                self.live[name] = self.live[name].with_slots(
                    worker.slots + self.config.pipeline_depth
                )
            if self.transport is not None:
                self.transport.declare_worker(name)

    def _reconcile_inventory(self) -> None:
        self._refresh_live()
        now = self.clock.time()
        # Not yet seen consuming is no loss (a standby taking over learns the consumers a
        # moment later); a dropped consumer comes as a change of its own.
        for worker in sorted(self.book.workers_with_tasks() - self.in_pool):
            moved = self.book.worker_lost(worker, now, "is not in the inventory")
            log.info("worker %s is gone; %d tasks back to pending", worker, moved)
        self.ledger.commit()
        self.dirty = True

    def _apply_changes(self) -> None:
        if self.changes.empty():
            return
        now = self.clock.time()
        while not self.changes.empty():
            change = self.changes.get_nowait()
            if change.kind == "rejected":
                log.warning("worker %s left out of the inventory: %s", change.name, change.reason)
            if change.gone:
                moved = self.book.worker_lost(change.name, now, change.kind)
                drained = self.transport.purge(change.name) if self.transport else 0
                log.info(
                    "worker %s %s: %d tasks rescheduled, %d queued dispatch messages drained",
                    change.name,
                    change.kind,
                    moved,
                    drained,
                )
        self._refresh_live()
        self.dirty = True

    def _policy(self, now: float) -> Policy:
        c = self.config
        return Policy(c.strategy, c.priority_weight, c.aging_interval, c.preference_bonus, now)

    def _round(self) -> None:
        """``plan()`` over the backlog (the oldest tasks of each group, as many as there are
        free slots, ``Book.due``) and the live workers; what it places is published."""
        assert self.transport is not None
        started = self.clock.time()
        self.dirty = False
        self._refresh_speeds()
        workers, free = self._loaded_workers()
        tasks = self.book.due(
            started,
            limit=max(free, MIN_CONSIDERED),
            classes=self.config.max_classes_per_round or None,
            aging_interval=self.config.aging_interval,
        )
        result = plan(tasks, workers, self._policy(started))
        planned = self.clock.time()
        placed = list(result.assignments.items())
        by_worker: dict[str, tuple[list[str], list[bytes]]] = {}
        for task_id, worker in placed:
            t = self.book.open_task(task_id)
            assert t is not None  # the round's tasks are the book's pending ones
            dispatch = TaskDispatch(
                task_id, t.attempt, t.request.type, t.request.payload, started + t.request.timeout
            )
            ids, bodies = by_worker.setdefault(worker, ([], []))
            ids.append(task_id)
            bodies.append(encode(dispatch))
        for worker, (ids, bodies) in by_worker.items():
            self.transport.dispatch(worker, ids, bodies)
        self.book.dispatching(placed, started)
        published = self.clock.time()
        changed = self.book.explain((i, u.message) for i, u in result.unplaced.items())
        ended = self.clock.time()
        self.metrics.round_seconds.observe(ended - started)
        if placed or changed:
            log.debug(
                "round: %d placed, %d waiting, %.1f ms (plan %.1f, publish %.1f)",
                len(placed),
                len(result.unplaced),
                1000 * (ended - started),
                1000 * (planned - started),
                1000 * (published - planned),
            )

    def _loaded_workers(self) -> tuple[list[Worker], int]:
        """The live workers not drained, with their in-flight counts, and their free slots
        in all. A worker's view is made again only when its count or its speeds changed,
        and only those are visited unless the live or drained workers changed (a round with
        a thousand workers would otherwise spend more on them than ``plan()`` on the round)."""
        loads = self.book.loads()
        views = self.views
        if views is None or views.live is not self.live or views.drained != self.drained:
            views = self.views = self._all_views(loads)
        else:
            moved, views.stale = views.stale, set()
            for name in views.loads.keys() | loads.keys():
                if views.loads.get(name, 0) != loads.get(name, 0):
                    moved.add(name)
            for name in moved:
                i = views.at.get(name)
                if i is not None:
                    old, new = views.workers[i], self._view(name, loads.get(name, 0))
                    views.workers[i] = new
                    views.free += new.free - old.free
            views.loads = loads
        return list(views.workers), views.free

    def _all_views(self, loads: dict[str, int]) -> Views:
        workers: list[Worker] = []
        at: dict[str, int] = {}
        free = 0
        for name in self.live:
            if name not in self.drained:
                view = self._view(name, loads.get(name, 0))
                at[name] = len(workers)
                workers.append(view)
                free += view.free
        return Views(self.live, frozenset(self.drained), loads, workers, at, free)

    def _view(self, name: str, running: int) -> Worker:
        """The live worker with ``running`` tasks (itself when idle: no copy)."""
        live = self.live[name]
        return live if live.running == running else live.with_running(running)
