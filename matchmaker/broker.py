"""RabbitMQ topology and connections, shared by the scheduler, workers and CLI.

Queues are durable classic queues, made ``quorum`` by ``MM_QUEUE_TYPE=quorum``
(for every process) to replicate them on a cluster; on one node classic ones
are as durable (a persistent message is confirmed once on disk) and faster
(README, "Decisions"). A queue that already exists is used as it is, whatever
its type. ``mm.requests`` uses single-active-consumer so a standby scheduler
waits and takes over. The dead-letter queue ``mm.dead`` carries rejected
messages with the reason in the ``x-mm-reason`` header and the source queue in
``x-mm-source``; it is bounded (``DEAD_MAX_LENGTH`` letters, the oldest
dropped first), and the scheduler's letters keep the first few KiB of their
body, with the whole body's size and SHA-256 in ``x-mm-size`` and
``x-mm-sha256`` and a stable ``message_id`` a consumer can deduplicate by.
``mm.events`` is a topic exchange
(routing key ``task.<state>``); ``mm.control`` a topic exchange for
cancellations (routing key ``cancel.<worker>``).

Declaring is idempotent: whichever side needs a queue declares it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from matchmaker.frames import FrameAcker, read_deliveries
from matchmaker.frames import queued_publish as queued_publish  # re-exported

log = logging.getLogger(__name__)

REQUESTS = "mm.requests"
RESULTS = "mm.results"
DEAD = "mm.dead"
EVENTS = "mm.events"
CONTROL = "mm.control"
DEFAULT_URL = "amqp://matchmaker:matchmaker@127.0.0.1:5672/matchmaker"
QUEUE_TYPES = ("classic", "quorum")
QUEUE_TYPE = os.environ.get("MM_QUEUE_TYPE", "classic")

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
DEAD_MAX_LENGTH = 100_000
MAX_BACKOFF = 5.0


class BrokerError(RuntimeError):
    """The broker cannot be reached or refused us; the text says which and where."""


def worker_queue(name: str) -> str:
    return f"mm.worker.{name}"


def pull_queue(task_type: str) -> str:
    return f"mm.pull.{task_type}"


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    params = pika.URLParameters(url)
    vhost = "" if params.virtual_host == "/" else f"/{params.virtual_host}"
    return f"{params.host}:{params.port}{vhost}"


def _reason(error: BaseException) -> str:
    """The innermost useful text of a pika connection error (it nests the socket error)."""
    while True:
        inner = getattr(error, "exception", None)
        if inner is None and error.args and isinstance(error.args[0], BaseException):
            inner = error.args[0]
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error).strip() or error.__class__.__name__


def connect(
    url: str,
    *,
    attempts: int | None = 1,
    name: str = "matchmaker",
    stopping: Callable[[], bool] | None = None,
) -> pika.BlockingConnection:
    """A blocking connection; retries with backoff (capped at ``MAX_BACKOFF`` seconds, one
    log line per attempt) ``attempts`` times, or for ever with None, then BrokerError.
    A ``stopping`` that turns true ends the retries at once, with BrokerError.

    Its deliveries are parsed by ``frames.DeliveryReader`` (pika's path costs
    more than the rest of taking in a message)."""
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name}
    params.heartbeat = 30
    params.blocked_connection_timeout = 60
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            connection = pika.BlockingConnection(params)
            read_deliveries(connection)
            return connection
        except pika.exceptions.ProbableAuthenticationError:
            raise BrokerError(f"the broker at {describe(url)} refused the credentials") from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise BrokerError(f"access denied to the vhost at {describe(url)}") from None
        except (pika.exceptions.AMQPError, OSError) as error:
            if attempts is not None and attempt >= attempts:
                raise BrokerError(
                    f"cannot reach the broker at {describe(url)}: {_reason(error)}"
                ) from None
            log.warning(
                "broker %s unreachable (%s); retrying in %.1fs (attempt %d)",
                describe(url),
                _reason(error),
                delay,
                attempt,
            )
        if pause(delay, stopping):
            raise BrokerError(f"stopped while connecting to the broker at {describe(url)}")
        delay = min(delay * 2, MAX_BACKOFF)


def pause(seconds: float, stopping: Callable[[], bool] | None = None) -> bool:
    """Sleep ``seconds`` in short steps; True at once if ``stopping`` turns true."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping is not None and stopping():
            return True
        time.sleep(min(left, 0.05))
    return stopping is not None and stopping()


