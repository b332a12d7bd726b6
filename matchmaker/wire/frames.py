"""AMQP 0-9-1 frames written and read straight, beside pika's own frame layer.

The frames are built and parsed by ``codec`` (bytes only); pika's internals that this
needs (its output, its input callback, its channels' consumers) are reached through
``pika_shim``.

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
  sink's deliveries always do). Every other frame, or a delivery it has any doubt
  about, goes through pika's own decoder in the order it arrived.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from matchmaker.wire import amqp, codec, pika_shim

Publish = Callable[[str, str, bytes, amqp.Properties], None]
Taken = tuple[()] | tuple[int, tuple[Any, ...]]  # () = pika's; (next frame, consumer call)
Confirm = Callable[[int, bool, bool], None]  # (delivery tag, multiple, acked)
Sink = Callable[[int, bytes, str | None], None]  # (delivery tag, body, user id); inside the read
PROPERTY_CACHE = 64  # distinct properties objects kept encoded
ROUTE_CACHE = 10_000  # (exchange, routing key) method frames kept


class FramePublisher:
    """``publish(exchange, routing_key, body, properties)`` for one open pika channel."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # pika.channel.Channel (a BlockingChannel's ``_impl``)
        self.connection = channel.connection
        self.number: int = channel.channel_number
        self.body_max: int = pika_shim.body_max(self.connection)
        self.emit: Callable[[bytes], None] = pika_shim.emitter(self.connection)
        self.encoded: dict[int, tuple[amqp.Properties, bytes]] = {}
        self.routes: dict[tuple[str, str], bytes] = {}

    def _properties(self, properties: amqp.Properties) -> bytes:
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
            frame = codec.publish_method(self.number, exchange, routing_key)
            if len(self.routes) < ROUTE_CACHE:
                self.routes[(exchange, routing_key)] = frame
        return frame

    def __call__(
        self, exchange: str, routing_key: str, body: bytes, properties: amqp.Properties
    ) -> None:
        if not self.channel.is_open:  # pika raises the precise ChannelWrongStateError
            self.channel.basic_publish(exchange, routing_key, body, properties)
            return
        raw = self._properties(properties)
        data = self._method(exchange, routing_key) + codec.content(
            self.number, body, raw, self.body_max
        )
        self.connection.bytes_sent += len(data)
        self.connection.frames_sent += 2 + codec.body_frames(len(body), self.body_max)
        self.emit(data)


