"""The scheduler service: intake, rounds, push, results, recovery.

One thread runs the loop; Serf's inventory feeds it changes from its own
thread through a queue. Each turn of the loop:

1. lets pika deliver what arrived (requests, results, confirms) into buffers,
   and sends what the last turn queued (acks, dispatches, events) in one go;
   while the next full turn is held (see ``_wait``), what arrives is taken in
   inside the wait, at most every ``HELD_INTAKE_INTERVAL``: requests
   validated and recorded pending, results applied (uncommitted, unacked), so
   the due turn is left with its commit and its round;
2. applies inventory changes (a failed or departed worker's tasks go back to
   pending with attempt + 1, and its queue is drained), and records the
   confirmed dispatches assigned;
3. in a full turn, due once per round interval while work comes in: takes in
   what is still buffered (invalid requests and results are set aside for
   ``mm.dead``; a cancel or a drain is only acted on here, in order);
4. commits the ledger once, then dead-letters what was set aside and queues
   the acks of what it took in;
5. every ``EVENT_INTERVAL``, publishes the events of the state changes so far;
6. in a full turn, when work is pending and something changed, runs a round
   on the committed state: ``plan()``, then the dispatches are published, one
   message per worker, under publisher confirms (``dispatch.py``), and the
   loop goes straight to the next wait, which writes them; what the round
   writes itself (reasons a task waits) is committed with the next turn.

Nothing is acked, and no dispatch leaves, before the ledger holds it; nothing
waits on the broker: acks, dispatches and events are queued frames that the
next turn's first step writes, so a busy turn costs one socket write and one
commit.

Leadership: only the scheduler holding the exclusive queue
``mm.scheduler.leader`` consumes; a second one waits on it and takes over
(rebuilding from the ledger) when the first one's connection dies.
"""

from __future__ import annotations

import gc
import logging
import queue
import signal
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from matchmaker import broker
from matchmaker.api import server as api_server  # api hook
from matchmaker.book import Book, Event, OpenTask
from matchmaker.config import Config
from matchmaker.dispatch import Dispatcher
from matchmaker.engine import plan
from matchmaker.frames import DeliveryReader, consume, reader_of
from matchmaker.ledger import Ledger
from matchmaker.limits import Quotas
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    VERSION,
    Cancel,
    Drain,
    MessageError,
    TaskDispatch,
    TaskRequest,
    check_dispatchable,
    decode,
    decode_results,
    encode,
)
from matchmaker.metrics import Metrics
from matchmaker.models import Policy, Worker
from membership.inventory import Change, Inventory

log = logging.getLogger("matchmaker.service")

LEADER_QUEUE = "mm.scheduler.leader"
PREFETCH = 2000
HOLD_BELOW = PREFETCH // 4  # an intake this large means a backlog: the next turn does not wait
SWEEP_INTERVAL = 0.25
IDLE_WAIT = 0.05  # confirms are collected at the next turn, at the latest this late
EVENT_INTERVAL = 0.02
HELD_INTAKE_INTERVAL = 0.002  # held deliveries are taken in at most this often
GC_YOUNG = 10_000
MIN_CONSIDERED = 64  # per group, so new work gets a reason even when every slot is taken
EVENT_PROPERTIES = pika.BasicProperties(content_type="application/json")
SENDER = ("", "admin")  # (owner, role) of every request while all senders share one broker user


def owner_of(t: OpenTask) -> str:
    """The task's owner, as its request recorded it."""
    return SENDER[0]


def quotas_of(config: Config) -> Quotas:
    return Quotas(
        config.max_pending_per_owner,
        config.submit_rate_per_owner,
        config.submit_burst,
        dict(config.max_priority_by_role),
    )


