"""The frame codec, byte for byte against pika's own marshalling (no broker: pure bytes)."""

from __future__ import annotations

import pika
import pika.frame
import pika.spec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker.wire import codec
from matchmaker.wire.frames import user_id

names = st.text(max_size=40).filter(lambda t: len(t.encode()) <= 255)
channels = st.integers(1, 65535)
tags = st.integers(0, 2**64 - 1)
headers = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda t: len(t.encode()) <= 255),
    st.one_of(st.text(max_size=20), st.integers(-(2**31), 2**31 - 1), st.booleans()),
    max_size=3,
)
properties = st.builds(
    pika.BasicProperties,
    content_type=st.none() | st.just("application/json"),
    headers=st.none() | headers,
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | names,
    message_id=st.none() | names,
    timestamp=st.none() | st.integers(0, 2**40),
    user_id=st.none() | names,
    app_id=st.none() | names,
)


def pika_publish(
    channel: int, exchange: str, key: str, body: bytes, props: pika.BasicProperties, body_max: int
) -> bytes:
    """How pika's ``Connection._send_message`` frames a publish."""
    parts = [
        pika.frame.Method(channel, pika.spec.Basic.Publish(exchange=exchange, routing_key=key)),
        pika.frame.Header(channel, len(body), props),
    ]
    parts += [
        pika.frame.Body(channel, body[start : start + body_max])
        for start in range(0, len(body), body_max)
    ]
    return b"".join(part.marshal() for part in parts)


def encoded(props: pika.BasicProperties) -> bytes:
    return b"".join(props.encode())


@settings(max_examples=300, deadline=None)
@given(channels, names, names, st.binary(max_size=3000), properties, st.integers(1, 1024))
def test_a_publish_is_pikas_bytes(
    channel: int, exchange: str, key: str, body: bytes, props: pika.BasicProperties, body_max: int
) -> None:
    ours = codec.publish(channel, exchange, key, body, encoded(props), body_max)
    assert ours == pika_publish(channel, exchange, key, body, props, body_max)
    head = codec.publish_method(channel, exchange, key)
    assert head + codec.content(channel, body, encoded(props), body_max) == ours
    assert codec.body_frames(len(body), body_max) == len(range(0, len(body), body_max))


@given(channels, tags, st.booleans())
def test_an_ack_is_pikas_bytes(channel: int, tag: int, multiple: bool) -> None:
    method = pika.spec.Basic.Ack(delivery_tag=tag, multiple=multiple)
    assert codec.ack(channel, tag, multiple) == pika.frame.Method(channel, method).marshal()


@given(channels, tags, st.booleans(), st.booleans())
def test_confirms_read_as_pika_wrote_them(
    channel: int, tag: int, multiple: bool, acked: bool
) -> None:
    method = (
        pika.spec.Basic.Ack(delivery_tag=tag, multiple=multiple)
        if acked
        else pika.spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=False)
    )
    raw = pika.frame.Method(channel, method).marshal()
    assert codec.head(raw, 0) == (codec.METHOD, channel, len(raw))
    assert codec.method_id(raw, 0) == (codec.ACK if acked else codec.NACK)
    assert codec.confirm(raw, 0) == (tag, multiple)


@settings(max_examples=300, deadline=None)
@given(
    channels,
    names,
    tags,
    st.booleans(),
    names,
    names,
    st.binary(max_size=3000),
    properties,
    st.integers(1, 1024),
)
def test_a_delivery_reads_as_pika_wrote_it(
    channel: int,
    consumer_tag: str,
    tag: int,
    redelivered: bool,
    exchange: str,
    key: str,
    body: bytes,
    props: pika.BasicProperties,
    body_max: int,
) -> None:
    deliver = pika.spec.Basic.Deliver(consumer_tag, tag, redelivered, exchange, key)
    method = pika.frame.Method(channel, deliver).marshal()
    parts = [pika.frame.Header(channel, len(body), props).marshal()]
    parts += [
        pika.frame.Body(channel, body[start : start + body_max]).marshal()
        for start in range(0, len(body), body_max)
    ]
    raw = method + b"".join(parts) + b"next"
    assert codec.method_id(raw, 0) == codec.DELIVER
    found = codec.delivery(raw, 0, len(method), channel)
    assert found is not None and len(found) == 8
    got_tag, got_delivery, got_redelivered, at_names, got_props, got_body, after, frames = found
    assert (got_tag, got_delivery, got_redelivered) == (consumer_tag, tag, redelivered)
    assert codec.names(raw, at_names) == (exchange, key)
    assert (got_props, got_body, after) == (encoded(props), body, len(raw) - 4)
    assert frames == 1 + len(parts)  # the method, the header, the bodies
    assert codec.delivery(raw[:-5], 0, len(method), channel) is None  # cut short: wait
    other = channel % 65535 + 1
    assert codec.delivery(raw, 0, len(method), other) == ()  # the next frames: another channel's
    assert user_id(encoded(props)) == props.user_id


@given(properties)
def test_user_id_reads_only_the_user_id(props: pika.BasicProperties) -> None:
    assert codec.user_id(encoded(props)) == props.user_id


def test_user_id_refuses_what_it_does_not_expect() -> None:
    with pytest.raises(ValueError, match="continuation"):
        codec.user_id(b"\x00\x11")  # user-id and the continuation bit
    with pytest.raises(ValueError):
        codec.user_id(b"\x00\x10\x05ab")  # a user-id longer than the bytes
    with pytest.raises(ValueError):
        codec.user_id(b"\x00")  # no flag word


def test_a_short_string_longer_than_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 255"):
        codec.publish_method(1, "", "k" * 256)


def test_incomplete_and_foreign_frames() -> None:
    raw = codec.ack(3, 7)
    assert codec.head(raw[:7], 0) is None
    assert codec.head(raw[:-1], 0) is None
    assert codec.span(raw, 0, codec.HEADER, 3) == ()
    assert codec.span(raw, 0, codec.METHOD, 4) == ()
    assert codec.span(raw[:-1] + b"\x00", 0, codec.METHOD, 3) == ()  # not well ended
    assert codec.span(raw, 0, codec.METHOD, 3) == (7, len(raw))
