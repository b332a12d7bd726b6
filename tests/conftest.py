"""Shared fixtures: a fresh RabbitMQ vhost per test on the real local broker."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

USER = "matchmaker"
PASSWORD = "matchmaker"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_url() -> Iterator[str]:
    """An AMQP URL for a vhost made for this test alone, deleted afterwards."""
    vhost = f"mm-test-{uuid.uuid4().hex[:10]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"the local RabbitMQ is not running (start it with scripts/broker.sh): {error}")
    _rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    yield f"amqp://{USER}:{PASSWORD}@127.0.0.1:5672/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)
