"""``Basic.Publish`` written straight as AMQP 0-9-1 frames onto a pika channel's connection.

A published message is three or more frames, each ``type(1) channel(2)
size(4) payload 0xCE``:

- method (type 1): class 60 method 40, ticket 0, exchange and routing key as
  short strings (a length byte, at most 255 bytes), then the bits
  ``mandatory`` and ``immediate`` (both off);
- content header (type 2): class 60, weight 0, body size (64 bits), then the
  properties' flag word and values;
- body (type 3), split so no frame exceeds the negotiated ``frame_max``.

pika builds these through four objects and three marshal calls per message,
which costs more than the rest of a dispatch. Here the method frame is a
few byte joins, a properties object is encoded once and reused, and the
frames go to pika's outbound buffer in one write: the connection sends them
at its next I/O step, exactly as ``Channel.basic_publish`` would have.
Publisher confirms count these messages like any other, since the broker
sees the same frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

Publish = Callable[[str, str, bytes, BasicProperties], None]

FRAME_END = b"\xce"
HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
CONTENT = struct.Struct(">HHQ")  # class id, weight, body size
PUBLISH = b"\x00\x3c\x00\x28\x00\x00"  # Basic (60) . Publish (40), ticket 0
NO_BITS = b"\x00"  # mandatory and immediate off
BASIC_CLASS = 60
PROPERTY_CACHE = 64  # distinct properties objects kept encoded
ROUTE_CACHE = 10_000  # (exchange, routing key) method frames kept


def _short(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


class FramePublisher:
    """``publish(exchange, routing_key, body, properties)`` for one open pika channel."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # pika.channel.Channel (a BlockingChannel's ``_impl``)
        self.connection = channel.connection
        self.number: int = channel.channel_number
        self.body_max: int = self.connection._body_max_length
        self.emit: Callable[[bytes], None] = self.connection._adapter_emit_data
        self.encoded: dict[int, tuple[BasicProperties, bytes]] = {}
        self.routes: dict[tuple[str, str], bytes] = {}

    def _properties(self, properties: BasicProperties) -> bytes:
        known = self.encoded.get(id(properties))
        if known is not None and known[0] is properties:
            return known[1]
        raw = b"".join(properties.encode())
        if len(self.encoded) < PROPERTY_CACHE:
            self.encoded[id(properties)] = (properties, raw)  # held, so the id stays its own
        return raw

    def _method(self, exchange: str, routing_key: str) -> bytes:
        frame = self.routes.get((exchange, routing_key))
        if frame is None:
            payload = PUBLISH + _short(exchange) + _short(routing_key) + NO_BITS
            frame = HEAD.pack(1, self.number, len(payload)) + payload + FRAME_END
            if len(self.routes) < ROUTE_CACHE:
                self.routes[(exchange, routing_key)] = frame
        return frame

    def __call__(
        self, exchange: str, routing_key: str, body: bytes, properties: BasicProperties
    ) -> None:
        if not self.channel.is_open:  # pika raises the precise ChannelWrongStateError
            self.channel.basic_publish(exchange, routing_key, body, properties)
            return
        header = CONTENT.pack(BASIC_CLASS, 0, len(body)) + self._properties(properties)
        parts = [
            self._method(exchange, routing_key),
            HEAD.pack(2, self.number, len(header)),
            header,
            FRAME_END,
        ]
        frames = 2
        for start in range(0, len(body), self.body_max):
            chunk = body[start : start + self.body_max]
            parts += (HEAD.pack(3, self.number, len(chunk)), chunk, FRAME_END)
            frames += 1
        data = b"".join(parts)
        self.connection.bytes_sent += len(data)
        self.connection.frames_sent += frames
        self.emit(data)


def queued_publish(channel: BlockingChannel) -> Publish:
    """A publish that only queues the frames; the next flush (``tx_commit``,
    ``process_data_events``) sends them.

    BlockingChannel.basic_publish writes to the socket on every call, which
    costs more than the rest of a dispatch together; a batch inside a
    transaction, or under asynchronous confirms, loses nothing by waiting for
    the next flush. Falls back to pika's own calls if its layout changes.
    """
    impl = getattr(channel, "_impl", None)
    try:
        return FramePublisher(impl)
    except AttributeError:
        publish = getattr(impl, "basic_publish", None)
        return publish if callable(publish) else channel.basic_publish
