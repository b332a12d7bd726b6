"""AMQP 0-9-1 frames as bytes: the few the hot paths write and read, encoded and decoded here.

Every frame is ``type(1) channel(2) size(4) payload 0xCE``. A message is a method frame, a
content header (type 2: class 60, weight 0, body size in 64 bits, then the properties' flag
word and values) and body frames (type 3), none longer than the negotiated ``frame_max``
less the 8 bytes of framing.

- ``Basic.Publish`` (class 60 method 40): ticket 0, exchange and routing key as short
  strings, the bits ``mandatory`` and ``immediate`` off.
- ``Basic.Deliver`` (60.60): consumer tag, delivery tag, the bit ``redelivered``, exchange,
  routing key.
- ``Basic.Ack`` (60.80): delivery tag, the bit ``multiple``; ``Basic.Nack`` (60.120): the
  same and the bit ``requeue``. The broker sends them as publisher confirms.

Pure functions of bytes, no I/O and no client library: ``frames`` feeds them a connection's
input and writes what they build to its output. A reader returns None while a frame is
incomplete and () when the bytes at hand are not the frame it expects (someone else's to
decode); properties travel encoded, except the ``user-id`` that ``user_id`` reads.
"""

from __future__ import annotations

import struct

FRAME_END = b"\xce"
FRAME_END_BYTE = FRAME_END[0]
HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
CONTENT = struct.Struct(">HHQ")  # class id, weight, body size
PUBLISH = b"\x00\x3c\x00\x28\x00\x00"  # Basic (60) . Publish (40), ticket 0
DELIVER = b"\x00\x3c\x00\x3c"  # Basic (60) . Deliver (60)
ACK = b"\x00\x3c\x00\x50"  # Basic (60) . Ack (80)
NACK = b"\x00\x3c\x00\x78"  # Basic (60) . Nack (120)
TAG_BITS = struct.Struct(">QB")  # delivery tag, then the bits
METHOD, HEADER, BODY = 1, 2, 3
NO_BITS = b"\x00"  # mandatory and immediate off
BASIC_CLASS = 60
FRAMING = 8  # a frame's bytes besides its payload
# Basic's properties in flag order (bit 15 first) up to user-id (bit 4): how to skip each one.
SHORT, TABLE, OCTET, LONGLONG = 0, 1, 2, 3
BEFORE_USER_ID = (SHORT, SHORT, TABLE, OCTET, OCTET, SHORT, SHORT, SHORT, SHORT, LONGLONG, SHORT)
USER_ID_FLAG = 1 << 4

Span = tuple[int, int] | tuple[()] | None  # (payload start, next frame), not this frame, wait
Delivery = tuple[str, int, bool, int, bytes, bytes, int, int] | tuple[()] | None  # ``delivery``


def short(text: str) -> bytes:
    """An AMQP short string: its length in one byte, then its UTF-8 bytes (ValueError > 255)."""
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return HEAD.pack(kind, channel, len(payload)) + payload + FRAME_END


def publish_method(channel: int, exchange: str, routing_key: str) -> bytes:
    """The ``Basic.Publish`` method frame."""
    return frame(METHOD, channel, PUBLISH + short(exchange) + short(routing_key) + NO_BITS)


def content(channel: int, body: bytes, properties: bytes, body_max: int) -> bytes:
    """The content header (with the encoded ``properties``) and body frames of one message;
    bodies split at ``body_max`` bytes (``body_frames`` of them)."""
    header = CONTENT.pack(BASIC_CLASS, 0, len(body)) + properties
    parts = [HEAD.pack(HEADER, channel, len(header)), header, FRAME_END]
    if len(body) <= body_max:
        if body:
            parts += (HEAD.pack(BODY, channel, len(body)), body, FRAME_END)
        return b"".join(parts)
    for start in range(0, len(body), body_max):
        chunk = body[start : start + body_max]
        parts += (HEAD.pack(BODY, channel, len(chunk)), chunk, FRAME_END)
    return b"".join(parts)


