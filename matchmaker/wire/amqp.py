"""pika's public names, as the rest of the code sees them.

Everything outside ``matchmaker.wire`` that needs a connection, a channel, message
properties or a broker error type takes it from here, so that pika is imported in one
package only and a change of client library is a change of this package. These are pika's
public API (no private attribute: those live in ``pika_shim``).
"""

from __future__ import annotations

from typing import TypeAlias

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

Connection: TypeAlias = pika.BlockingConnection
Channel: TypeAlias = BlockingChannel
Properties: TypeAlias = pika.BasicProperties
Deliver: TypeAlias = pika.spec.Basic.Deliver
Ack: TypeAlias = pika.spec.Basic.Ack
GetOk: TypeAlias = pika.spec.Basic.GetOk
CancelOk: TypeAlias = pika.spec.Basic.CancelOk
DeliveryMode = pika.DeliveryMode
URLParameters = pika.URLParameters

AMQPError = pika.exceptions.AMQPError
AMQPConnectionError = pika.exceptions.AMQPConnectionError
StreamLostError = pika.exceptions.StreamLostError
ConnectionClosed = pika.exceptions.ConnectionClosed
ChannelClosed = pika.exceptions.ChannelClosed
ChannelClosedByBroker = pika.exceptions.ChannelClosedByBroker
ChannelWrongStateError = pika.exceptions.ChannelWrongStateError
NackError = pika.exceptions.NackError
UnroutableError = pika.exceptions.UnroutableError

LOG = "pika"  # the client library's logger


def plain(url: str) -> Connection:
    """A blocking connection with pika's defaults and its own reader (tests, tools)."""
    return pika.BlockingConnection(pika.URLParameters(url))
