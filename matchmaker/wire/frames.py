"""AMQP 0-9-1 frames written and read straight, beside pika's own frame layer.

Every frame is ``type(1) channel(2) size(4) payload 0xCE``. A message is a
method frame, a content header (type 2: class 60, weight 0, body size in 64
bits, then the properties' flag word and values) and body frames (type 3),
none longer than the negotiated ``frame_max``.

pika builds and parses each message through several objects, marshal calls
and callback-registry lookups, which costs more than the rest of a dispatch.
This module does the two hot cases itself and leaves everything else to pika:

- ``FramePublisher``: ``Basic.Publish`` (class 60 method 40: ticket 0,
  exchange and routing key as short strings, the bits ``mandatory`` and
  ``immediate`` off). The method frame is a few byte joins, a properties
  object is encoded once and reused, and the frames go to pika's outbound
  buffer in one write, sent at the connection's next I/O step exactly as
  ``Channel.basic_publish`` would have. Publisher confirms count these
  messages like any other: the broker sees the same frames.
- ``FrameAcker``: ``Basic.Ack`` (60.80: delivery tag, the bit ``multiple``),
  one frame from a cached head, queued the same way.
- ``DeliveryReader``: ``Basic.Deliver`` (class 60 method 60: consumer tag,
  delivery tag, the bit ``redelivered``, exchange, routing key) with its
  header and body. It takes the connection's input; a whole delivery to a
  live consumer goes to that consumer's pika callback as pika's ``Channel``
  would have called it (so ``BlockingChannel`` still dispatches it between
  I/O steps), or, for a consumer made with ``consume``, straight to its sink
  ``(delivery tag, body, user id)``: the ``user-id`` property (``user_id``),
  which RabbitMQ has checked against the sender's login, read from the
  properties without decoding the rest (``user_id``). Publisher confirms, ``Basic.Ack`` (60.80:
  delivery tag, bit ``multiple``) and ``Basic.Nack`` (60.120: delivery tag,
  bits ``multiple`` and ``requeue``), go straight to a handler registered for
  their channel with ``on_confirm`` (which may ask them to end the wait, as a
  sink's deliveries do unless the owner set ``hold``; held ones are followed,
  once the read is done, by the owner's ``on_held`` if it set one, for work
  that needs no I/O). Every other frame, or a delivery it has any doubt
  about, goes through pika's own decoder in the order it arrived.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

import pika
from pika import frame as pika_frame
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import InvalidFrameError
from pika.spec import Basic, BasicProperties

Publish = Callable[[str, str, bytes, BasicProperties], None]
Taken = tuple[()] | tuple[int, tuple[Any, ...]]  # () = pika's; (next frame, consumer call)
Confirm = Callable[[int, bool, bool], None]  # (delivery tag, multiple, acked)
Sink = Callable[[int, bytes, str | None], None]  # (delivery tag, body, user id); inside the read
# Basic's properties in flag order (bit 15 first) up to user-id (bit 4): how to skip each one.
SHORT, TABLE, OCTET, LONGLONG = 0, 1, 2, 3
BEFORE_USER_ID = (SHORT, SHORT, TABLE, OCTET, OCTET, SHORT, SHORT, SHORT, SHORT, LONGLONG, SHORT)
USER_ID_FLAG = 1 << 4

FRAME_END = b"\xce"
FRAME_END_BYTE = FRAME_END[0]
HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
CONTENT = struct.Struct(">HHQ")  # class id, weight, body size
PUBLISH = b"\x00\x3c\x00\x28\x00\x00"  # Basic (60) . Publish (40), ticket 0
DELIVER = b"\x00\x3c\x00\x3c"  # Basic (60) . Deliver (60)
ACK = b"\x00\x3c\x00\x50"  # Basic (60) . Ack (80)
NACK = b"\x00\x3c\x00\x78"  # Basic (60) . Nack (120)
TAG_BITS = struct.Struct(">QB")  # delivery tag, then the bit "redelivered"
METHOD, HEADER, BODY = 1, 2, 3
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
            frame = HEAD.pack(METHOD, self.number, len(payload)) + payload + FRAME_END
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
            HEAD.pack(HEADER, self.number, len(header)),
            header,
            FRAME_END,
        ]
        frames = 2
        for start in range(0, len(body), self.body_max):
            chunk = body[start : start + self.body_max]
            parts += (HEAD.pack(BODY, self.number, len(chunk)), chunk, FRAME_END)
            frames += 1
        data = b"".join(parts)
        self.connection.bytes_sent += len(data)
        self.connection.frames_sent += frames
        self.emit(data)


class FrameAcker:
    """``ack(delivery_tag, multiple)`` for one open pika channel: ``Basic.Ack`` (60.80:
    delivery tag, bit ``multiple``) as one frame on pika's outbound buffer."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # pika.channel.Channel (a BlockingChannel's ``_impl``)
        self.connection = channel.connection
        self.emit: Callable[[bytes], None] = self.connection._adapter_emit_data
        self.head = HEAD.pack(METHOD, channel.channel_number, len(ACK) + TAG_BITS.size) + ACK

    def __call__(self, delivery_tag: int, multiple: bool = False) -> None:
        if not self.channel.is_open:  # pika raises the precise ChannelWrongStateError
            self.channel.basic_ack(delivery_tag, multiple)
            return
        data = self.head + TAG_BITS.pack(delivery_tag, multiple) + FRAME_END
        self.connection.bytes_sent += len(data)
        self.connection.frames_sent += 1
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