def _queue(channel: BlockingChannel, name: str, **arguments: Any) -> None:
    """Declare a durable queue of ``QUEUE_TYPE`` unless it exists: the broker refuses a
    declaration whose type or arguments differ from the queue's (and closes the channel),
    so an existing one, made under another setting or by an operator, is used as it is."""
    if QUEUE_TYPE not in QUEUE_TYPES:
        raise BrokerError(f"MM_QUEUE_TYPE must be classic or quorum, not {QUEUE_TYPE!r}")
    probe = channel.connection.channel()  # a passive declare of a missing queue closes it
    try:
        probe.queue_declare(name, passive=True)
        probe.close()
        return
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 404:
            raise
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": QUEUE_TYPE, **arguments})


def declare_core(channel: BlockingChannel) -> None:
    """The scheduler's queues and exchanges."""
    _queue(channel, REQUESTS, **{"x-single-active-consumer": True})
    _queue(channel, RESULTS)
    _queue(channel, DEAD, **{"x-max-length": DEAD_MAX_LENGTH, "x-overflow": "drop-head"})
    channel.exchange_declare(EVENTS, "topic", durable=True)
    channel.exchange_declare(CONTROL, "topic", durable=True)


def declare_worker(channel: BlockingChannel, name: str) -> str:
    queue = worker_queue(name)
    _queue(channel, queue)
    return queue


def declare_pull(channel: BlockingChannel, task_type: str) -> str:
    queue = pull_queue(task_type)
    _queue(channel, queue)
    return queue


def send_requests(url: str, bodies: Iterable[bytes], *, name: str = "matchmaker-client") -> None:
    """Publish encoded requests to mm.requests in transactions of 1000: once this returns,
    the broker has stored them all."""
    connection = connect(url, name=name)
    try:
        channel = connection.channel()
        declare_core(channel)
        channel.tx_select()
        publish = queued_publish(channel)
        for count, body in enumerate(bodies, 1):
            publish("", REQUESTS, body, PERSISTENT)
            if count % 1000 == 0:
                channel.tx_commit()
        channel.tx_commit()
    finally:
        connection.close()


def queued_ack(channel: BlockingChannel) -> Callable[[int, bool], None]:
    """``basic_ack(tag, multiple)`` that only queues the frame, like ``queued_publish``."""
    impl = getattr(channel, "_impl", None)
    try:
        return FrameAcker(impl)
    except AttributeError:  # pika's layout changed: its own call
        ack = getattr(impl, "basic_ack", None)
        return ack if callable(ack) else channel.basic_ack


def dead_letter_properties(
    reason: str,
    source: str,
    *,
    message_id: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> pika.BasicProperties:
    """A dead letter's properties: persistent, the reason and the source queue in headers,
    and, when given, the letter's stable id and its whole body's size and SHA-256."""
    headers: dict[str, Any] = {"x-mm-reason": reason[:1000], "x-mm-source": source}
    if size is not None:
        headers["x-mm-size"] = size
    if sha256 is not None:
        headers["x-mm-sha256"] = sha256
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, headers=headers, message_id=message_id
    )


def dead_letter(channel: BlockingChannel, body: bytes, reason: str, source: str) -> None:
    """Park a rejected message on ``mm.dead`` with the reason in a header."""
    channel.basic_publish("", DEAD, body, dead_letter_properties(reason, source))
