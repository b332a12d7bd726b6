"""The push stage's two broker paths through pika's public asynchronous API alone.

``SelectConnection`` with ``Channel.confirm_delivery(callback)`` gives asynchronous publisher
confirms and ``basic_consume`` callbacks with no private name. ``benchmarks/wire.py`` runs
these beside the scheduler's path (``frames``, ``confirms``: a ``BlockingConnection`` whose
frames are written and read by ``codec``) on the same broker, to decide whether the direct
frame path still earns its private surface (docs/perf/wire.md). Not used by the scheduler.

Each function runs its own connection and I/O loop to completion and returns the seconds
from the first publish (or the consumer's start) to the last confirm (or delivery).
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec


def _run(url: str, on_channel: Any) -> None:
    """Open a SelectConnection and a channel, call ``on_channel(connection, channel)``, and
    run the I/O loop until something closes the connection."""
    errors: list[BaseException] = []

    def opened(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=lambda channel: on_channel(connection, channel))

    def failed(_connection: Any, error: BaseException) -> None:
        errors.append(error)
        _connection.ioloop.stop()

    def closed(connection: Any, error: BaseException) -> None:
        if not isinstance(error, pika.exceptions.ConnectionClosedByClient):
            errors.append(error)
        connection.ioloop.stop()

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=opened,
        on_open_error_callback=failed,
        on_close_callback=closed,
    )
    connection.ioloop.start()
    if errors:
        raise errors[0]


def publish_confirmed(url: str, queue: str, body: bytes, count: int, batch: int = 1000) -> float:
    """Publish ``count`` persistent messages to ``queue`` in batches of ``batch`` (one batch
    per I/O loop turn, as a scheduler's rounds would) and wait for every confirm."""
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    counts = {"sent": 0, "confirmed": 0}
    state = {"started": 0.0, "ended": 0.0}

    def on_channel(connection: pika.SelectConnection, channel: pika.channel.Channel) -> None:
        def send() -> None:
            for _ in range(min(batch, count - counts["sent"])):
                channel.basic_publish("", queue, body, properties)
                counts["sent"] += 1
            if counts["sent"] < count:
                connection.ioloop.add_callback_threadsafe(send)

        def on_confirm(frame: pika.frame.Method[Any]) -> None:
            method = frame.method
            counts["confirmed"] = (
                method.delivery_tag if method.multiple else counts["confirmed"] + 1
            )
            if counts["confirmed"] >= count:
                state["ended"] = time.perf_counter()
                connection.close()

        def confirming(_frame: Any) -> None:
            state["started"] = time.perf_counter()
            send()

        channel.confirm_delivery(on_confirm, callback=confirming)

    _run(url, on_channel)
    return state["ended"] - state["started"]


def consume(url: str, queue: str, count: int, prefetch: int, ack_every: int) -> float:
    """Consume ``count`` messages from ``queue`` with a prefetch window, acking every
    ``ack_every`` deliveries with one ``multiple`` ack."""
    got = [0]
    state = {"started": 0.0, "ended": 0.0}

    def on_channel(connection: pika.SelectConnection, channel: pika.channel.Channel) -> None:
        def on_message(
            _channel: Any, method: pika.spec.Basic.Deliver, _properties: Any, _body: bytes
        ) -> None:
            got[0] += 1
            if got[0] % ack_every == 0 or got[0] >= count:
                channel.basic_ack(method.delivery_tag, multiple=True)
            if got[0] >= count:
                state["ended"] = time.perf_counter()
                connection.close()

        def consuming(_frame: Any) -> None:
            state["started"] = time.perf_counter()
            channel.basic_consume(queue, on_message)

        channel.basic_qos(prefetch_count=prefetch, callback=consuming)

    _run(url, on_channel)
    return state["ended"] - state["started"]
