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
import time
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from matchmaker import broker
from matchmaker.api import server as api_server  # api hook
from matchmaker.book import Book, OpenTask
from matchmaker.config import Config
from matchmaker.confirms import Confirms
from matchmaker.dispatch import Dispatcher
from matchmaker.frames import AckWindow, DeliveryReader, consume, reader_of
from matchmaker.identity import Senders
from matchmaker.ledger import Ledger, Letter, private_dir
from matchmaker.limits import Quotas
from matchmaker.metrics import Metrics
from matchmaker.models import Worker
from matchmaker.rates import ServiceRates
from matchmaker.scheduler.events import Events
from matchmaker.scheduler.intake import Intake
from matchmaker.scheduler.letters import Letters
from matchmaker.scheduler.results import Results
from matchmaker.scheduler.rounds import Rounds
from matchmaker.scheduler.state import Delivery as Delivery  # re-exported
from matchmaker.scheduler.state import describe_error
from membership.inventory import Change, Inventory

log = logging.getLogger("matchmaker.service")

LEADER_QUEUE = "mm.scheduler.leader"
PREFETCH = 2000
HOLD_BELOW = PREFETCH // 4  # an intake this large means a backlog: the next turn does not wait
IDLE_WAIT = 0.05  # confirms are collected at the next turn, at the latest this late
EVENT_INTERVAL = 0.02
HELD_INTAKE_INTERVAL = 0.002  # held deliveries are taken in at most this often
GC_YOUNG = 10_000
RECONNECT_BACKOFF = (0.5, 5.0)  # first and longest wait between attempts to reach the broker
BROKER_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
)


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


class Scheduler(Intake, Results, Letters, Rounds, Events):
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
        self.metrics = Metrics(config.metrics_port)
        self.changes: queue.Queue[Change] = queue.Queue()
        self.inventory: Inventory | None = None
        self.live: dict[str, Worker] = {}
        self.loaded: dict[str, Worker] = {}  # live workers with their last in-flight counts
        self.rates = ServiceRates()  # learned speeds per (worker, type), perf as the prior
        self.timed: set[str] = set()  # workers whose learned speeds moved since a round
        self.drained = self.ledger.drained()
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
        book.on_open = lambda t: self.quotas.opened(owner_of(t))
        book.on_close = lambda t: self.quotas.closed(owner_of(t))
        return book

    def _drop_connection(self) -> None:
        """Forget what the connection delivered (it comes again) and close it: one left
        open by a channel error would keep the leader queue and its unacked deliveries
        while the next connection stood by."""
        self._forget_deliveries()
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
                self._outbox()  # the letters of what was rejected, in this turn's commit
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