class FrameAcker:
    """``ack(delivery_tag, multiple)`` for one open pika channel: ``Basic.Ack`` (60.80:
    delivery tag, bit ``multiple``) as one frame on pika's outbound buffer."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # pika.channel.Channel (a BlockingChannel's ``_impl``)
        self.connection = channel.connection
        self.emit: Callable[[bytes], None] = pika_shim.emitter(self.connection)
        self.head = codec.ack_head(channel.channel_number)

    def __call__(self, delivery_tag: int, multiple: bool = False) -> None:
        if not self.channel.is_open:  # pika raises the precise ChannelWrongStateError
            self.channel.basic_ack(delivery_tag, multiple)
            return
        data = self.head + codec.TAG_BITS.pack(delivery_tag, multiple) + codec.FRAME_END
        self.connection.bytes_sent += len(data)
        self.connection.frames_sent += 1
        self.emit(data)


def queued_publish(channel: amqp.Channel) -> Publish:
    """A publish that only queues the frames; the next flush (``tx_commit``,
    ``process_data_events``) sends them.

    BlockingChannel.basic_publish writes to the socket on every call, which
    costs more than the rest of a dispatch together; a batch inside a
    transaction, or under asynchronous confirms, loses nothing by waiting for
    the next flush. Falls back to pika's own calls if its layout changes.
    """
    try:
        return FramePublisher(pika_shim.channel_of(channel))
    except AttributeError:  # pika's layout changed (see ``pika_shim.check``): its own call
        return channel.basic_publish


def queued_ack(channel: amqp.Channel) -> Callable[[int, bool], None]:
    """``basic_ack(tag, multiple)`` that only queues the frame, like ``queued_publish``."""
    try:
        return FrameAcker(pika_shim.channel_of(channel))
    except AttributeError:  # pika's layout changed (see ``pika_shim.check``): its own call
        return channel.basic_ack


def user_id(raw: bytes) -> str | None:
    """The ``user-id`` property of encoded Basic properties, or None if it is not set
    (``codec.user_id``); pika decodes what that does not expect."""
    try:
        return codec.user_id(raw)
    except ValueError:
        properties = amqp.Properties()
        try:
            properties.decode(raw)
        except Exception:  # RabbitMQ sent it: the broker's properties are not in doubt
            return None
        found = properties.user_id
        return found if isinstance(found, str) else None


class DeliveryReader:
    """Takes a pika connection's input: deliveries and confirms parsed here, the rest by pika."""

    def __init__(self, connection: Any, wake: Callable[[int], None] | None = None) -> None:
        self.connection = connection  # pika.connection.Connection (a BlockingConnection's _impl)
        self.channels: dict[int, Any] = pika_shim.channels(connection)
        self.pending = b""
        self.properties: dict[bytes, amqp.Properties] = {}
        self.users: dict[bytes, str | None] = {}  # user-id by encoded properties
        self.confirms: dict[int, Confirm] = {}
        self.waking: set[int] = set()  # channels whose confirms end the wait
        self.sinks: dict[str, Sink] = {}  # by consumer tag
        self.wake = wake  # ends the BlockingConnection's wait (a negative channel number)
        self.wait_over = False  # this read gave a sink, or a waking confirm handler, something
        pika_shim.take_input(connection, self.data_received)

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
            while size - at >= codec.FRAMING:
                kind, number, length = codec.HEAD.unpack_from(buffer, at)
                end = at + length + codec.FRAMING
                if end > size:
                    break
                taken = self._method(buffer, at, end, number) if kind == codec.METHOD else ()
                if taken is None:
                    break  # the rest of this message has not arrived yet
                if taken:
                    at, (call, *args) = taken
                    call(*args)
                    continue
                pika_shim.process(self.connection, buffer[at:end])
                at = end
        finally:
            self.pending = buffer[at:]
            if self.wait_over and self.wake is not None:
                self.wait_over = False
                self.wake(-1)  # process_data_events returns: the owner has work

    def _method(self, buffer: bytes, at: int, end: int, number: int) -> Taken | None:
        """A method frame this reader handles itself: see ``_deliver`` and ``_confirm``."""
        method = codec.method_id(buffer, at)
        if method == codec.DELIVER:
            return self._deliver(buffer, at, end, number)
        if method in (codec.ACK, codec.NACK):
            return self._confirm(buffer, at, end, number, method == codec.ACK)
        return ()

    def _confirm(self, buffer: bytes, at: int, end: int, number: int, acked: bool) -> Taken:
        handler = self.confirms.get(number)
        if handler is None or buffer[end - 1] != codec.FRAME_END_BYTE:
            return ()
        tag, multiple = codec.confirm(buffer, at)
        self.connection.bytes_received += end - at
        self.connection.frames_received += 1
        self.wait_over = self.wait_over or number in self.waking
        return end, (handler, tag, multiple, acked)

    def _deliver(self, buffer: bytes, at: int, end: int, number: int) -> Taken | None:
        """The delivery whose method frame is ``buffer[at:end]``.

        Returns where the next frame starts and the consumer's call, None if
        the message is incomplete, or () to let pika take this frame (a
        consumer or channel it would treat specially, or a layout this reader
        does not expect).
        """
        channel = self.channels.get(number)
        if channel is None or not channel.is_open or buffer[end - 1] != codec.FRAME_END_BYTE:
            return ()
        found = codec.delivery(buffer, at, end, number)
        if not found:
            return found  # incomplete (None) or not followed by its content (): pika's then
        consumer_tag, delivery_tag, redelivered, names, raw_properties, body, after, frames = found
        callback = pika_shim.consumer(channel, consumer_tag)
        if callback is None:
            return ()
        self.connection.bytes_received += after - at
        self.connection.frames_received += frames
        sink = self.sinks.get(consumer_tag)
        if sink is not None:
            self.wait_over = True
            return after, (sink, delivery_tag, body, self._user(raw_properties))
        exchange, routing_key = codec.names(buffer, names)
        method = amqp.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
        return after, (callback, channel, method, self._properties(raw_properties), body)

    def _user(self, raw: bytes) -> str | None:
        """``user_id(raw)``, remembered for the properties a sender sends again and again."""
        try:
            return self.users[raw]
        except KeyError:
            found = self.users[raw] = user_id(raw)
            if len(self.users) > PROPERTY_CACHE:
                self.users.clear()
            return found

    def _properties(self, raw: bytes) -> amqp.Properties:
        """Decoded properties, shared between deliveries whose encoded properties match."""
        known = self.properties.get(raw)
        if known is None:
            known = amqp.Properties()
            known.decode(raw)
            if len(self.properties) < PROPERTY_CACHE:
                self.properties[raw] = known
        return known


def reader_of(channel: amqp.Channel) -> DeliveryReader | None:
    """The ``DeliveryReader`` that reads this channel's connection, if one does."""
    read = pika_shim.input_reader(pika_shim.channel_of(channel).connection)
    reader = getattr(read, "__self__", None)
    return reader if isinstance(reader, DeliveryReader) else None


def read_deliveries(connection: amqp.Connection) -> DeliveryReader | None:
    """Install a ``DeliveryReader`` on an open connection (None if pika's layout changed,
    or pika holds part of a frame already: that connection is left to it)."""
    impl = pika_shim.connection_of(connection)
    if not pika_shim.readable(impl):
        return None
    return DeliveryReader(impl, pika_shim.waker(connection))


def consume(channel: amqp.Channel, queue: str, sink: Sink) -> str:
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
