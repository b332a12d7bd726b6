"""Every private pika name matchmaker touches, and the pika versions they are known to hold in.

``frames`` writes frames to a connection's output and reads its input itself (``codec``),
which needs pika's internals: the output function, the input callback it replaces, the
frame processor it hands other frames to, the channel table and each channel's consumers.
They are reached only through the functions below, and ``PRIVATE`` lists them, so that a
pika release that renames one fails ``tests/integration/test_pika_shim.py`` rather than delivery.

``check()`` compares the installed pika with ``TESTED`` (the range pyproject pins); outside
it, ``broker.connect`` refuses with one sentence saying what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pika.frame
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.channel import Channel
from pika.connection import Connection

TESTED = ((1, 4), (1, 5))  # from 1.4 up to, not including, 1.5
REQUIREMENT = "pika>=1.4,<1.5"

# class -> the private names used on its instances (attributes and methods)
PRIVATE: dict[type, tuple[str, ...]] = {
    BlockingConnection: ("_impl", "_request_channel_dispatch"),
    BlockingChannel: ("_impl",),
    Connection: (
        "_adapter_emit_data",
        "_on_data_available",
        "_process_frame",
        "_channels",
        "_frame_buffer",
        "_body_max_length",
    ),
    Channel: ("_consumers", "_cancelled"),
}


def version() -> tuple[int, ...]:
    return tuple(int(part) for part in pika.__version__.split(".")[:2] if part.isdigit())


def check() -> str | None:
    """None if the installed pika is in the tested range, else what is wrong and what to do."""
    low, high = TESTED
    if low <= version() < high:
        return None
    return (
        f"pika {pika.__version__} is installed, but matchmaker's wire layer reads pika's "
        f"internals and is tested with {REQUIREMENT} only: pip install '{REQUIREMENT}'"
    )


def connection_of(blocking: BlockingConnection) -> Connection:
    """The asynchronous connection under a ``BlockingConnection``."""
    return blocking._impl


def channel_of(blocking: BlockingChannel) -> Channel:
    """The asynchronous channel under a ``BlockingChannel``."""
    return blocking._impl


def waker(blocking: BlockingConnection) -> Callable[[int], None] | None:
    """What ends a ``BlockingConnection``'s wait (called with a negative channel number)."""
    return getattr(blocking, "_request_channel_dispatch", None)


def emitter(connection: Connection) -> Callable[[bytes], None]:
    """Queues bytes on the connection's output, sent at its next I/O step."""
    return connection._adapter_emit_data


def body_max(connection: Connection) -> int:
    """The largest body frame payload the connection negotiated."""
    return int(connection._body_max_length)


def channels(connection: Connection) -> dict[int, Channel]:
    """The connection's open channels by number (pika's own table, kept current by pika)."""
    return connection._channels


def readable(connection: Connection) -> bool:
    """Whether the connection has the internals a reader needs, and holds no partial frame
    (which a reader taking over would lose)."""
    needed = ("_channels", "_process_frame", "_on_data_available", "bytes_received")
    if not all(hasattr(connection, name) for name in needed):
        return False
    return not getattr(connection, "_frame_buffer", b"")


def take_input(connection: Connection, read: Callable[[bytes], None]) -> None:
    """Every byte the connection receives goes to ``read`` instead of pika's frame parser."""
    connection._on_data_available = read


def input_reader(connection: Connection) -> Any:
    """What reads the connection's input now (a bound method: its ``__self__`` is the owner)."""
    return getattr(connection, "_on_data_available", None)


def process(connection: Connection, data: bytes) -> int:
    """Decode one whole frame with pika and let pika act on it; the bytes it used."""
    used, decoded = pika.frame.decode_frame(data)
    if decoded is None or used != len(data):
        raise pika.exceptions.InvalidFrameError(f"cannot decode a frame of {len(data)} bytes")
    connection.bytes_received += used
    connection._process_frame(decoded)
    return used


def consumer(channel: Channel, tag: str) -> Callable[..., None] | None:
    """The live consumer callback registered under ``tag``, or None (unknown or cancelled)."""
    callback = channel._consumers.get(tag)
    return None if callback is None or tag in channel._cancelled else callback


def confirm_delivery(blocking: BlockingChannel, on_frame: Callable[[Any], None]) -> None:
    """``Confirm.Select`` with an asynchronous callback for the answers (pika's
    ``BlockingChannel.confirm_delivery`` makes every publish wait for its own)."""
    channel_of(blocking).confirm_delivery(on_frame)