def user_id(raw: bytes) -> str | None:
    """The ``user-id`` property of encoded Basic properties (a flag word, then the values
    of the flags set, in order), or None if it is not set; pika decodes what this does not
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
    except (IndexError, ValueError, struct.error):
        properties = BasicProperties()
        try:
            properties.decode(raw)
        except Exception:  # RabbitMQ sent it: the broker's properties are not in doubt
            return None
        found = properties.user_id
        return found if isinstance(found, str) else None


def _frame(buffer: bytes, at: int, kind: int, number: int) -> tuple[int, int] | tuple[()] | None:
    """(payload start, next frame's start) of the ``kind`` frame on channel ``number`` at
    ``at``; None while it is incomplete, () if it is some other frame."""
    if len(buffer) - at < 8:
        return None
    found, channel, length = HEAD.unpack_from(buffer, at)
    end = at + length + 8
    if end > len(buffer):
        return None
    if found != kind or channel != number or buffer[end - 1] != FRAME_END_BYTE:
        return ()
    return at + 7, end


class DeliveryReader:
    """Takes a pika connection's input: deliveries and confirms parsed here, the rest by pika."""

    def __init__(self, connection: Any, wake: Callable[[int], None] | None = None) -> None:
        self.connection = connection  # pika.connection.Connection (a BlockingConnection's _impl)
        self.channels: dict[int, Any] = connection._channels
        self.pending = b""
        self.properties: dict[bytes, BasicProperties] = {}
        self.users: dict[bytes, str | None] = {}  # user-id by encoded properties
        self.confirms: dict[int, Confirm] = {}
        self.waking: set[int] = set()  # channels whose confirms end the wait
        self.sinks: dict[str, Sink] = {}  # by consumer tag
        self.wake = wake  # ends the BlockingConnection's wait (a negative channel number)
        self.woken = False  # a sink or a waking confirm handler got something in this read
        self.hold = False  # the owner's choice: deliveries to sinks wait out the time limit
        self.on_held: Callable[[], None] | None = None  # after a read that sank held deliveries
        self.sank_held = False
        connection._on_data_available = self.data_received

    def on_confirm(self, channel_number: int, handler: Confirm, *, wake: bool = False) -> None:
        """Publisher confirms on this channel go to ``handler``, not through pika; with
        ``wake``, like deliveries to a sink, they end the connection's wait."""
        self.confirms[channel_number] = handler
        if wake:
            self.waking.add(channel_number)

    def data_received(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        size = len(buffer)
        at = 0
        try:
            while size - at >= 8:
                kind, number, length = HEAD.unpack_from(buffer, at)
                end = at + length + 8
                if end > size:
                    break
                taken = self._method(buffer, at, end, number) if kind == METHOD else ()
                if taken is None:
                    break  # the rest of this message has not arrived yet
                if taken:
                    at, (call, *args) = taken
                    call(*args)
                    continue
                used, decoded = pika_frame.decode_frame(buffer[at:end])
                if decoded is None or used != end - at:
                    raise InvalidFrameError(f"cannot decode a frame of {end - at} bytes")
                at = end
                self.connection.bytes_received += used
                self.connection._process_frame(decoded)
        finally:
            self.pending = buffer[at:]
            if self.woken and self.wake is not None:
                self.woken = False
                self.wake(-1)  # process_data_events returns: the owner has work
            if self.sank_held and self.on_held is not None:
                self.sank_held = False
                self.on_held()  # the owner's work that needs no I/O, done inside the wait

    def _method(self, buffer: bytes, at: int, end: int, number: int) -> Taken | None:
        """A method frame this reader handles itself: see ``_deliver`` and ``_confirm``."""
        method = buffer[at + 7 : at + 11]
        if method == DELIVER:
            return self._deliver(buffer, at, end, number)
        if method in (ACK, NACK):
            return self._confirm(buffer, at, end, number, method == ACK)
        return ()

    def _confirm(self, buffer: bytes, at: int, end: int, number: int, acked: bool) -> Taken:
        handler = self.confirms.get(number)
        if handler is None or buffer[end - 1] != FRAME_END_BYTE:
            return ()
        tag, bits = TAG_BITS.unpack_from(buffer, at + 11)
        self.connection.bytes_received += end - at
        self.connection.frames_received += 1
        self.woken = self.woken or number in self.waking
        return end, (handler, tag, bool(bits & 1), acked)

    def _deliver(self, buffer: bytes, at: int, end: int, number: int) -> Taken | None:
        """The delivery whose method frame is ``buffer[at:end]``.

        Returns where the next frame starts and the consumer's call, None if
        the message is incomplete, or () to let pika take this frame (a
        consumer or channel it would treat specially, or a layout this reader
        does not expect).
        """
        channel = self.channels.get(number)
        if channel is None or not channel.is_open or buffer[end - 1] != FRAME_END_BYTE:
            return ()
        p = at + 11
        n = buffer[p]
        consumer_tag = buffer[p + 1 : p + 1 + n].decode()
        callback = channel._consumers.get(consumer_tag)
        if callback is None or consumer_tag in channel._cancelled:
            return ()
        p += 1 + n
        delivery_tag, bits = TAG_BITS.unpack_from(buffer, p)
        names = p + 9  # exchange and routing key: read only for a pika callback

        header = _frame(buffer, end, HEADER, number)
        if not header:
            return header  # incomplete (None) or not a header (): pika's then
        start, at_body = header
        _class, _weight, body_size = CONTENT.unpack_from(buffer, start)
        raw_properties = buffer[start + 12 : at_body - 1]
        chunks = []
        got, frames = 0, 2
        while got < body_size:
            frame = _frame(buffer, at_body, BODY, number)
            if not frame:
                return frame
            start, at_body = frame
            chunks.append(buffer[start : at_body - 1])
            got += at_body - 1 - start
            frames += 1
        if got != body_size:
            return ()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.connection.bytes_received += at_body - at
        self.connection.frames_received += frames
        sink = self.sinks.get(consumer_tag)
        if sink is not None:
            self.woken = self.woken or not self.hold
            self.sank_held = self.sank_held or self.hold
            return at_body, (sink, delivery_tag, body, self._user(raw_properties))
        n = buffer[names]
        exchange = buffer[names + 1 : names + 1 + n].decode()
        names += 1 + n
        routing_key = buffer[names + 1 : names + 1 + buffer[names]].decode()
        method = Basic.Deliver(consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key)
        return at_body, (callback, channel, method, self._properties(raw_properties), body)

    def _user(self, raw: bytes) -> str | None:
        """``user_id(raw)``, remembered for the properties a sender sends again and again."""
        try:
            return self.users[raw]
        except KeyError:
            found = self.users[raw] = user_id(raw)
            if len(self.users) > PROPERTY_CACHE:
                self.users.clear()
            return found

    def _properties(self, raw: bytes) -> BasicProperties:
        """Decoded properties, shared between deliveries whose encoded properties match."""
        known = self.properties.get(raw)
        if known is None:
            known = BasicProperties()
            known.decode(raw)
            if len(self.properties) < PROPERTY_CACHE:
                self.properties[raw] = known
        return known


def reader_of(channel: BlockingChannel) -> DeliveryReader | None:
    """The ``DeliveryReader`` that reads this channel's connection, if one does."""
    read = getattr(channel._impl.connection, "_on_data_available", None)
    reader = getattr(read, "__self__", None)
    return reader if isinstance(reader, DeliveryReader) else None


def read_deliveries(connection: pika.BlockingConnection) -> DeliveryReader | None:
    """Install a ``DeliveryReader`` on an open connection (None if pika's layout changed)."""
    impl = connection._impl
    if not all(hasattr(impl, name) for name in ("_channels", "_process_frame", "bytes_received")):
        return None
    if getattr(impl, "_frame_buffer", b""):
        return None  # pika holds part of a frame already: leave this connection to it
    return DeliveryReader(impl, getattr(connection, "_request_channel_dispatch", None))


def consume(channel: BlockingChannel, queue: str, sink: Sink) -> str:
    """``basic_consume`` whose deliveries reach ``sink(delivery_tag, body, user_id)``, in
    the order of their tags.

    With a ``DeliveryReader`` on the connection the sink is called inside the
    read, with no pika objects made per message, so it must only buffer; the
    connection's ``process_data_events`` returns after that read. The sink is
    registered before the consumer exists: deliveries that come in the same read
    as ``Consume-Ok`` would otherwise wait in pika's queue of channel events and
    reach the sink after later ones. Without a reader, pika's callback calls
    the sink between I/O steps. Returns the consumer tag.
    """
    reader = reader_of(channel)
    tag = f"ctag{channel.channel_number}.{uuid.uuid4().hex}"
    if reader is not None:
        reader.sinks[tag] = sink
    try:
        channel.basic_consume(
            queue, lambda _c, m, p, body: sink(m.delivery_tag, body, p.user_id), consumer_tag=tag
        )
    except BaseException:
        if reader is not None:
            reader.sinks.pop(tag, None)
        raise
    return tag


class AckWindow:
    """The deliveries of one channel that a ``multiple`` ack may cover.

    A channel numbers its deliveries 1, 2, 3... with no gaps (the broker counts
    each delivery; these channels have one consumer and no ``basic_get``).
    ``settle(tag)`` notes that one delivery was recorded or dead-lettered;
    ``due()`` is the highest tag T such that every delivery up to T is settled,
    once each time it advances (0 when it did not): a ``multiple`` ack of T then
    covers settled deliveries only, in whatever order they were settled.
    """

    def __init__(self) -> None:
        self.settled = 0  # every tag up to this one is settled
        self.acked = 0
        self.ahead: set[int] = set()  # settled tags above ``settled`` + 1

    def settle(self, tag: int) -> None:
        if tag == self.settled + 1:
            self.settled = tag
            while self.ahead and self.settled + 1 in self.ahead:
                self.settled += 1
                self.ahead.discard(self.settled)
        elif tag > self.settled:
            self.ahead.add(tag)

    def due(self) -> int:
        if self.settled <= self.acked:
            return 0
        self.acked = self.settled
        return self.acked
