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
4. puts what was set aside in the ledger's dead-letter outbox, commits the
   ledger once, then publishes the new letters to ``mm.dead`` (under
   publisher confirms, ``message_id`` = the letter's key; confirmed ones are
   marked sent with a later commit, unsent ones are published again by the
   next connection) and queues the acks of what it took in;
5. every ``EVENT_INTERVAL``, publishes the events of the state changes so far;
6. in a full turn, when work is pending and something changed, runs a round
   on the committed state: ``plan()``, then the dispatches are published, one
   message per worker, under publisher confirms (``dispatch.py``), and the
   loop goes straight to the next wait, which writes them; what the round
   writes itself (reasons a task waits) is committed with the next turn.

Nothing is acked, and no dispatch leaves, before the ledger holds it; nothing
waits on the broker: acks, dispatches and events are queued frames that the
next turn's first step writes, so a busy turn costs one socket write and one
commit. The ack invariant: a ``multiple`` ack of tag T is sent only after a
commit, and only when every delivery up to T on that channel is recorded in
the ledger or in its dead-letter outbox (``frames.AckWindow``).

No input ends the loop: a message that fails validation is dead-lettered
with the reason, and one whose handling fails in any other way is
dead-lettered with ``internal error: <Class>: <text>`` (logged once with its
traceback); only a broker or ledger failure ends a turn. Dead letters: each
rejected message is one letter, keyed by the hash of its source queue and
body, acked only once that letter is committed; a redelivered message whose
letter exists is only acked. What remains: a letter published but not yet
marked sent when the scheduler dies is published again after the restart,
with the same ``message_id``, by which a consumer of ``mm.dead`` can drop it.

The broker is retried for ever, with a capped backoff and one log line per
attempt; SIGTERM is honoured between attempts as between turns. After any
broker error the whole connection is closed before the next: one left open
would keep the leader queue and its deliveries. The loop's timers are
monotonic.

Senders (``identity.Senders``): each delivery carries its AMQP ``user_id``,
which RabbitMQ has checked against the sender's login. A request's sender owns
the task (an id is its owner's: another owner's submit of it is refused); a
cancel of another owner's task, and a drain, need an admin; a result counts
only from the broker user of the worker it names (``mm-worker-<name>``).
Refusals go to ``mm.dead`` with the reason.

Leadership: only the scheduler holding the exclusive queue
``mm.scheduler.leader`` consumes; a second one waits on it and takes over
(rebuilding from the ledger) when the first one's connection dies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
import sqlite3
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
from matchmaker.confirms import Confirms
from matchmaker.dispatch import Dispatcher
from matchmaker.drains import DrainDeadlines
from matchmaker.engine import plan
from matchmaker.frames import AckWindow, DeliveryReader, consume, reader_of
from matchmaker.identity import Senders
from matchmaker.ledger import Ledger, Letter, private_dir
from matchmaker.limits import Quotas
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    VERSION,
    Cancel,
    Drain,
    MessageError,
    Retry,
    TaskDispatch,
    TaskRequest,
    TaskResult,
    check_dispatchable,
    decode,
    decode_results,
    encode,
)
from matchmaker.metrics import Metrics
from matchmaker.models import Policy, Worker
from matchmaker.rates import ServiceRates
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
RECONNECT_BACKOFF = (0.5, 5.0)  # first and longest wait between attempts to reach the broker
LETTERS_KEPT = 24 * 3600.0  # sent dead letters are remembered this long (then pruned)
PRUNE_INTERVAL = 3600.0
# Not one message's fault: the broker or the ledger itself failed. They end the turn.
FATAL = (pika.exceptions.AMQPError, sqlite3.OperationalError)
BROKER_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
)


def describe_error(error: BaseException) -> str:
    """``Class: text`` of an exception, bounded, even if its text cannot be made."""
    try:
        text = str(error)
    except Exception:  # its str() is itself broken (a value too deep to repr)
        text = "(no text)"
    return f"{error.__class__.__name__}: {text[:300]}"


def owner_of(t: OpenTask) -> str:
    """The task's owner, as its request recorded it."""
    return t.owner


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
    user: str | None = None  # the AMQP user_id, checked by the broker


