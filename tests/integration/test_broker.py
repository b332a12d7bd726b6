"""Queue declarations on the real broker: the configured type for new queues, existing ones
used as they are."""

from __future__ import annotations

import pytest

from matchmaker.config import ConfigError, load
from matchmaker.wire import amqp, broker


def test_new_queues_get_the_configured_type_and_existing_ones_are_used_as_they_are(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = broker.connect(broker_url)
    try:
        channel = connection.channel()
        channel.queue_declare(broker.REQUESTS, durable=True, arguments={"x-queue-type": "quorum"})
        monkeypatch.setenv("MM_QUEUE_TYPE", "quorum")  # the configured type wins over the env
        broker.declare_core(channel, "classic")  # mm.requests declared classic: refused (406)
        channel.confirm_delivery()
        channel.basic_publish(*broker.route(broker.REQUESTS), b"kept", broker.PERSISTENT)
        assert channel.queue_declare(broker.REQUESTS, passive=True).method.message_count == 1
        other = connection.channel()
        with pytest.raises(amqp.ChannelClosedByBroker) as refused:
            other.queue_declare(broker.RESULTS, durable=True, arguments={"x-queue-type": "quorum"})
        assert refused.value.reply_code == 406  # mm.results was made classic
    finally:
        connection.close()


def test_an_unknown_queue_type_is_one_clear_error(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = broker.connect(broker_url)
    try:
        monkeypatch.setenv("MM_QUEUE_TYPE", "clasic")
        with pytest.raises(broker.BrokerError, match="must be classic or quorum, not 'clasic'"):
            broker.declare_core(connection.channel())
    finally:
        connection.close()


def test_mm_queue_type_sets_the_type_of_queues_a_process_declares(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = broker.connect(broker_url)
    name = "wire-quorum-probe"
    try:
        monkeypatch.setenv("MM_QUEUE_TYPE", "quorum")
        broker.declare_worker(connection.channel(), name, bind=False)
        other = connection.channel()
        with pytest.raises(amqp.ChannelClosedByBroker) as refused:
            other.queue_declare(broker.worker_queue(name), durable=True)  # classic: refused
        assert refused.value.reply_code == 406
    finally:
        cleanup = connection.channel()
        for queue in (broker.worker_queue(name), broker.control_queue(name)):
            cleanup.queue_delete(queue)
        connection.close()


def test_the_scheduler_config_reads_queue_type_from_mm_queue_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_QUEUE_TYPE", "quorum")
    assert load().queue_type == "quorum"
    monkeypatch.setenv("MM_QUEUE_TYPE", "lazy")
    with pytest.raises(ConfigError, match="queue_type must be classic or quorum"):
        load().check()