def settle_garbage_collector() -> None:
    """What start-up made (modules, the restored book) is frozen out of collection, and the
    youngest generation is collected every ``GC_YOUNG`` allocations instead of 700.

    The loop allocates per task and frees nearly all of it by reference counting; the
    cyclic collector only added pauses: in-process, 60,000 requests taken in cost 5 full
    collections (254 ms, the longest 74 ms, the whole time a stall of the loop) and 50
    middle ones (up to 8 ms); frozen and with these thresholds, none of either, and the
    intake took 13 % less time.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 50, 100)


@dataclass
class Delivery:
    tag: int
    body: bytes


class Scheduler:
    """``python -m matchmaker run``: the push pipeline's scheduler."""

    dispatcher: Dispatcher

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ledger = Ledger(config.ledger_path, background_checkpoints=True)
        self.quotas = quotas_of(config)
        self.book = self._new_book()
        self.metrics = Metrics(config.metrics_port)
        self.changes: queue.Queue[Change] = queue.Queue()
        self.inventory: Inventory | None = None
        self.live: dict[str, Worker] = {}
        self.loaded: dict[str, Worker] = {}  # live workers with their last in-flight counts
        self.drained = self.ledger.drained()
        self.reasons: dict[str, str] = {}
        self.requests: list[Delivery] = []  # delivered, not yet taken in
        self.results: list[Delivery] = []
        self.arrived = 0  # deliveries since the last full turn
        self.request_tag = 0  # the last request taken in: acked after the next commit
        self.result_tag = 0
        self.rejects: list[tuple[str, bytes, str]] = []  # (source queue, body, reason)
        self.next_held_intake = 0.0
        self.dirty = True
        self.last_round = 0.0
        self.next_turn = 0.0  # when the next full turn (intake, results, round) is due
        self.reader: DeliveryReader | None = None
        self.last_events = 0.0
        self.next_sweep = 0.0
        self.stopping = False
        self.connection: pika.BlockingConnection | None = None
        self.api: api_server.ApiServer | None = None  # api hook

    # -- lifecycle --------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.api = api_server.start(self.config)  # api hook: ``_observe`` offers it snapshots
        self.inventory = Inventory(
            self.config.serf_rpc, self.config.serf_auth_key or None, on_change=self.changes.put
        )
        self.inventory.start()
        try:
            while not self.stopping:
                try:
                    self._serve()
                except (
                    pika.exceptions.AMQPConnectionError,
                    pika.exceptions.StreamLostError,
                    pika.exceptions.ConnectionClosed,
                    pika.exceptions.ChannelClosed,
                ) as error:
                    if self.stopping:
                        break
                    log.warning("lost the broker (%s); reconnecting", error.__class__.__name__)
                    self._forget_deliveries()
                    time.sleep(0.5)
        finally:
            if self.api is not None:  # api hook
                self.api.stop()
            self.inventory.stop()
            self.ledger.commit()
            self.ledger.close()
            if self.connection and self.connection.is_open:
                self.connection.close()
            log.info("scheduler stopped")

    def _new_book(self) -> Book:
        """An empty book; the quotas count what it opens and closes from now on."""
        self.quotas.forget_open()
        book = Book(self.ledger, self.config.retry_backoff, self.config.result_grace)
        book.on_open = lambda t: self.quotas.opened(owner_of(t))
        book.on_close = lambda t: self.quotas.closed(owner_of(t))
        return book

    def _lead(self, connection: pika.BlockingConnection) -> BlockingChannel:
        """Wait until this scheduler holds the leader queue; returns a fresh channel."""
        announced = False
        while not self.stopping:
            channel = connection.channel()
            try:
                channel.queue_declare(LEADER_QUEUE, exclusive=True, auto_delete=True)
                log.info("this scheduler is active")
                return channel
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code != 405:
                    raise
                if not announced:
                    log.info("another scheduler is active; standing by")
                    announced = True
                connection.sleep(0.5)
        raise SystemExit(0)

    def _serve(self) -> None:
        connection = broker.connect(
            self.config.broker_url,
            attempts=30,
            name="matchmaker-scheduler",
            tls=broker.TLSFiles.of(self.config),
        )
        self.connection = connection
        control = self._lead(connection)
        broker.declare_core(control)
        # Leading now: the ledger is the truth (a previous leader may have written it).
        self.book = self._new_book()
        self.book.restore(self.ledger.open_tasks())
        self.drained = self.ledger.drained()
        self.reasons.clear()
        log.info(
            "restored %d pending and %d in-flight tasks from %s",
            len(self.book.pending),
            len(self.book.in_flight),
            self.ledger.path,
        )
        settle_garbage_collector()
        self.dispatcher = Dispatcher(connection.channel())
        self._reconcile_inventory()
        intake = connection.channel()
        intake.basic_qos(prefetch_count=PREFETCH)
        consume(intake, broker.REQUESTS, self._on_request)
        results = connection.channel()
        results.basic_qos(prefetch_count=PREFETCH)
        consume(results, broker.RESULTS, self._on_result)
        ack_request, ack_result = broker.queued_ack(intake), broker.queued_ack(results)
        self.reader = reader_of(intake)
        try:
            while not self.stopping:
                self._await_turn(connection)
                now = time.time()
                self._apply_changes()
                self._apply_confirms()  # before the results, which a confirm precedes
                arrived, full = self.arrived, now >= self.next_turn or self.arrived >= HOLD_BELOW
                if full:
                    self.arrived = 0
                    self._take_requests(control)
                    self._take_results()
                if now >= self.next_sweep:
                    self._sweep()
                self.ledger.commit()  # one commit a turn; every frame of it is sent after
                self._dead_letter(control)  # before the acks of what it rejected
                if self.request_tag:
                    ack_request(self.request_tag, True)
                    self.request_tag = 0
                if self.result_tag:
                    ack_result(self.result_tag, True)
                    self.result_tag = 0
                if time.time() - self.last_events >= EVENT_INTERVAL:
                    self._publish_events(control)  # before the round: its frames go out last
                ran_round = full and self._round_due(now)
                if ran_round:  # on committed state: what it writes itself (reasons) can wait
                    self._round(now)
                if full and (arrived or ran_round):
                    # a backlog (a large intake) is paced by the prefetch window instead
                    self.next_turn = now + self.config.round_interval * (arrived < HOLD_BELOW)
        finally:
            if connection.is_open:
                self._publish_events(control)

    # -- the turn of the loop ---------------------------------------------------

    def _on_request(self, tag: int, body: bytes) -> None:
        self.requests.append(Delivery(tag, body))
        self.arrived += 1

    def _on_result(self, tag: int, body: bytes) -> None:
        self.results.append(Delivery(tag, body))
        self.arrived += 1

    def _forget_deliveries(self) -> None:
        """The connection is gone: what it delivered and was not acked comes again."""
        self.requests.clear()
        self.results.clear()
        self.rejects.clear()
        self.arrived = self.request_tag = self.result_tag = 0

    def _await_turn(self, connection: pika.BlockingConnection) -> None:
        """Wait for broker events until the next turn has work (``_wait``); deliveries
        that arrive while the turn is held are taken in inside the wait."""
        if self.reader is not None:
            self.reader.on_held = self._take_in_held
        try:
            connection.process_data_events(time_limit=self._wait())
        finally:
            if self.reader is not None:
                self.reader.on_held = None

    def _take_in_held(self) -> None:
        """Deliveries that arrived while a turn is held, taken in at once: validated,
        recorded pending or applied, written to the ledger uncommitted, so the due turn
        has only its round and the COMMIT left. What needs the broker (dead letters,
        cancels, acks) still waits for that turn."""
        now = time.time()
        if now < self.next_held_intake:
            return
        self.next_held_intake = now + HELD_INTAKE_INTERVAL
        self._apply_confirms()
        self._take_requests(None)
        self._take_results()
        self.ledger.write()  # the statements now, the turn's COMMIT makes them durable

    def _wait(self) -> float:
        """How long the next turn may wait for broker events before it has work of its own.

        Work is done in full turns, at most one per round interval while work
        comes in: a full turn takes in what arrived since the last one, commits
        it and runs the round at once, then the next one is due a round
        interval later. Deliveries in between do not end the wait (they are
        taken in inside it, ``_take_in_held``, but nothing is committed, acked
        or placed until the turn is due): under load that costs one commit and
        one round per interval instead of a turn per delivery, and a task taken
        in never waits for a round on a clock of its own. After an intake of
        ``HOLD_BELOW`` or more the next full turn is due at once: the broker
        is handing over a backlog as fast as the acks free its prefetch
        window (rounds then still run at most once per interval).
        """
        if not self.changes.empty():
            return 0
        now = time.time()
        until_turn = self.next_turn - now
        held = until_turn > 0
        if self.reader is not None:
            self.reader.hold = held
        wait = min(IDLE_WAIT, until_turn) if held or self.requests or self.results else IDLE_WAIT
        if self.book.pending and self.dirty:  # a round: in a full turn, once per interval
            until_round = self.last_round + self.config.round_interval - now
            wait = min(wait, max(until_turn, until_round))
        if self.book.events and not held:  # else they go out with the coming turn
            wait = min(wait, self.last_events + EVENT_INTERVAL - now)
        return max(0.0, wait)

    def _refresh_live(self) -> None:
        """The inventory's workers; a newcomer's queue is declared before its first dispatch."""
        assert self.inventory is not None
        self.live = {name: lw.worker for name, lw in self.inventory.snapshot().items()}
        self.loaded = {}
        for name in self.live:
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

    def _take_requests(self, control: BlockingChannel | None) -> None:
        """Take in the buffered requests: new tasks recorded pending, invalid ones set
        aside for ``mm.dead``. Without ``control`` (inside the wait) it stops before a
        cancel or a drain, which waits, with what came after it, for the turn."""
        now = time.time()
        new: dict[str, TaskRequest] = {}
        taken = 0
        for d in self.requests:
            try:
                message = decode(d.body, expect=("submit", "cancel", "drain"))
                if isinstance(message, TaskRequest):
                    if message.type not in self.config.task_types:
                        raise MessageError(
                            f"unknown task type {message.type!r} (this scheduler knows "
                            f"{', '.join(self.config.task_types)})"
                        )
                    if len(d.body) > MAX_MESSAGE_BYTES // 8:  # only a large one can grow past
                        check_dispatchable(message)
                    if message.id not in new:
                        refusal = self.quotas.admit(*SENDER, message.priority)
                        if refusal is not None:
                            raise MessageError(refusal)
                        new[message.id] = message
                elif control is None:
                    break
                else:
                    self._submit(new, now)  # a cancel may name a task submitted just before it
                    if isinstance(message, Cancel):
                        self._cancel(message.id, now, control)
                    elif isinstance(message, Drain):
                        self._drain(message, now)
            except MessageError as error:
                log.warning("rejected a request: %s", error)
                self.rejects.append((broker.REQUESTS, d.body, str(error)))
            taken += 1
            self.request_tag = d.tag
        self._submit(new, now)
        del self.requests[:taken]

    def _submit(self, new: dict[str, TaskRequest], now: float) -> None:
        if new:
            self.book.submit(list(new.values()), now)
            new.clear()
            self.dirty = True
        self.quotas.settle()

    def _cancel(self, task_id: str, now: float, control: BlockingChannel) -> None:
        was_open, worker = self.book.cancel(task_id, now)
        if worker:
            control.basic_publish(broker.CONTROL, f"cancel.{worker}", encode(Cancel(task_id)))
        self.reasons.pop(task_id, None)
        log.info("cancel %s: %s", task_id, "cancelled" if was_open else "not open, nothing to do")
        self.dirty = True

    def _drain(self, message: Drain, now: float) -> None:
        if message.on:
            self.drained.add(message.worker)
        else:
            self.drained.discard(message.worker)
        self.ledger.set_drained(message.worker, message.on, now)
        log.info("worker %s %s", message.worker, "drained" if message.on else "back in service")
        self.dirty = True

    def _take_results(self) -> None:
        """Apply the buffered results; invalid ones are set aside for ``mm.dead``."""
        if not self.results:
            return
        now = time.time()
        for d in self.results:
            try:
                message = decode_results(d.body)
            except MessageError as error:
                self._reject_result(d.body, str(error))
                continue
            for body, reason in message.invalid:
                self._reject_result(body, reason)
            for result in message.items:
                outcome = self.book.result(result, now)
                if outcome == "stale":
                    log.info(
                        "stale result for %s attempt %d from %s ignored",
                        result.id,
                        result.attempt,
                        result.worker,
                    )
                else:
                    self.reasons.pop(result.id, None)
        self.result_tag = self.results[-1].tag
        self.results.clear()
        self.dirty = True

    def _reject_result(self, body: bytes, reason: str) -> None:
        log.warning("rejected a result: %s", reason)
        self.rejects.append((broker.RESULTS, body, reason))

    def _dead_letter(self, control: BlockingChannel) -> None:
        """Park the rejected requests and results on ``mm.dead``, each with its reason."""
        for source, body, reason in self.rejects:
            broker.dead_letter(control, body, reason, source)
            self.book.count("rejected")
        self.rejects.clear()

    def _apply_confirms(self) -> None:
        acked, nacked = self.dispatcher.confirmed()
        if nacked:
            log.warning("the broker refused %d dispatches; they go back to pending", len(nacked))
            self.book.undispatched(nacked)
            self.dirty = True
        if acked:
            self.book.assigned(acked)

    def _sweep(self) -> None:
        """Periodically: deadlines passed with no result, retries whose backoff ended, metrics."""
        now = time.time()
        self.next_sweep = now + SWEEP_INTERVAL
        self._observe()
        if self.book.expire(now):
            self.dirty = True
        if self.book.pending.backoff_ended(now):
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
        """The round of the full turn that started at ``turn``."""
        started = time.time()
        self.last_round, self.dirty = turn, False
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

    def _publish_events(self, channel: BlockingChannel) -> None:
        """Events go out batched per state: one message per routing key ``task.<state>``."""
        self.last_events = time.time()
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