class Scheduler:
    """``python -m matchmaker run``: the push pipeline's scheduler."""

    dispatcher: Dispatcher

    def __init__(self, config: Config) -> None:
        self.config = config
        self.senders = Senders(
            config.authenticated_senders,
            frozenset(config.admin_users),
            frozenset(config.trusted_users),
        )
        private_dir(config.state_dir)
        self.ledger = Ledger(config.ledger_path, background_checkpoints=True)
        self.quotas = quotas_of(config)
        self.book = self._new_book()
        self.metrics = Metrics(config.metrics_port, config.metrics_bind)
        self.changes: queue.Queue[Change] = queue.Queue()
        self.inventory: Inventory | None = None
        self.live: dict[str, Worker] = {}
        self.loaded: dict[str, Worker] = {}  # live workers with their last in-flight counts
        self.rates = ServiceRates()  # learned speeds per (worker, type), perf as the prior
        self.timed: set[str] = set()  # workers whose learned speeds moved since a round
        self.drained = self.ledger.drained()
        self.drain_deadlines = DrainDeadlines()  # drains.py: then the worker's tasks move
        self.reasons: dict[str, str] = {}
        self.requests: list[Delivery] = []  # delivered, not yet taken in
        self.results: list[Delivery] = []
        self.arrived = 0  # deliveries since the last full turn
        self.request_acks = AckWindow()  # what a multiple ack may cover, after the next commit
        self.result_acks = AckWindow()
        # (source queue, body, reason, origin): ``origin`` names the letter for good (the
        # body, or for an item of a batch the batch and the item's place in it)
        self.rejects: list[tuple[str, bytes, str, bytes]] = []
        self.letters: list[Letter] = []  # in the outbox, to publish after the commit
        self.unconfirmed: dict[str, Letter] = {}  # published, by key, until the broker confirms
        self.letter_confirms: Confirms[str] | None = None
        # the loop's timers are monotonic: a wall clock set back must not hold a turn
        self.next_held_intake = 0.0
        self.dirty = True
        self.last_round = 0.0
        self.next_turn = 0.0  # when the next full turn (intake, results, round) is due
        self.reader: DeliveryReader | None = None
        self.last_events = 0.0
        self.next_sweep = 0.0
        self.next_prune = 0.0
        self.stopping = False
        self.connection: pika.BlockingConnection | None = None
        self.api: api_server.ApiServer | None = None  # api hook

    # -- lifecycle --------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; a lost or unreachable broker is retried for
        ever, with a capped backoff and one log line per attempt."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.api = api_server.start(self.config)  # api hook: ``_observe`` offers it snapshots
        self.inventory = Inventory(
            self.config.serf_rpc, self.config.serf_auth_key or None, on_change=self.changes.put
        )
        self.inventory.start()
        first, longest = RECONNECT_BACKOFF
        delay = first
        try:
            while not self.stopping:
                try:
                    self._serve()
                    delay = first
                except BROKER_LOST as error:
                    if self.stopping:
                        break
                    self.metrics.reconnects.inc()
                    log.warning(
                        "lost the broker (%s); reconnecting in %.1fs",
                        describe_error(error),
                        delay,
                    )
                except broker.TLSRefused:
                    raise  # a configuration error: said in one sentence, not retried
                except broker.BrokerError as error:
                    if self.stopping:
                        break
                    log.warning("%s; retrying in %.1fs", error, delay)
                self._drop_connection()
                if broker.pause(delay, lambda: self.stopping):
                    break
                delay = min(delay * 2, longest)
        finally:
            if self.api is not None:  # api hook
                self.api.stop()
            self.inventory.stop()
            self.ledger.commit()
            self.ledger.close()
            if self.connection and self.connection.is_open:
                with contextlib.suppress(Exception):
                    self.connection.close()
            log.info("scheduler stopped")

    def _new_book(self) -> Book:
        """An empty book; the quotas count what it opens and closes from now on."""
        self.quotas.forget_open()
        book = Book(self.ledger, self.config.retry_backoff, self.config.result_grace)
        book.on_open = self._opened
        book.on_close = lambda t: self.quotas.closed(owner_of(t))
        return book

    def _opened(self, t: OpenTask) -> None:
        self.quotas.opened(owner_of(t))
        self.metrics.opened(t.request.id, t.request.type, t.owner)

    def _drop_connection(self) -> None:
        """Forget what the connection delivered (it comes again) and close it: one left
        open by a channel error would keep the leader queue and its unacked deliveries
        while the next connection stood by."""
        self._forget_deliveries()
        self.metrics.leader.set(0)
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

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
            attempts=None,
            name="matchmaker-scheduler",
            stopping=lambda: self.stopping,
            tls=broker.TLSFiles.of(self.config),
        )
        self.connection = connection
        control = self._lead(connection)
        self.metrics.leader.set(1)
        if self.api is not None:  # api hook: a standby's API redirects here
            self.api.lead()
        broker.declare_core(control)
        # Leading now: the ledger is the truth (a previous leader may have written it).
        self.book = self._new_book()
        self.book.restore(self.ledger.open_tasks())
        self.drained = self.ledger.drained()
        self.drain_deadlines = DrainDeadlines(self.ledger.drain_deadlines())
        self.reasons.clear()
        log.info(
            "restored %d pending and %d in-flight tasks from %s",
            len(self.book.pending),
            len(self.book.in_flight),
            self.ledger.path,
        )
        settle_garbage_collector()
        self.dispatcher = Dispatcher(connection.channel())
        self.letter_confirms = Confirms(connection.channel())
        self.letters = self.ledger.unsent_letters()  # published, maybe not confirmed, before
        self._reconcile_inventory()
        intake = connection.channel()
        intake.basic_qos(prefetch_count=PREFETCH)
        consume(intake, broker.REQUESTS, self._on_request)
        results = connection.channel()
        results.basic_qos(prefetch_count=PREFETCH)
        consume(results, broker.RESULTS, self._on_result)
        ack_request, ack_result = broker.queued_ack(intake), broker.queued_ack(results)
        self.reader = reader_of(intake)
        self._send_letters()
        try:
            while not self.stopping:
                self._await_turn(connection)
                clock = time.monotonic()
                self._apply_changes()
                self._apply_confirms()  # before the results, which a confirm precedes
                arrived = self.arrived
                full = clock >= self.next_turn or arrived >= HOLD_BELOW
                if full:
                    self.arrived = 0
                    self._take_requests(control)
                    self._take_results()
                if clock >= self.next_sweep:
                    self._sweep()
                    self._evict_drained(control)
                self._outbox()  # the letters of what was rejected, in this turn's commit
                with self.metrics.commit_seconds.time():
                    self.ledger.commit()  # one commit a turn; every frame of it is sent after
                self._send_letters()
                # Acks only after the commit, and only as far as every delivery up to the
                # tag is recorded or in the outbox (AckWindow): nothing else is ever acked.
                if tag := self.request_acks.due():
                    ack_request(tag, True)
                if tag := self.result_acks.due():
                    ack_result(tag, True)
                if time.monotonic() - self.last_events >= EVENT_INTERVAL:
                    self._publish_events(control)  # before the round: its frames go out last
                ran_round = full and self._round_due(clock)
                if ran_round:  # on committed state: what it writes itself (reasons) can wait
                    self._round(clock)
                if full and (arrived or ran_round):
                    # a backlog (a large intake) is paced by the prefetch window instead
                    self.next_turn = clock + self.config.round_interval * (arrived < HOLD_BELOW)
        finally:
            if connection.is_open:
                self._publish_events(control)

    # -- the turn of the loop ---------------------------------------------------

    def _on_request(self, tag: int, body: bytes, user: str | None) -> None:
        self.requests.append(Delivery(tag, body, user))
        self.arrived += 1

    def _on_result(self, tag: int, body: bytes, user: str | None) -> None:
        self.results.append(Delivery(tag, body, user))
        self.arrived += 1

    def _forget_deliveries(self) -> None:
        """The connection is gone: what it delivered and was not acked comes again; letters
        not yet confirmed are in the outbox still, and go again from the next one."""
        self.requests.clear()
        self.results.clear()
        self.rejects.clear()
        self.letters.clear()
        self.unconfirmed.clear()
        self.letter_confirms = None
        self.arrived = 0
        self.request_acks, self.result_acks = AckWindow(), AckWindow()

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
        clock = time.monotonic()
        if clock < self.next_held_intake:
            return
        self.next_held_intake = clock + HELD_INTAKE_INTERVAL
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
        now = time.monotonic()
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

    def _take_requests(self, control: BlockingChannel | None) -> None:
        """Take in the buffered requests: new tasks recorded pending, invalid ones set
        aside for ``mm.dead``, each settled in ``request_acks``. Without ``control``
        (inside the wait) it stops before a cancel or a drain, which waits, with what
        came after it, for the turn. A request whose handling fails in any other way
        is dead-lettered with the error (``_internal_error``); the rest go on."""
        now = time.time()
        new: dict[str, tuple[TaskRequest, str, bytes]] = {}
        taken = 0
        settle = self.request_acks.settle
        for d in self.requests:
            try:
                owner = self.senders.owner(d.user)
                message = decode(d.body, expect=("submit", "cancel", "retry", "drain"))
                if isinstance(message, TaskRequest):
                    if message.type not in self.config.task_types:
                        raise MessageError(
                            f"unknown task type {message.type!r} (this scheduler knows "
                            f"{', '.join(self.config.task_types)})"
                        )
                    if len(d.body) > MAX_MESSAGE_BYTES // 8:  # only a large one can grow past
                        check_dispatchable(message)
                    first = new.get(message.id)
                    if first is None:
                        refusal = self.quotas.admit(owner, self._role(owner), message.priority)
                        if refusal is not None:
                            raise MessageError(refusal)
                        new[message.id] = (message, owner, d.body)
                    elif first[1] != owner and not self.senders.privileged(owner):
                        raise MessageError(f"id {message.id} belongs to another owner")
                elif control is None:
                    break
                else:
                    self._submit(new, now)  # a cancel may name a task submitted just before it
                    if isinstance(message, Cancel):
                        self._cancel(message.id, now, control, owner)
                    elif isinstance(message, Retry):
                        self._retry(message.id, now, owner)
                    elif isinstance(message, Drain):
                        self._drain(message, now, owner)
            except MessageError as error:
                log.warning("rejected a request: %s", error)
                self.rejects.append((broker.REQUESTS, d.body, str(error), d.body))
            except FATAL:
                raise
            except Exception as error:
                self._internal_error(broker.REQUESTS, d.body, error)
            taken += 1
            settle(d.tag)
        self._submit(new, now)
        del self.requests[:taken]

    def _submit(self, new: dict[str, tuple[TaskRequest, str, bytes]], now: float) -> None:
        """Record the new tasks in one go; if that fails, one by one, and only the one
        that fails is dead-lettered. A known id of another owner is refused (a trusted
        sender's is a duplicate, as it always was)."""
        if not new:
            self.quotas.settle()
            return
        items = list(new.values())
        new.clear()
        self.dirty = True
        try:
            self._submit_owned(items, now)
        except FATAL:
            raise
        except Exception:
            for item in items:
                try:
                    self._submit_owned([item], now)
                except FATAL:
                    raise
                except Exception as error:
                    self._internal_error(broker.REQUESTS, item[2], error)
        self.quotas.settle()

    def _role(self, owner: str) -> str:
        """The quota role of a request's sender: ``admin`` or ``client``."""
        return "admin" if self.senders.admin(owner) else "client"

    def _submit_owned(self, items: list[tuple[TaskRequest, str, bytes]], now: float) -> None:
        _, clashes = self.book.submit_owned([(r, owner) for r, owner, _ in items], now)
        if not clashes:
            return
        by_id = {r.id: (owner, body) for r, owner, body in items}
        for request, _ in clashes:
            owner, body = by_id[request.id]
            if not self.senders.privileged(owner):
                reason = f"id {request.id} belongs to another owner"
                log.warning("rejected a request: %s", reason)
                self.rejects.append((broker.REQUESTS, body, reason, body))

    def _internal_error(
        self, source: str, body: bytes, error: Exception, origin: bytes | None = None
    ) -> None:
        """A message whose handling failed for a reason no check foresaw: dead-lettered
        with the error, logged once with its traceback; the loop goes on."""
        reason = f"internal error: {describe_error(error)}"
        log.error("dead-lettered a message from %s: %s", source, reason, exc_info=error)
        self.rejects.append((source, body, reason, body if origin is None else origin))

    def _cancel(self, task_id: str, now: float, control: BlockingChannel, sender: str) -> None:
        owner = self.book.owner(task_id)
        if owner is not None and owner != sender and not self.senders.admin(sender):
            raise MessageError(
                f"cancel of {task_id} refused: the task belongs to another owner "
                "(only an admin may cancel it)"
            )
        was_open, worker = self.book.cancel(task_id, now)
        if worker:
            control.basic_publish(broker.CONTROL, f"cancel.{worker}", encode(Cancel(task_id)))
        self.reasons.pop(task_id, None)
        log.info("cancel %s: %s", task_id, "cancelled" if was_open else "not open, nothing to do")
        self.dirty = True

    def _retry(self, task_id: str, now: float, sender: str) -> None:
        row = self.ledger.get(task_id)
        if row is None:
            raise MessageError(f"retry of {task_id} refused: no such task")
        if row.owner != sender and not self.senders.admin(sender):
            raise MessageError(
                f"retry of {task_id} refused: the task belongs to another owner "
                "(only an admin may retry it)"
            )
        self.book.retry(row, now)
        log.info("retry %s: pending again as attempt %d", task_id, row.attempt + 1)
        self.dirty = True

    def _drain(self, message: Drain, now: float, sender: str) -> None:
        if not self.senders.admin(sender):
            raise MessageError(f"drain of {message.worker} refused: only an admin may drain")
        if message.on:
            self.drained.add(message.worker)
        else:
            self.drained.discard(message.worker)
        at = self.drain_deadlines.drained(message.worker, message.on, message.deadline, now)
        self.ledger.set_drained(message.worker, message.on, now, at)
        log.info("worker %s %s", message.worker, "drained" if message.on else "back in service")
        self.dirty = True

    def _evict_drained(self, control: BlockingChannel) -> None:
        """Drained workers whose deadline passed (``drains.py``): each task still there is
        cancelled on the worker and goes back to pending to run elsewhere."""
        now = time.time()
        for worker in self.drain_deadlines.due(now):
            if worker not in self.drained:
                continue
            ids = sorted(self.book.by_worker.get(worker, ()))
            for task_id in ids:
                control.basic_publish(broker.CONTROL, f"cancel.{worker}", encode(Cancel(task_id)))
            purged = self.dispatcher.purge(worker, forget=False)  # it stays, drained
            moved = self.book.worker_lost(worker, now, "was drained and its deadline passed")
            self.ledger.set_drained(worker, True, now)  # still drained, the deadline spent
            log.info(
                "worker %s: drain deadline passed; %d tasks cancelled there and rescheduled, "
                "%d queued dispatch messages purged",
                worker,
                moved,
                purged,
            )
            self.dirty = True

    def _take_results(self) -> None:
        """Apply the buffered results, each settled in ``result_acks``; invalid ones (and
        any whose handling fails, ``_internal_error``) are set aside for ``mm.dead``."""
        if not self.results:
            return
        now = time.time()
        settle = self.result_acks.settle
        for d in self.results:
            try:
                sender = self.senders.owner(d.user)
                message = decode_results(d.body)
            except MessageError as error:
                self._reject_result(d.body, str(error))
                settle(d.tag)
                continue
            except FATAL:
                raise
            except Exception as error:
                self._internal_error(broker.RESULTS, d.body, error)
                settle(d.tag)
                continue
            for n, (body, reason) in enumerate(message.invalid):
                self._reject_result(body, reason, d.body + b"\0invalid %d" % n)
            for n, result in enumerate(message.items):
                origin = d.body + b"\0item %d" % n
                try:
                    forged = self.senders.reporting(sender, result.worker)
                    if forged is not None:
                        self.book.ignore(result, now, forged)
                        reason = f"result for {result.id}: {forged}"
                        self._reject_result(encode(result), reason, origin)
                        continue
                    self._apply_result(result, now)
                except FATAL:
                    raise
                except Exception as error:
                    self._internal_error(broker.RESULTS, encode(result), error, origin)
            settle(d.tag)
        self.results.clear()
        self.dirty = True

    def _apply_result(self, result: TaskResult, now: float) -> None:
        flying = self.book.in_flight.get(result.id)
        outcome = self.book.result(result, now)
        if outcome == "succeeded" and flying is not None:
            self._observe_run(result, flying.request.type)
        if outcome == "ignored":
            log.info(
                "result for %s attempt %d from %s ignored",
                result.id,
                result.attempt,
                result.worker,
            )
        else:
            self.reasons.pop(result.id, None)

    def _observe_run(self, result: TaskResult, task_type: str) -> None:
        """A succeeded run's time teaches the worker's speed on its type (a worker's report of
        its own times is trusted as far as its own placements go)."""
        if result.started_at is None or result.finished_at is None:
            return
        try:
            self.rates.observe(result.worker, task_type, result.finished_at - result.started_at)
        except ValueError:
            return  # a negative or absurd time: nothing learned
        self.timed.add(result.worker)

    def _refresh_speeds(self) -> None:
        """The workers whose learned speeds moved get views with them before the round."""
        for name in self.timed:
            live = self.live.get(name)
            if live is not None:
                self.live[name] = live.with_speeds(self.rates.speeds(name))
                self.loaded.pop(name, None)
        self.timed.clear()

    def _reject_result(self, body: bytes, reason: str, origin: bytes | None = None) -> None:
        log.warning("rejected a result: %s", reason)
        self.rejects.append((broker.RESULTS, body, reason, body if origin is None else origin))

    def _outbox(self) -> None:
        """The turn's rejected messages into the ledger's dead-letter outbox, committed
        with the turn; those the outbox did not hold yet are published after the commit."""
        if not self.rejects:
            return
        now = time.time()
        letters = [
            Letter.of(source, body, reason, now, origin)
            for source, body, reason, origin in self.rejects
        ]
        self.rejects.clear()
        fresh = self.ledger.outbox(letters)
        self.letters.extend(fresh)
        self.book.count("rejected", len(fresh))

    def _send_letters(self) -> None:
        """Publish the committed letters to ``mm.dead`` under publisher confirms, each with
        its key as ``message_id``; ``_apply_confirms`` marks the confirmed ones sent."""
        if not self.letters or self.letter_confirms is None:
            return
        publish = self.letter_confirms.publish
        for letter in self.letters:
            properties = broker.dead_letter_properties(
                letter.reason,
                letter.source,
                message_id=letter.key,
                size=letter.size,
                sha256=letter.sha256,
            )
            publish("", broker.DEAD, letter.body, properties, letter.key)
            self.unconfirmed[letter.key] = letter
        self.letters = []

    def _apply_confirms(self) -> None:
        if self.letter_confirms is not None and self.letter_confirms.outstanding():
            sent, refused = self.letter_confirms.confirmed()
            self.ledger.letters_sent(key for key, _ in sent)
            self.metrics.dead_letters.inc(len(sent))
            for key, _ in sent:
                self.unconfirmed.pop(key, None)
            for key in refused:  # published again after the next commit
                if (letter := self.unconfirmed.pop(key, None)) is not None:
                    self.letters.append(letter)
        acked, nacked = self.dispatcher.confirmed()
        if nacked:
            log.warning("the broker refused %d dispatches; they go back to pending", len(nacked))
            self.book.undispatched(nacked)
            self.dirty = True
        if acked:
            self.book.assigned(acked)

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

    def _publish_events(self, channel: BlockingChannel) -> None:
        """Events go out batched per state: one message per routing key ``task.<state>``."""
        self.last_events = time.monotonic()
        if not self.book.events:
            return
        self.metrics.record(self.book.events)
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
