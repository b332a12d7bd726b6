"""The frame-level publish and delivery reader against the real broker: what pika would do."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from matchmaker.wire import amqp, broker, pika_shim
from matchmaker.wire.frames import (
    AckWindow,
    DeliveryReader,
    FrameAcker,
    FramePublisher,
    consume,
    reader_of,
)

QUEUE = "mm.test.frames"


Opened = tuple[amqp.Connection, amqp.Channel]
OpenChannel = Callable[[], Opened]


@pytest.fixture
def open_channel(broker_url: str) -> Iterator[OpenChannel]:
    """Opens a connection and a channel with ``QUEUE`` declared; all closed afterwards."""
    connections: list[amqp.Connection] = []

    def open_() -> Opened:
        connection = broker.connect(broker_url)
        connections.append(connection)
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True)
        return connection, channel

    yield open_
    for connection in connections:
        if connection.is_open:
            connection.close()


def test_messages_arrive_intact_with_their_properties(open_channel: OpenChannel) -> None:
    connection, channel = open_channel()
    frame_max = pika_shim.connection_of(connection).params.frame_max
    bodies = [b"", b"x", b"{}" * 1000, bytes(range(256)) * (3 * frame_max // 256 + 7)]
    headed = amqp.Properties(
        content_type="application/json", headers={"x-mm-reason": "because"}, priority=3
    )
    publish = FramePublisher(pika_shim.channel_of(channel))
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


def test_publisher_confirms_count_frame_published_messages(open_channel: OpenChannel) -> None:
    connection, channel = open_channel()
    confirmed: list[int] = []
    pika_shim.confirm_delivery(channel, lambda frame: confirmed.append(frame.method.delivery_tag))
    publish = FramePublisher(pika_shim.channel_of(channel))
    for i in range(500):
        publish("", QUEUE, f"m{i}".encode(), broker.PERSISTENT)
    while not confirmed or max(confirmed) < 500:
        connection.process_data_events(time_limit=0.05)
    assert max(confirmed) == 500
    depth = channel.queue_declare(QUEUE, durable=True, passive=True).method.message_count
    assert depth == 500


def test_bad_routing_key_and_closed_channel_raise(open_channel: OpenChannel) -> None:
    _connection, channel = open_channel()
    publish = FramePublisher(pika_shim.channel_of(channel))
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        publish("", "q" * 256, b"body", broker.PERSISTENT)
    channel.close()
    with pytest.raises(amqp.ChannelWrongStateError):
        publish("", QUEUE, b"body", broker.PERSISTENT)


def _consume_all(
    connection: amqp.Connection, channel: amqp.Channel, count: int
) -> list[tuple[amqp.Deliver, amqp.Properties, bytes]]:
    got: list[tuple[amqp.Deliver, amqp.Properties, bytes]] = []
    channel.basic_consume(QUEUE, lambda _c, m, p, b: got.append((m, p, b)))
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    return got


def test_reader_hands_consumers_whole_deliveries(open_channel: OpenChannel) -> None:
    """Empty, small and multi-frame bodies (split over many socket reads), properties, tags."""
    connection, channel = open_channel()
    assert isinstance(
        pika_shim.input_reader(pika_shim.connection_of(connection)).__self__, DeliveryReader
    )
    frame_max = pika_shim.connection_of(connection).params.frame_max
    bodies = [b"", b"x", bytes(range(256)) * (3 * frame_max // 256 + 7), b"{}" * 1000]
    bodies += [f"m{i}".encode() for i in range(2000)]
    headed = amqp.Properties(headers={"x-mm-reason": "because"}, priority=3)
    publish = FramePublisher(pika_shim.channel_of(channel))
    for i, body in enumerate(bodies):
        publish("", QUEUE, body, headed if i % 7 == 0 else broker.PERSISTENT)
    got = _consume_all(connection, channel, len(bodies))
    assert [body for _, _, body in got] == bodies
    assert [m.delivery_tag for m, _, _ in got] == list(range(1, len(bodies) + 1))
    assert {(m.exchange, m.routing_key, m.redelivered) for m, _, _ in got} == {("", QUEUE, False)}
    for i, (_, props, _) in enumerate(got):
        if i % 7 == 0:
            assert (props.headers, props.priority) == ({"x-mm-reason": "because"}, 3)
        else:
            assert (props.delivery_mode, props.headers) == (2, None)


def test_reader_reports_redeliveries_leaves_other_frames_to_pika(open_channel: OpenChannel) -> None:
    connection, channel = open_channel()
    publish = FramePublisher(pika_shim.channel_of(channel))
    for i in range(10):
        publish("", QUEUE, f"r{i}".encode(), broker.PERSISTENT)
    first = _consume_all(connection, channel, 10)
    assert len(first) == 10
    for tag in channel.consumer_tags:
        channel.basic_cancel(tag)  # Basic.CancelOk goes through pika
    channel.basic_nack(first[-1][0].delivery_tag, multiple=True, requeue=True)
    method, _props, body = channel.basic_get(QUEUE)  # Basic.GetOk: pika's path
    assert method is not None and method.redelivered and body == b"r0"
    channel.basic_ack(method.delivery_tag)
    again = _consume_all(connection, channel, 9)
    assert [b for _, _, b in again] == [f"r{i}".encode() for i in range(1, 10)]
    assert all(m.redelivered for m, _, _ in again)
    assert (
        pika_shim.connection_of(connection).bytes_received > 0
        and pika_shim.connection_of(connection).frames_received > 0
    )


def test_reader_hands_confirms_and_refusals_to_the_handler(open_channel: OpenChannel) -> None:
    """A queue that refuses publishes beyond 10 messages: 10 acks, 10 nacks, in tag order."""
    connection, channel = open_channel()
    channel.queue_declare(
        "mm.test.full", arguments={"x-max-length": 10, "x-overflow": "reject-publish"}
    )
    via_pika: list[object] = []
    pika_shim.confirm_delivery(channel, via_pika.append)  # Confirm.Select, through pika
    reader = reader_of(channel)
    assert reader is not None
    got: dict[int, bool] = {}

    def handler(tag: int, multiple: bool, acked: bool) -> None:
        first = max(got, default=0) + 1 if multiple else tag  # multiple: all up to tag
        for t in range(first, tag + 1):
            got[t] = acked

    reader.on_confirm(channel.channel_number, handler)
    publish = FramePublisher(pika_shim.channel_of(channel))
    for i in range(20):
        publish("", "mm.test.full", f"m{i}".encode(), broker.PERSISTENT)
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert [got.get(tag) for tag in range(1, 21)] == [True] * 10 + [False] * 10
    assert via_pika == []


def test_consume_feeds_the_sink_and_ends_the_wait(open_channel: OpenChannel) -> None:
    """Bodies, tags and senders (``user_id``, checked by the broker) in order, and
    ``process_data_events`` returns once they are in."""
    connection, channel = open_channel()
    got: list[tuple[int, bytes, str | None]] = []
    consume(channel, QUEUE, lambda tag, body, user: got.append((tag, body, user)))
    publisher_connection, publisher = open_channel()
    publish = FramePublisher(pika_shim.channel_of(publisher))
    bodies = [f"s{i}".encode() for i in range(300)] + [b"y" * 300_000]
    signed = amqp.Properties(
        delivery_mode=2, headers={"x-mm-reason": "r" * 300}, priority=1, user_id="matchmaker"
    )
    users = [None if i % 3 else "matchmaker" for i in range(len(bodies))]
    for body, user in zip(bodies, users, strict=True):
        publish("", QUEUE, body, signed if user else broker.PERSISTENT)
    waits = 0
    while len(got) < len(bodies) and waits < 500:
        # What the publisher's socket did not take at once goes out on a later call.
        publisher_connection.process_data_events(time_limit=0)
        started = time.monotonic()
        connection.process_data_events(time_limit=30)
        assert time.monotonic() - started < 20  # returned on data, not at the limit
        waits += 1
    assert got == list(zip(range(1, len(bodies) + 1), bodies, users, strict=True))


def test_frame_acks_settle_what_they_name(open_channel: OpenChannel) -> None:
    """A ``multiple`` ack settles every tag up to it, a single one only its own."""
    connection, channel = open_channel()
    channel.queue_purge(QUEUE)
    for i in range(6):
        channel.basic_publish("", QUEUE, f"a{i}".encode(), broker.PERSISTENT)
    got: list[int] = []
    consume(channel, QUEUE, lambda tag, _body, _user: got.append(tag))
    while len(got) < 6:
        connection.process_data_events(time_limit=5)
    ack = FrameAcker(pika_shim.channel_of(channel))
    ack(3, True)
    ack(5)
    connection.process_data_events(time_limit=0)
    connection.close()  # tags 4 and 6 go back to the queue
    _, check = open_channel()
    left = [check.basic_get(QUEUE, auto_ack=True)[2] for _ in range(2)]
    assert sorted(left) == [b"a3", b"a5"]
    assert check.basic_get(QUEUE, auto_ack=True)[0] is None


def test_deliveries_waiting_before_the_consumer_reach_the_sink_in_tag_order(
    open_channel: OpenChannel,
) -> None:
    """Deliveries read with ``Consume-Ok`` go to the sink at once, not through pika's queue
    of channel events after later ones (whose tags a ``multiple`` ack would then pass)."""
    connection, channel = open_channel()
    channel.queue_purge(QUEUE)
    publish = FramePublisher(pika_shim.channel_of(channel))
    for i in range(3000):
        publish("", QUEUE, f"q{i}".encode(), broker.PERSISTENT)
    channel.queue_declare(QUEUE, durable=True, passive=True)  # a round trip: all stored
    intake = connection.channel()
    got: list[int] = []
    consume(intake, QUEUE, lambda tag, _body, _user: got.append(tag))
    deadline = time.monotonic() + 30
    while len(got) < 3000 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=1)
    assert got == list(range(1, 3001))


def test_an_ack_window_covers_only_settled_deliveries() -> None:
    window = AckWindow()
    assert window.due() == 0
    for tag in (4, 5, 2):  # settled out of order: 1 and 3 are not
        window.settle(tag)
    assert window.due() == 0
    window.settle(1)
    assert window.due() == 2 and window.due() == 0
    window.settle(3)
    assert window.due() == 5
    window.settle(5)  # settled twice (a redelivery's tag is a new one; this changes nothing)
    window.settle(6)
    assert window.due() == 6 and not window.ahead
