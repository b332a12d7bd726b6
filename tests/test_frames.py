"""The frame-level publish against the real broker: what arrives is what pika would send."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from matchmaker import broker
from matchmaker.frames import FramePublisher

QUEUE = "mm.test.frames"


def _channel(
    url: str,
) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
    connection = broker.connect(url)
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    return connection, channel


def test_messages_arrive_intact_with_their_properties(broker_url: str) -> None:
    connection, channel = _channel(broker_url)
    try:
        frame_max = connection._impl.params.frame_max
        bodies = [b"", b"x", b"{}" * 1000, bytes(range(256)) * (3 * frame_max // 256 + 7)]
        headed = pika.BasicProperties(
            content_type="application/json", headers={"x-mm-reason": "because"}, priority=3
        )
        publish = FramePublisher(channel._impl)
        for body in bodies:
            publish("", QUEUE, body, broker.PERSISTENT)
        publish("", QUEUE, b"last", headed)
        channel.queue_declare(QUEUE, durable=True, passive=True)  # a round trip flushes them
        got = []
        for _ in range(len(bodies) + 1):
            method, props, body = channel.basic_get(QUEUE, auto_ack=True)
            assert method is not None
            got.append((props, body))
        assert [body for _, body in got] == [*bodies, b"last"]
        assert all(props.delivery_mode == 2 for props, _ in got[:-1])
        last = got[-1][0]
        assert (last.content_type, last.headers, last.priority) == (
            "application/json",
            {"x-mm-reason": "because"},
            3,
        )
    finally:
        connection.close()


def test_publisher_confirms_count_frame_published_messages(broker_url: str) -> None:
    connection, channel = _channel(broker_url)
    try:
        confirmed: list[int] = []
        channel._impl.confirm_delivery(lambda frame: confirmed.append(frame.method.delivery_tag))
        publish = FramePublisher(channel._impl)
        for i in range(500):
            publish("", QUEUE, f"m{i}".encode(), broker.PERSISTENT)
        while not confirmed or max(confirmed) < 500:
            connection.process_data_events(time_limit=0.05)
        assert max(confirmed) == 500
        depth = channel.queue_declare(QUEUE, durable=True, passive=True).method.message_count
        assert depth == 500
    finally:
        connection.close()


def test_bad_routing_key_and_closed_channel_raise(broker_url: str) -> None:
    connection, channel = _channel(broker_url)
    try:
        publish = FramePublisher(channel._impl)
        with pytest.raises(ValueError, match="longer than 255 bytes"):
            publish("", "q" * 256, b"body", broker.PERSISTENT)
        channel.close()
        with pytest.raises(pika.exceptions.ChannelWrongStateError):
            publish("", QUEUE, b"body", broker.PERSISTENT)
    finally:
        connection.close()
