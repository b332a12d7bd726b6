"""The scheduler service: intake, rounds, push, results, recovery.

One thread runs the loop (``Scheduler.step``); Serf's inventory feeds it
changes from its own thread through a queue, and the broker is reached only
through a ``scheduler.transport.Transport`` (RabbitMQ: ``pika_transport``).
What is due when is decided by ``scheduler.clock.TurnClock``. Each step:

1. polls the transport: what the last step queued (acks, dispatches, letters,
   events) is sent, and the step waits for deliveries until the clock's next
   due time; every delivery and publisher confirm since the last poll comes
   back (nothing but buffering happens inside the broker read);
2. applies inventory changes (a failed or departed worker's tasks go back to
   pending with attempt + 1, and its queue is purged), and the confirms:
   confirmed dispatches recorded assigned, refused ones pending again;
3. when a full turn is due (``TurnClock.turn_due``): processes what is
   buffered (invalid requests and results are set aside for ``mm.dead``; a
   cancel, a retry or a drain is only acted on here, in order); between full
   turns, buffered deliveries are processed at most once per intake slice,
   written uncommitted, so the due turn has little left but its commit;
4. puts what was set aside in the ledger's dead-letter outbox, commits the
   ledger once, then publishes the new letters to ``mm.dead`` (under
   publisher confirms, ``message_id`` = the letter's key; confirmed ones are
   marked sent with a later commit, unsent ones are published again by the
   next connection) and queues the acks of what it recorded;
5. in a full turn, when work is pending, something changed and the round
   window has passed, runs a round on the committed state: ``plan()`` over
   the whole backlog, then the dispatches are published, one message per
   worker, under publisher confirms; the next poll sends them. What the round
   writes itself (reasons a task waits) is committed with the next turn;
6. at most every ``EVENT_INTERVAL``, publishes the events of the committed
   state changes, queued after the round's dispatches.

Rounds are event-driven (a task that arrives while a slot is free is placed
in the turn that receives it; a result that frees a slot starts a turn),
with batching only when work comes faster than turns complete (``clock``).

Nothing is acked, and no dispatch leaves, before the ledger holds it; nothing
waits on the broker: acks, dispatches and events are queued and the next
poll sends them, so a busy turn costs one socket write and one commit. The
ack invariant: a ``multiple`` ack of tag T is sent only after a commit, and
only when every delivery up to T on that channel is recorded in the ledger
or in its dead-letter outbox (``frames.AckWindow``).

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
(rebuilding from the ledger) when the first one's connection dies. The queue
is the fast signal; the authority is the ledger's leader epoch, which ``lead``
raises: a deposed scheduler's next commit fails with ``LeaderLost`` (nothing
of its turn stays) and it exits with that sentence.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
from typing import Any

from matchmaker import liveness
from matchmaker.api import server as api_server  # api hook
from matchmaker.book import Book, OpenTask
from matchmaker.config import Config
from matchmaker.drains import DrainDeadlines
from matchmaker.identity import Senders
from matchmaker.ledger import LeaderLost, LedgerError, Letter, open_ledger, private_dir
from matchmaker.ledger.retention import Pruner
from matchmaker.limits import Quotas
from matchmaker.metrics import Metrics
from matchmaker.models import Worker
from matchmaker.notices import Notices
from matchmaker.rates import ServiceRates
from matchmaker.scheduler.clock import Clock, SystemClock, TurnClock
from matchmaker.scheduler.events import Events
from matchmaker.scheduler.intake import Intake
from matchmaker.scheduler.letters import Letters
from matchmaker.scheduler.pika_transport import PikaConnector
from matchmaker.scheduler.results import Results
from matchmaker.scheduler.rounds import Rounds
from matchmaker.scheduler.state import Delivery as Delivery  # re-exported
from matchmaker.scheduler.state import Members
from matchmaker.scheduler.transport import Connector, Transport, TransportLost
from matchmaker.wire import broker
from matchmaker.wire.broker import REQUESTS, RESULTS
from matchmaker.wire.frames import AckWindow
from membership.inventory import Change, Inventory

log = logging.getLogger("matchmaker.service")

GC_YOUNG = 10_000
RECONNECT_BACKOFF = (0.5, 5.0)  # first and longest wait between attempts to reach the broker


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

    The loop allocates per task and frees nearly all of it by reference counting, so the
    cyclic collector finds little to free, and each of its full passes over the large
    long-lived heap is a stall of the loop (the measurement: benchmarks/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 50, 100)


class Scheduler(Intake, Results, Letters, Rounds, Events):
    """``python -m matchmaker run``: the push pipeline's scheduler."""

    def __init__(
        self,
        config: Config,
        connector: Connector | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.connector: Connector = connector or PikaConnector(
            config.broker_url, broker.TLSFiles.of(config), config.queue_type
        )
        self.clock: Clock = clock or SystemClock()
        self.turns = TurnClock(config.round_interval, config.batch_window)
        self.senders = Senders(
            config.authenticated_senders,
            frozenset(config.admin_users),
            frozenset(config.trusted_users),
        )
        private_dir(config.state_dir)
        self.ledger = open_ledger(config, background_checkpoints=True)
        self.pruner = Pruner(config.ledger_retention)  # finished tasks past retention
        self.quotas = quotas_of(config)
        self.notices = Notices(self.senders)  # what owners hear over mm.notices (client hook)
        self.book = self._new_book()
        self.metrics = Metrics(config.metrics_port, config.metrics_bind)
        self.changes: queue.Queue[Change] = queue.Queue()
        self.inventory: Members | None = None
        # Replaced whole when the inventory changes (Rounds.views tells by identity); in
        # place only for learned speeds, which mark their views stale.
        self.live: dict[str, Worker] = {}
        self.in_pool: set[str] = set()
        self.rates = ServiceRates()  # learned speeds per (worker, type), perf as the prior
        self.timed: set[str] = set()  # workers whose learned speeds moved since a round
        self.drained = self.ledger.drained()
        self.drain_deadlines = DrainDeadlines()  # drains.py: then the worker's tasks move
        self.requests: list[Delivery] = []  # delivered, not yet processed
        self.results: list[Delivery] = []
        self.arrived = 0  # deliveries since the last full turn
        self.request_acks = AckWindow()  # what a multiple ack may cover, after the next commit
        self.result_acks = AckWindow()
        # (source queue, body, reason, origin): ``origin`` names the letter for good (the
        # body, or for an item of a batch the batch and the item's place in it)
        self.rejects: list[tuple[str, bytes, str, bytes]] = []
        self.letters: list[Letter] = []  # in the outbox, to publish after the commit
        self.unconfirmed: dict[str, Letter] = {}  # published, by key, until the broker confirms
        self.dirty = True
        self.transport: Transport | None = None
        self.stopping = False
        self.api: api_server.ApiServer | None = None  # api hook
        self.liveness: liveness.Liveness | None = None  # broker-side failure detection

    # -- lifecycle --------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (``serve``), with the inventory and the API."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.api = api_server.start(self.config)  # api hook: ``_observe`` offers it snapshots
        inventory = Inventory(
            self.config.serf_rpc, self.config.serf_auth_key or None, on_change=self.changes.put
        )
        self.inventory = inventory
        inventory.start()
        tls, events = broker.TLSFiles.of(self.config), self.config.liveness_vhost
        self.liveness = liveness.start(self.config.broker_url, events, self.changes.put, tls)
        ledger_failed = False
        try:
            self.serve()
        except LedgerError:
            ledger_failed = True  # its error says why; a last commit would only mask it
            raise
        finally:
            if self.api is not None:  # api hook
                self.api.stop()
            inventory.stop()
            if self.liveness is not None:
                self.liveness.stop()
            if not ledger_failed:
                self.ledger.commit()
            self.ledger.close()
            log.info("scheduler stopped")

    def serve(self) -> None:
        """Lead and run the loop until stopped; a lost or unreachable broker is retried
        for ever, with a capped backoff and one log line per attempt."""
        first, longest = RECONNECT_BACKOFF
        delay = first
        try:
            while not self.stopping:
                transport = self._connect(delay)
                if transport is not None:
                    try:
                        self.lead(transport)
                        while not self.stopping:
                            self.step()
                        self._publish_events()
                        self._poll(0.0)  # what the last turn queued goes out before the close
                        delay = first
                    except TransportLost as error:
                        if not self.stopping:
                            self.metrics.reconnects.inc()
                            log.warning("lost the broker (%s); reconnecting in %.1fs", error, delay)
                    except LeaderLost as error:  # fenced: another scheduler leads the ledger
                        log.error("%s", error)
                        raise
                self.drop()
                if self.stopping or self.clock.pause(delay, lambda: self.stopping):
                    break
                delay = min(delay * 2, longest)
        finally:
            self.drop()

    def _connect(self, delay: float) -> Transport | None:
        """A transport once this scheduler leads; None if the broker could not be reached
        or refused us (said in one line; the caller retries after ``delay``)."""
        try:
            return self.connector(lambda: self.stopping)
        except TransportLost as error:
            if not self.stopping:
                log.warning("%s; retrying in %.1fs", error, delay)
            return None

    def _new_book(self) -> Book:
        """An empty book; the quotas count what it opens and closes from now on."""
        self.quotas.forget_open()
        book = Book(self.ledger, self.config.retry_backoff, self.config.result_grace)
        book.on_open = self._opened
        book.on_close = self._closed
        return book

    def _closed(self, t: OpenTask) -> None:
        self.quotas.closed(owner_of(t))
        self.notices.closed(t)  # client hook

    def _opened(self, t: OpenTask) -> None:
        self.quotas.opened(owner_of(t))
        self.metrics.opened(t.request.id, t.request.type, t.owner)

    def drop(self) -> None:
        """Forget what the connection delivered (it comes again) and close it: one left
        open by a channel error would keep the leader queue and its unacked deliveries
        while the next connection stood by. Letters not yet confirmed are in the outbox
        still, and go again from the next one."""
        self.requests.clear()
        self.results.clear()
        self.rejects.clear()
        self.letters.clear()
        self.unconfirmed.clear()
        self.arrived = 0
        self.request_acks, self.result_acks = AckWindow(), AckWindow()
        self.metrics.leader.set(0)
        transport, self.transport = self.transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def lead(self, transport: Transport) -> None:
        """This scheduler leads on ``transport``: the ledger is the truth (a previous
        leader may have written it), the book is rebuilt from it, and this scheduler's
        epoch in it fences every commit of the one before."""
        self.transport = transport
        self.metrics.leader.set(1)
        epoch = self.ledger.take_lead()
        log.info("leader epoch %d in the ledger at %s", epoch, self.ledger.location)
        if self.api is not None:  # api hook: a standby's API redirects here
            self.api.lead()
        self.book = self._new_book()
        self.book.restore(self.ledger.open_tasks())
        self.drained = self.ledger.drained()
        self.drain_deadlines = DrainDeadlines(self.ledger.drain_deadlines())
        pending, in_flight, _ = self.book.sizes()
        log.info(
            "restored %d pending and %d in-flight tasks from %s",
            pending,
            in_flight,
            self.ledger.location,
        )
        settle_garbage_collector()
        self.turns.reset()
        self.letters = self.ledger.unsent_letters()  # published, maybe not confirmed, before
        self._reconcile_inventory()
        self._send_letters()

    # -- the turn of the loop ---------------------------------------------------

    def _poll(self, timeout: float) -> None:
        assert self.transport is not None
        polled = self.transport.poll(timeout)
        if polled.requests:
            self.requests.extend(polled.requests)
            self.arrived += len(polled.requests)
        if polled.results:
            self.results.extend(polled.results)
            self.arrived += len(polled.results)
        self._apply_confirms(polled)  # before the results, which a confirm precedes

    def _round_wanted(self) -> bool:
        return self.dirty and self.book.has_pending()

    def step(self) -> None:
        """One step of the loop: poll, then whatever the turn clock says is due."""
        assert self.transport is not None
        turns = self.turns
        wait = turns.wait(
            self.clock.monotonic(),
            owed=self.arrived,
            round_wanted=self._round_wanted(),
            buffered=bool(self.requests or self.results),
            events=(self.book.has_events() or self.notices.waiting()) and not self.arrived,
            changes=not self.changes.empty(),
        )
        self._poll(wait)
        clock = self.clock.monotonic()
        self._apply_changes()
        round_due = turns.round_due(clock, self._round_wanted())
        arrived = self.arrived
        full = turns.turn_due(clock, arrived, round_due)
        if full:
            self.arrived = 0
            self._take_requests(True)
            self._take_results()
        elif (self.requests or self.results) and turns.intake_due(clock):
            self._take_requests(False)  # between turns: processed, written, not committed
            self._take_results()
            self.ledger.write()
        if turns.sweep_due(clock):
            self._sweep(turns.prune_due(clock))
            self._evict_drained()
        committed = full or not arrived  # a step between turns leaves the commit to the turn
        if committed:
            self._outbox()  # the letters of what was rejected, in this turn's commit
            self.pruner.step(self.ledger)  # a bounded batch of expired tasks, if due
            with self.metrics.commit_seconds.time():
                self.ledger.commit()  # one commit a turn; every frame of it is sent after
            self._send_letters()
            # Acks only after the commit, and only as far as every delivery up to the
            # tag is recorded or in the outbox (AckWindow): nothing else is ever acked.
            if tag := self.request_acks.due():
                self.transport.ack(REQUESTS, tag)
            if tag := self.result_acks.due():
                self.transport.ack(RESULTS, tag)
        # Events of committed changes only: taken now, published after the round's
        # dispatches, which go out first.
        events = self.book.take_events() if committed and turns.events_due(clock) else None
        ran_round = full and turns.round_due(clock, self._round_wanted())
        if ran_round:  # on committed state: what it writes itself (reasons) can wait
            started = self.clock.monotonic()
            self._round()
            turns.rounded(started, self.clock.monotonic(), arrived)
        if events is not None:
            self._publish_events(events)
        if full:
            turns.turned(clock, self.clock.monotonic(), arrived)
