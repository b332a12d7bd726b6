"""The scheduler's ``Transport`` on RabbitMQ, through pika and the direct frame layer.

``PikaConnector`` connects (retrying for ever, ``broker.connect``), waits
until this scheduler holds the exclusive queue ``mm.scheduler.leader``
(another scheduler holding it: standing by, checking every half second),
declares the core objects and consumes ``mm.requests`` and ``mm.results``
with a prefetch window of ``PREFETCH`` each. Deliveries are parsed from the
socket by ``frames.DeliveryReader`` into this transport's buffers inside
pika's read (nothing else happens there); a delivery ends the wait of
``poll`` at once. Dispatches go out under asynchronous publisher confirms
(``dispatch.Dispatcher``), letters too (``confirms.Confirms``); acks, events
and cancels are queued frames. Every pika error is ``TransportLost``, and so is a
worker queue refusing every dispatch (``Dispatcher.stuck``): a new connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from matchmaker.ledger import Letter
from matchmaker.messages import Cancel, encode
from matchmaker.scheduler.transport import Delivery, Polled, TransportLost
from matchmaker.wire import amqp, broker
from matchmaker.wire.confirms import Confirms
from matchmaker.wire.dispatch import Dispatcher
from matchmaker.wire.frames import consume

log = logging.getLogger("matchmaker.service")

LEADER_QUEUE = "mm.scheduler.leader"
PREFETCH = 2000
STANDBY_CHECK = 0.5  # seconds between a standby's attempts to take the leader queue
EVENT_PROPERTIES = amqp.Properties(content_type="application/json")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """pika's errors as ``TransportLost``: whatever failed, this connection is done."""
    try:
        yield
    except amqp.AMQPError as error:
        raise TransportLost(_describe(error)) from error


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:
        text = "(no text)"
    return f"{error.__class__.__name__}: {text[:300]}"


class PikaTransport:
    """One leading connection: its channels, buffers and confirms."""

    def __init__(
        self, connection: amqp.Connection, control: amqp.Channel, queue_type: str | None = None
    ) -> None:
        self.connection = connection
        self.control = control
        self.polled = Polled()
        self.dispatcher = Dispatcher(connection.channel(), queue_type=queue_type)
        self.letters: Confirms[str] = Confirms(connection.channel())
        self.publish_event = broker.queued_publish(control)
        intake = connection.channel()
        intake.basic_qos(prefetch_count=PREFETCH)
        consume(intake, broker.REQUESTS, self._on_request)
        results = connection.channel()
        results.basic_qos(prefetch_count=PREFETCH)
        consume(results, broker.RESULTS, self._on_result)
        self.acks = {
            broker.REQUESTS: broker.queued_ack(intake),
            broker.RESULTS: broker.queued_ack(results),
        }

    def _on_request(self, tag: int, body: bytes, user: str | None) -> None:
        self.polled.requests.append(Delivery(tag, body, user))

    def _on_result(self, tag: int, body: bytes, user: str | None) -> None:
        self.polled.results.append(Delivery(tag, body, user))

    def poll(self, timeout: float) -> Polled:
        if why := self.dispatcher.stuck():  # the last poll's answers are applied already
            raise TransportLost(f"{why}: opening a new connection")
        with _translated():
            if not self.polled.requests and not self.polled.results:
                self.connection.process_data_events(time_limit=max(0.0, timeout))
            else:  # delivered already (during a synchronous call): only send and read
                self.connection.process_data_events(time_limit=0)
            polled, self.polled = self.polled, Polled()
            if self.letters.outstanding():
                sent, refused = self.letters.confirmed()
                polled.letters_sent = [key for key, _ in sent]
                polled.letters_refused = refused
            polled.dispatched, polled.undispatched = self.dispatcher.confirmed()
        return polled

    def dispatch(self, worker: str, task_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        with _translated():
            self.dispatcher.publish(worker, list(task_ids), list(bodies))

    def letter(self, letter: Letter) -> None:
        properties = broker.dead_letter_properties(
            letter.reason,
            letter.source,
            message_id=letter.key,
            size=letter.size,
            sha256=letter.sha256,
        )
        with _translated():
            self.letters.publish("", broker.DEAD, letter.body, properties, letter.key)

    def event(self, routing_key: str, body: bytes) -> None:
        with _translated():
            self.publish_event(broker.EVENTS, routing_key, body, EVENT_PROPERTIES)

    def notice(self, owner: str, body: bytes) -> None:
        with _translated():
            self.publish_event(broker.NOTICES, owner, body, EVENT_PROPERTIES)

    def cancel(self, worker: str, task_id: str) -> None:
        with _translated():
            self.control.basic_publish(broker.CONTROL, f"cancel.{worker}", encode(Cancel(task_id)))

    def ack(self, source: str, tag: int) -> None:
        with _translated():
            self.acks[source](tag, True)

    def declare_worker(self, worker: str) -> None:
        with _translated():
            self.dispatcher.declare(worker)

    def purge(self, worker: str) -> int:
        with _translated():
            return self.dispatcher.purge(worker)

    def close(self) -> None:
        if self.connection.is_open:
            with contextlib.suppress(Exception):
                self.connection.close()


class PikaConnector:
    """``connect(stopping)``: a ``PikaTransport`` once this scheduler leads."""

    def __init__(
        self, url: str, tls: broker.TLSFiles | None = None, queue_type: str | None = None
    ) -> None:
        self.url = url
        self.tls = tls
        self.queue_type = queue_type  # of the queues it declares (``broker.queue_type``)

    def __call__(self, stopping: Callable[[], bool]) -> PikaTransport:
        try:
            connection = broker.connect(
                self.url,
                attempts=None,
                name="matchmaker-scheduler",
                stopping=stopping,
                tls=self.tls,
            )
        except broker.TLSRefused:
            raise  # a configuration error: said in one sentence, not retried
        except broker.BrokerError as error:
            raise TransportLost(str(error)) from None
        try:
            with _translated():
                control = self._lead(connection, stopping)
                broker.declare_core(control, self.queue_type)
                return PikaTransport(connection, control, self.queue_type)
        except BaseException:
            with contextlib.suppress(Exception):
                if connection.is_open:
                    connection.close()
            raise

    def _lead(self, connection: amqp.Connection, stopping: Callable[[], bool]) -> Any:
        """Wait until this scheduler holds the leader queue; returns a fresh channel."""
        announced = False
        while not stopping():
            channel = connection.channel()
            try:
                channel.queue_declare(LEADER_QUEUE, exclusive=True, auto_delete=True)
                log.info("this scheduler is active")
                return channel
            except amqp.ChannelClosedByBroker as error:
                if error.reply_code != 405:
                    raise
                if not announced:
                    log.info("another scheduler is active; standing by")
                    announced = True
                connection.sleep(STANDBY_CHECK)
        raise SystemExit(0)
