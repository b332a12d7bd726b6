"""The worker runtime: consume dispatches, run them, report results, ack after the report.

One thread owns the broker connection (pika's BlockingConnection is not
thread-safe) and runs a loop: process broker events for a short tick, fail
jobs past their deadline, settle the confirms that came, then flush (at most
every ``FLUSH_INTERVAL``, so reports share the broker's writes under load).
A flush publishes every report ready (running reports and final results,
coalesced by the ``Runner``) as one ``results`` message (more if they pass
the message size limit), and every dead letter, on a dedicated channel in
confirm mode, and goes on; once the broker confirms a final result (or a dead
letter), the dispatch it answers is acked. So a dispatch is never acked
before its result is in the broker, and the loop never waits for the broker
to write; a crash in between means a redelivery (at-least-once), which the
runner recognises by ``(id, attempt)`` and does not run twice. A report the
broker refuses, or one unconfirmed when the connection drops, is sent again.

Push mode consumes ``mm.worker.<name>`` (prefetch = slots) and its control
queue ``mm.control.<name>``, which the scheduler (or the setup) binds to
``mm.control`` with ``cancel.<name>``; a worker may only read its own queues.
Results and dead letters go to the ``mm.results`` exchange (``broker.route``),
the one thing a worker may write, with the worker's broker user as the AMQP
``user_id`` (checked by RabbitMQ, then by the scheduler). A ``dispatches``
message holds what one round placed here; it is acked once every dispatch in
it is reported (or dead-lettered), and its tasks run at most ``slots`` at once.
Pull mode consumes the ``mm.pull.<type>`` queues of its capabilities
(prefetch = slots across them) and hands back requests whose constraints it
cannot meet: published again to the end of their queue (under confirms, like
a dead letter), then acked. A ``basic_nack(requeue=True)`` would put them back
at the head of a classic queue, where every worker that cannot run them
takes them again before anything behind them.

``stop()`` (SIGTERM/SIGINT in the CLI) drains: stop consuming, requeue what has
not started, let running tasks finish for ``grace`` seconds, then cancel them,
flush, leave the gossip pool, close. A lost connection is re-established with
backoff; results of tasks that ran meanwhile are published after reconnecting.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    Cancel,
    MessageError,
    TaskDispatch,
    TaskRequest,
    decode,
    decode_dispatches,
    encode,
    pack,
)
from matchmaker.models import Worker as WorkerModel
from matchmaker.wire import amqp
from matchmaker.wire.broker import (
    CONTROL,
    DEAD,
    RESULTS,
    BrokerError,
    TLSFiles,
    bind_control,
    connect,
    control_queue,
    dead_letter_properties,
    declare_pull,
    declare_worker,
    describe,
    ensure_core,
    persistent,
    queued_ack,
    route,
    sender,
)
from matchmaker.wire.confirms import Confirms
from workers.config import WorkerConfig
from workers.pull import as_dispatch, refusal
from workers.runner import Delivery, Job, Report, Runner
from workers.tasks import REGISTRY
from workers.tasks.base import TaskContext, TaskFunction

log = logging.getLogger(__name__)

TICK = 0.5  # longest the loop waits for broker events before checking deadlines and flags
CANCEL_WAIT = 5.0  # after the grace period: how long cancelled tasks get to stop
RECONNECT_MAX_DELAY = 5.0
REMEMBER_CANCELS = 10_000  # cancels for tasks not (yet) held, applied when they arrive
RUNNING_HOLD = 0.05  # a task shorter than this reports only its final result
FLUSH_INTERVAL = 0.005  # reports wait at most this long to go out together
REFUSED_PAUSE = 1.0  # after the broker refused reports, the next flush waits this long
ADVERTISE_RETRY = 5.0  # after advertising a changed capacity failed, the next try waits this long


class Presence(Protocol):
    """How the worker is seen by the scheduler (Serf tags); started after the queue exists."""

    def start(self) -> None: ...

    def draining(self) -> None:
        """Advertise that no more work should come (``slots=0``)."""

    def advertise(self, slots: int) -> None:
        """Advertise ``slots`` free places (fewer while tasks that would not stop hold some)."""

    def leave(self) -> None: ...


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


def batches(reports: list[Report], limit: int = MAX_MESSAGE_BYTES) -> list[ReportBatch]:
    """``reports`` packed in order into messages of at most ``limit`` bytes (``pack``)."""
    packed = pack("results", reports, [encode(r.result) for r in reports], limit)
    return [ReportBatch(list(group), body) for group, body in packed]


def _split(items: list[ReportBatch | Letter]) -> tuple[list[Report], list[Letter]]:
    reports = [r for i in items if isinstance(i, ReportBatch) for r in i.reports]
    return reports, [i for i in items if isinstance(i, Letter)]


@dataclass
class Stats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    redelivered: int = 0
    requeues_by_task: dict[str, int] = field(default_factory=dict)


class Worker:
    """A worker process's runtime; ``run()`` blocks until ``stop()`` has drained it."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        registry: Mapping[str, TaskFunction] = REGISTRY,
        presence: Presence | None = None,
    ) -> None:
        self.config = config
        self.presence = presence
        self.stats = Stats()
        runs = {t: registry[t] for t in config.capabilities if t in registry}  # its caps only
        self.runner = Runner(config.name, config.slots, runs, wake=self._wake)
        self._model = WorkerModel(
            config.name, config.capabilities, config.slots, attributes=config.attributes
        )
        self._stopping = threading.Event()
        self._conn: amqp.Connection | None = None
        self._wake_pending = False
        self._session = 0
        self._letters: list[Letter] = []
        self._drain_until: float | None = None
        self._cancelled_all = False
        self._running_due: float | None = None
        self._last_flush = 0.0
        self._cancels: OrderedDict[str, None] = OrderedDict()
        self._advertised = False
        self._user = sender(config.broker_url)
        self._persistent = persistent(self._user)  # one object: its encoding is cached
        self._shown_slots = config.slots  # the capacity the gossip pool was last told
        self._advertise_after = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Begin draining (thread- and signal-safe); a second call ends the grace period."""
        if self._stopping.is_set() and self._drain_until is not None:
            self._drain_until = time.monotonic()
        self._stopping.set()

    def run(self) -> int:
        """Serve until stopped: 0 after a clean drain, 1 if results could not be delivered.

        Raises ``BrokerError`` if the broker cannot be reached or refuses the
        topology at start-up.
        """
        conn = connect(
            self.config.broker_url,
            attempts=1,
            name=f"worker {self.config.name}",
            tls=TLSFiles.of(self.config),
        )
        status = 1
        try:
            if self.presence is not None:
                self.presence.start()
                self._advertised = True
            try:
                channels = self._open(conn)
            except amqp.AMQPError as error:
                where = describe(self.config.broker_url)
                raise BrokerError(f"the broker at {where} refused its queues: {error}") from None
            while True:
                try:
                    self._serve(conn, channels)
                    status = 0
                    break
                except amqp.AMQPError as error:
                    log.warning("broker connection lost (%s); reconnecting", _reason(error))
                    self._lost(channels)
                    _close(conn)
                    self._conn = None
                    reconnected = self._reconnect()
                    if reconnected is None:
                        break
                    conn, channels = reconnected
        finally:
            self._finish(conn)
        return status

    def _finish(self, conn: amqp.Connection) -> None:
        lost = self.runner.busy()
        if lost:
            log.warning("stopping with %d task(s) whose results were not delivered", lost)
        if self.presence is not None and self._advertised:
            try:
                self.presence.leave()
            except Exception as error:
                log.warning("leaving the gossip pool failed: %s", error)
        _close(conn)
        self._conn = None
        self.runner.shutdown()
        s = self.stats
        log.info(
            "worker stopped name=%s received=%d succeeded=%d failed=%d dead_lettered=%d "
            "requeued=%d redelivered=%d",
            self.config.name,
            s.received,
            s.succeeded,
            s.failed,
            s.dead_lettered,
            s.requeued,
            s.redelivered,
        )

    def _reconnect(self) -> tuple[amqp.Connection, _Channels] | None:
        delay = 0.2
        while True:
            self.runner.expire()
            if self._stopping.is_set():
                self._start_grace()
                if self.runner.busy() == 0 or time.monotonic() >= (self._drain_until or 0):
                    log.warning("stopping without a broker connection")
                    return None
            try:
                conn = connect(
                    self.config.broker_url,
                    attempts=1,
                    name=f"worker {self.config.name}",
                    tls=TLSFiles.of(self.config),
                )
                channels = self._open(conn)
            except (BrokerError, amqp.AMQPError) as error:
                log.warning("reconnect failed (%s); retrying in %.1fs", _reason(error), delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            log.info("reconnected to %s", describe(self.config.broker_url))
            return conn, channels

    # -- one connection -----------------------------------------------------------------

    def _open(self, conn: amqp.Connection) -> _Channels:
        """Channels, topology and consumers for a new connection (a new session)."""
        self._session += 1
        session = self._session
        cfg = self.config
        ensure_core(conn, cfg.broker_url)
        consume, publish = conn.channel(), conn.channel()
        if cfg.mode == "push":
            queues = [declare_worker(consume, cfg.name, bind=False)]
            if not bind_control(conn, cfg.name):
                log.info("cancels arrive once the scheduler binds %s", control_queue(cfg.name))
        else:
            queues = [declare_pull(consume, task_type) for task_type in cfg.capabilities]
        consume.basic_qos(prefetch_count=cfg.slots)  # per consumer (quorum: no global qos)
        channels = _Channels(session, consume, Confirms(publish, wake=True))
        if cfg.mode == "push":
            consume.basic_consume(control_queue(cfg.name), self._on_control, auto_ack=True)
        if not self._stopping.is_set():
            for queue in queues:
                callback = functools.partial(self._on_message, channels, queue)
                channels.consumers.append(consume.basic_consume(queue, callback))
        self._conn = conn
        log.info(
            "consuming mode=%s queues=%s slots=%d broker=%s session=%d",
            cfg.mode,
            ",".join(queues),
            cfg.slots,
            describe(cfg.broker_url),
            session,
        )
        return channels

    def _serve(self, conn: amqp.Connection, ch: _Channels) -> None:
        """The loop: events, deadlines, flush; returns when drained."""
        while True:
            if self._stopping.is_set():
                self._drain_step(ch)
                if self.runner.busy() == 0 and not self._letters and not ch.reports.outstanding():
                    return
            nearest = self.runner.expire()
            due = [t for t in (TICK, nearest, self._running_due) if t is not None]
            since = time.monotonic() - self._last_flush
            interval = 0.0 if self._letters else FLUSH_INTERVAL  # dead letters go at once
            if self._letters or self.runner.reporting():
                due.append(interval - since)
            conn.process_data_events(time_limit=max(0.0, min(due)))  # a confirm ends it
            self.runner.expire()
            self._settle(ch)
            if since >= interval:
                self._flush(ch)
            self._advertise_capacity()

    def _advertise_capacity(self) -> None:
        """Tell the gossip pool when slots are withheld by tasks that would not stop, or
        given back (not while draining: then it is told 0)."""
        capacity = self.runner.capacity()
        now = time.monotonic()
        if capacity == self._shown_slots or self._stopping.is_set() or now < self._advertise_after:
            return
        withheld = self.config.slots - capacity
        presence = self.presence if self._advertised else None
        if presence is not None:
            try:
                presence.advertise(capacity)
            except Exception as error:  # tried again later; the runner limits itself meanwhile
                log.warning("could not advertise slots=%d: %s", capacity, error)
                self._advertise_after = now + ADVERTISE_RETRY
                return
        self._shown_slots = capacity
        log.warning(
            "%s slots=%d of %d (%d withheld by tasks that did not stop)",
            "running at most" if presence is None else "advertised",
            capacity,
            self.config.slots,
            withheld,
        )

    def _drain_step(self, ch: _Channels) -> None:
        if ch.consumers:
            for tag in ch.consumers:
                ch.consume.basic_cancel(tag)
            ch.consumers.clear()
            self._advertise_draining()
            returned = self.runner.withdraw()
            for job in returned:
                ch.done_with(job.deliveries, hand_back=True)
            log.info(
                "draining name=%s requeued_unstarted=%d running=%d grace=%.0fs",
                self.config.name,
                len(returned),
                self.runner.busy(),
                self.config.grace,
            )
        self._start_grace()
        past = time.monotonic() - (self._drain_until or 0)
        if past >= 0 and not self._cancelled_all:
            self._cancelled_all = True
            if self.runner.busy():
                log.info("grace period over; cancelling %d task(s)", self.runner.busy())
            self.runner.cancel_all()
        if past >= CANCEL_WAIT:
            self.runner.abandon(f"worker {self.config.name} shut down before the task finished")

    def _advertise_draining(self) -> None:
        if self.presence is None or not self._advertised:
            return
        try:
            self.presence.draining()
            log.info("advertised slots=0 while draining")
        except Exception as error:  # the leave at the end still tells the scheduler
            log.warning("could not advertise the drain: %s", error)

    def _start_grace(self) -> None:
        if self._drain_until is None:
            self._drain_until = time.monotonic() + self.config.grace

    # -- intake -------------------------------------------------------------------------

    def _on_message(
        self,
        ch: _Channels,
        queue: str,
        _channel: amqp.Channel,
        method: amqp.Deliver,
        _props: amqp.Properties,
        body: bytes,
    ) -> None:
        ch.unacked.add(method.delivery_tag)
        if self.config.mode == "push":
            self._take_dispatches(ch, queue, method.delivery_tag, body)
        else:
            self._take_request(ch, queue, method.delivery_tag, body)

    def _take_dispatches(self, ch: _Channels, queue: str, tag: int, body: bytes) -> None:
        """A ``dispatch`` or a ``dispatches`` batch: its invalid items dead-lettered, the
        others run; the delivery is acked once each of them is done with."""
        try:
            batch = decode_dispatches(body)
        except MessageError as error:
            self.stats.received += 1
            self._reject(body, str(error), queue, Delivery(ch.session, tag))
            return
        delivery = Delivery(ch.session, tag, len(batch.items) + len(batch.invalid))
        self.stats.received += delivery.parts
        for letter, why in batch.invalid:
            self._reject(letter, why, queue, delivery)
        for dispatch in batch.items:
            self._accept(ch, dispatch, delivery)

    def _take_request(self, ch: _Channels, queue: str, tag: int, body: bytes) -> None:
        """Pull mode: a request from a shared queue, run if this worker may, else handed back."""
        delivery = Delivery(ch.session, tag)
        self.stats.received += 1
        try:
            request = decode(body, expect=("submit",))
        except MessageError as error:
            self._reject(body, str(error), queue, delivery)
            return
        assert isinstance(request, TaskRequest)
        reason = refusal(request, self._model)
        if reason is not None:
            self._requeue(request, reason, Letter(body, reason, queue, delivery, requeue=True))
            return
        self._accept(ch, as_dispatch(request), delivery)

    def _accept(self, ch: _Channels, dispatch: TaskDispatch, delivery: Delivery) -> None:
        key = (dispatch.id, dispatch.attempt)
        held = self.runner.find(key)
        if held is not None:
            self.stats.redelivered += 1
            log.info("redelivery joins the held task id=%s attempt=%d", *key)
            held.deliveries.append(delivery)
            return
        if self.runner.seen(key):
            self.stats.redelivered += 1
            if self.runner.replay(key, delivery):
                log.info("redelivery of a reported task: result sent again id=%s attempt=%d", *key)
            else:
                log.info("redelivery of a reported task acked id=%s attempt=%d", *key)
                ch.done_with([delivery])
            return
        context = TaskContext(
            task_id=dispatch.id,
            attempt=dispatch.attempt,
            worker=self.config.name,
            sandbox=self.config.sandbox_dir,
            deadline=dispatch.deadline,
            aurora_url=self.config.aurora_url,
            stage_roots=self.config.stage_roots,
            allow_net=self.config.allow_net,
            commands=self.config.commands,
            type=dispatch.type,
        )
        if dispatch.id in self._cancels:
            context.cancelled.set()
        self.runner.start(Job(dispatch, context, [delivery]))

    def _reject(self, body: bytes, reason: str, source: str, delivery: Delivery | None) -> None:
        log.warning("message rejected to the dead-letter queue source=%s reason=%r", source, reason)
        self._letters.append(Letter(body, reason, source, delivery))

    def _requeue(self, request: TaskRequest, reason: str, letter: Letter) -> None:
        stats = self.stats
        stats.requeued += 1
        count = stats.requeues_by_task.get(request.id, 0) + 1
        if len(stats.requeues_by_task) > 10_000:
            stats.requeues_by_task.clear()
        stats.requeues_by_task[request.id] = count
        if count == 1 or count % 100 == 0:
            log.info(
                "task requeued id=%s reason=%r times=%d total_requeues=%d",
                request.id,
                reason,
                count,
                stats.requeued,
            )
        # Hand it back after a short pause, so a lone unsuitable worker does not spin on it.
        if self._conn is not None and self.config.requeue_delay > 0:
            self._conn.call_later(self.config.requeue_delay, lambda: self._letters.append(letter))
        else:
            self._letters.append(letter)

    def _on_control(
        self, _channel: amqp.Channel, _method: amqp.Deliver, _props: Any, body: bytes
    ) -> None:
        try:
            message = decode(body, expect=("cancel",))
        except MessageError as error:
            self._reject(body, str(error), CONTROL, None)
            return
        assert isinstance(message, Cancel)
        held = self.runner.cancel(message.id)
        if not held:  # its dispatch may still be on the way: cancel it on arrival
            self._cancels[message.id] = None
            if len(self._cancels) > REMEMBER_CANCELS:
                self._cancels.popitem(last=False)
        log.info("cancel received id=%s held=%d", message.id, held)

    # -- reporting ----------------------------------------------------------------------

    def _flush(self, ch: _Channels) -> None:
        """Publish every ready report and dead letter under confirms; ``_settle`` acks."""
        self._last_flush = time.monotonic()
        reports, self._running_due = self.runner.take(hold=RUNNING_HOLD)
        letters, self._letters = self._letters, []
        outgoing: list[ReportBatch | Letter] = [*batches(reports), *letters]
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

    def _settle(self, ch: _Channels) -> None:
        """Ack the dispatches whose final results (or dead letters) the broker confirmed."""
        confirmed, refused = ch.reports.confirmed()
        if refused:
            log.warning(
                "the broker refused %d report(s) (a full queue?); sending them again in %gs",
                len(refused),
                REFUSED_PAUSE,
            )
            self._give_back(refused)
            self._last_flush = time.monotonic() + REFUSED_PAUSE  # no flush until then
        if confirmed:
            ch.done_with(self._sent([item for item, _ in confirmed]))

    def _sent(self, items: list[ReportBatch | Letter]) -> list[Delivery]:
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

    def _give_back(self, items: list[ReportBatch | Letter]) -> None:
        """Reports and dead letters to publish again at the next flush."""
        reports, letters = _split(items)
        self.runner.unsent(reports)
        self._letters = letters + self._letters

    def _lost(self, ch: _Channels) -> None:
        """The connection dropped: what it confirmed is in the broker (its deliveries come
        back and are acked as seen), what it did not is sent again on the next one."""
        confirmed, refused = ch.reports.confirmed()
        self._sent([item for item, _ in confirmed])  # their deliveries come back
        self._give_back([*refused, *ch.reports.pending.values()])
        ch.reports.pending.clear()
        # a refused request not yet in its queue again is still the broker's (it comes back)
        self._letters = [letter for letter in self._letters if not letter.requeue]

    def _wake(self) -> None:
        """From a task thread: make the connection loop flush soon."""
        conn = self._conn
        if conn is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            conn.add_callback_threadsafe(self._woken)
        except Exception:  # closed or closing: the loop's tick will catch up
            self._wake_pending = False

    def _woken(self) -> None:
        self._wake_pending = False


@dataclass
class _Channels:
    session: int
    consume: amqp.Channel
    reports: Confirms[ReportBatch | Letter]  # results and dead letters, on a channel of their own
    consumers: list[str] = field(default_factory=list)
    unacked: set[int] = field(default_factory=set)

    def done_with(self, deliveries: list[Delivery], hand_back: bool = False) -> None:
        """A part of each delivery is done with; ack or nack those with none left.
        Deliveries of an earlier session are gone (the broker requeued them)."""
        acks = []
        for delivery in deliveries:
            if delivery.session != self.session:
                continue
            outcome = delivery.done_with(hand_back)
            if outcome == "ack":
                acks.append(delivery.tag)
            elif outcome == "nack":
                self.nack(delivery.tag)
        self.ack(acks)

    def ack(self, tags: list[int]) -> None:
        """Acknowledge ``tags``: the prefix below every other unacked tag in one frame."""
        if not tags:
            return
        done = set(tags)
        others = self.unacked - done
        lowest_other = min(others) if others else None
        below = [t for t in tags if lowest_other is None or t < lowest_other]
        ack = queued_ack(self.consume)  # sent with the loop's next I/O step
        if below:
            ack(max(below), True)
        for tag in tags:
            if lowest_other is not None and tag > lowest_other:
                ack(tag, False)
        self.unacked = others

    def nack(self, tag: int) -> None:
        """Hand a delivery back to its queue."""
        if self.consume.is_open and tag in self.unacked:
            self.unacked.discard(tag)
            self.consume.basic_nack(tag, requeue=True)


def _close(conn: amqp.Connection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception as error:  # already broken: nothing left to release
        log.debug("closing the connection: %s", error)


def _reason(error: BaseException) -> str:
    return f"{error.__class__.__name__} {error}".strip()
