"""Queue declarations on the real broker: the configured type for new queues, existing ones
used as they are."""

from __future__ import annotations

import pika.exceptions
import pytest

from matchmaker.wire import broker


def test_new_queues_get_the_configured_type_and_existing_ones_are_used_as_they_are(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = broker.connect(broker_url)
    try:
        channel = connection.channel()
        channel.queue_declare(broker.REQUESTS, durable=True, arguments={"x-queue-type": "quorum"})
        monkeypatch.setattr(broker, "QUEUE_TYPE", "classic")
        broker.declare_core(channel)  # mm.requests declared classic would be refused (406)
        channel.confirm_delivery()
        channel.basic_publish(*broker.route(broker.REQUESTS), b"kept", broker.PERSISTENT)
        assert channel.queue_declare(broker.REQUESTS, passive=True).method.message_count == 1
        other = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            other.queue_declare(broker.RESULTS, durable=True, arguments={"x-queue-type": "quorum"})
        assert refused.value.reply_code == 406  # mm.results was made classic
    finally:
        connection.close()


def test_an_unknown_queue_type_is_one_clear_error(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = broker.connect(broker_url)
    try:
        monkeypatch.setattr(broker, "QUEUE_TYPE", "clasic")
        with pytest.raises(broker.BrokerError, match="MM_QUEUE_TYPE must be classic or quorum"):
            broker.declare_core(connection.channel())
    finally:
        connection.close()
