"""The worker runtime: one connection's life, and the loop that serves it.

One thread owns the broker connection (pika's BlockingConnection is not
thread-safe) and runs a loop: process broker events for a short tick, fail
jobs past their deadline, settle the confirms that came, then flush. The
loop composes one collaborator per job, each given the connection's channels
(``workers.acks.Channels``) explicitly: ``workers.intake`` turns deliveries
into Jobs for the ``Runner`` (``workers.runner``), ``workers.reports``
publishes what the runner reports under confirms and acks a dispatch only
once its result is in the broker, and ``workers.pull`` hands back the pull
requests this worker cannot run. Task threads wake the loop when they end.

Push mode consumes its queue with prefetch = 2 x slots (the scheduler may
hold ``pipeline_depth`` dispatches here beyond the slots), pull mode its
capabilities' shared queues with prefetch = slots across them. The worker's
capacity is advertised in the gossip pool (``Presence``), lowered while
tasks that would not stop hold slots.

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
from collections.abc import Callable, Mapping
from typing import Protocol

from matchmaker.wire import amqp
from matchmaker.wire.broker import (
    BrokerError,
    TLSFiles,
    bind_control,
    connect,
    control_queue,
    declare_pull,
    declare_worker,
    describe,
    ensure_core,
    sender,
)
from matchmaker.wire.confirms import Confirms
from workers.acks import Channels
from workers.config import WorkerConfig
from workers.intake import Intake
from workers.pull import HandBack
from workers.reports import Outgoing, Reporter
from workers.runner import Runner
from workers.stats import Stats
from workers.tasks import REGISTRY
from workers.tasks.base import TaskFunction

log = logging.getLogger(__name__)

TICK = 0.5  # longest the loop waits for broker events before checking deadlines and flags
CANCEL_WAIT = 5.0  # after the grace period: how long cancelled tasks get to stop
RECONNECT_MAX_DELAY = 5.0
PUSH_PREFETCH = 2  # push: dispatch messages held per slot (room for the pipeline)
ADVERTISE_RETRY = 5.0  # after advertising a changed capacity failed, the next try waits this long


class Presence(Protocol):
    """How the worker is seen by the scheduler (Serf tags); started after the queue exists."""

    def start(self) -> None: ...

    def draining(self) -> None:
        """Advertise that no more work should come (``slots=0``)."""

    def advertise(self, slots: int) -> None:
        """Advertise ``slots`` free places (fewer while tasks that would not stop hold some)."""

    def leave(self) -> None: ...


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
        self.reports = Reporter(self.runner, self.stats, sender(config.broker_url))
        hand_back = HandBack(self.stats, self.reports, config.requeue_delay, self._call_later)
        self.intake = Intake(config, self.runner, self.stats, self.reports, hand_back)
        self._stopping = threading.Event()
        self._conn: amqp.Connection | None = None
        self._wake_pending = False
        self._session = 0
        self._drain_until: float | None = None
        self._cancelled_all = False
        self._advertised = False
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

        Raises ``BrokerError`` if the broker cannot be reached in ``broker_wait`` seconds
        (a restart of it, or of the host, rides through) or refuses the credentials or the
        topology at start-up; stopped while waiting for it, 0.
        """
        try:
            conn = connect(
                self.config.broker_url,
                attempts=None,
                within=self.config.broker_wait,
                stopping=self._stopping.is_set,
                name=f"worker {self.config.name}",
                tls=TLSFiles.of(self.config),
            )
        except BrokerError:
            if not self._stopping.is_set():
                raise
            log.info("stopped before the broker could be reached")
            return 0
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
                    self.reports.lost(channels)
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

    def _reconnect(self) -> tuple[amqp.Connection, Channels] | None:
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

    def _open(self, conn: amqp.Connection) -> Channels:
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
        # per consumer (quorum: no global qos); push: the scheduler bounds what it sends
        # (slots + its pipeline_depth), the room beyond the slots is for that pipeline
        prefetch = cfg.slots if cfg.mode != "push" else PUSH_PREFETCH * cfg.slots
        consume.basic_qos(prefetch_count=prefetch)
        reports: Confirms[Outgoing] = Confirms(publish, wake=True)
        channels = Channels(session, consume, reports)
        if cfg.mode == "push":
            consume.basic_consume(control_queue(cfg.name), self.intake.on_control, auto_ack=True)
        if not self._stopping.is_set():
            for queue in queues:
                callback = functools.partial(self.intake.on_message, channels, queue)
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

    def _serve(self, conn: amqp.Connection, ch: Channels) -> None:
        """The loop: events, deadlines, confirms, flush; returns when drained."""
        reports = self.reports
        while True:
            if self._stopping.is_set():
                self._drain_step(ch)
                if self.runner.busy() == 0 and reports.idle(ch):
                    return
            nearest = self.runner.expire()
            due = [t for t in (TICK, nearest, reports.running_due) if t is not None]
            flush_in = reports.flush_in()
            if reports.waiting():
                due.append(flush_in)
            conn.process_data_events(time_limit=max(0.0, min(due)))  # a confirm ends it
            self.runner.expire()
            reports.settle(ch)
            if flush_in <= 0:
                reports.flush(ch)
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

    def _drain_step(self, ch: Channels) -> None:
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

    def _call_later(self, delay: float, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the loop's thread in ``delay`` seconds (False: no connection)."""
        conn = self._conn
        if conn is None:
            return False
        conn.call_later(delay, callback)
        return True


def _close(conn: amqp.Connection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception as error:  # already broken: nothing left to release
        log.debug("closing the connection: %s", error)


def _reason(error: BaseException) -> str:
    return f"{error.__class__.__name__} {error}".strip()