def body_frames(size: int, body_max: int) -> int:
    return -(-size // body_max)


def publish(
    channel: int, exchange: str, routing_key: str, body: bytes, properties: bytes, body_max: int
) -> bytes:
    """A whole published message: method, content header and body frames."""
    return publish_method(channel, exchange, routing_key) + content(
        channel, body, properties, body_max
    )


def ack_head(channel: int) -> bytes:
    """The bytes of a ``Basic.Ack`` frame before its delivery tag and bits."""
    return HEAD.pack(METHOD, channel, len(ACK) + TAG_BITS.size) + ACK


def ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """The ``Basic.Ack`` method frame."""
    return ack_head(channel) + TAG_BITS.pack(delivery_tag, multiple) + FRAME_END


def head(buffer: bytes, at: int) -> tuple[int, int, int] | None:
    """(kind, channel, end) of the frame at ``at``; None while it is incomplete."""
    if len(buffer) - at < FRAMING:
        return None
    kind, channel, length = HEAD.unpack_from(buffer, at)
    end = at + length + FRAMING
    return None if end > len(buffer) else (kind, channel, end)


def span(buffer: bytes, at: int, kind: int, channel: int) -> Span:
    """(payload start, next frame's start) of the ``kind`` frame on ``channel`` at ``at``;
    None while it is incomplete, () if it is some other frame or is not well ended."""
    found = head(buffer, at)
    if found is None:
        return None
    if found[0] != kind or found[1] != channel or buffer[found[2] - 1] != FRAME_END_BYTE:
        return ()
    return at + 7, found[2]


def method_id(buffer: bytes, at: int) -> bytes:
    """The class and method ids (4 bytes) of the method frame at ``at``."""
    return buffer[at + 7 : at + 11]


def confirm(buffer: bytes, at: int) -> tuple[int, bool]:
    """(delivery tag, multiple) of the ``Basic.Ack``/``Basic.Nack`` frame at ``at``."""
    tag, bits = TAG_BITS.unpack_from(buffer, at + 11)
    return tag, bool(bits & 1)


def delivery(buffer: bytes, at: int, end: int, channel: int) -> Delivery:
    """The ``Basic.Deliver`` method frame ``buffer[at:end]`` on ``channel`` and the content
    header and body frames after it: (consumer tag, delivery tag, redelivered, where the
    exchange starts, encoded properties, body, next frame's start, frames read); None while
    the message is incomplete, () if the frames after the method are not its content."""
    p = at + 11
    n = buffer[p]
    consumer_tag = buffer[p + 1 : p + 1 + n].decode()
    p += 1 + n
    delivery_tag, bits = TAG_BITS.unpack_from(buffer, p)
    size = len(buffer)
    if size - end < FRAMING:
        return None
    kind, number, length = HEAD.unpack_from(buffer, end)
    after = end + length + FRAMING
    if after > size:
        return None
    if kind != HEADER or number != channel or buffer[after - 1] != FRAME_END_BYTE:
        return ()
    body_size = CONTENT.unpack_from(buffer, end + 7)[2]
    properties = buffer[end + 7 + CONTENT.size : after - 1]
    chunks = []
    got, frames = 0, 2
    while got < body_size:
        if size - after < FRAMING:
            return None
        kind, number, length = HEAD.unpack_from(buffer, after)
        following = after + length + FRAMING
        if following > size:
            return None
        if kind != BODY or number != channel or buffer[following - 1] != FRAME_END_BYTE:
            return ()
        chunks.append(buffer[after + 7 : following - 1])
        got += length
        after = following
        frames += 1
    if got != body_size:
        return ()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return (
        consumer_tag,
        delivery_tag,
        bool(bits & 1),
        p + TAG_BITS.size,
        properties,
        body,
        after,
        frames,
    )


def names(buffer: bytes, at: int) -> tuple[str, str]:
    """(exchange, routing key): two short strings at ``at`` (``delivery``'s fourth value)."""
    n = buffer[at]
    exchange = buffer[at + 1 : at + 1 + n].decode()
    at += 1 + n
    return exchange, buffer[at + 1 : at + 1 + buffer[at]].decode()


def user_id(raw: bytes) -> str | None:
    """The ``user-id`` property of encoded Basic properties (a flag word, then the values of
    the flags set, in order), or None if it is not set; ValueError for what this does not
    expect (a continuation flag word, a value past the end)."""
    try:
        (flags,) = struct.unpack_from(">H", raw, 0)
        if not flags & USER_ID_FLAG:
            return None
        if flags & 1:
            raise ValueError("a continuation flag word")
        at = 2
        for bit, kind in enumerate(BEFORE_USER_ID):
            if not flags & (1 << (15 - bit)):
                continue
            if kind == SHORT:
                at += 1 + raw[at]
            elif kind == TABLE:
                at += 4 + struct.unpack_from(">I", raw, at)[0]
            else:
                at += 1 if kind == OCTET else 8
        end = at + 1 + raw[at]
        if end > len(raw):
            raise ValueError("past the end")
        return raw[at + 1 : end].decode()
    except (IndexError, struct.error) as error:
        raise ValueError(f"properties cut short: {error}") from None
