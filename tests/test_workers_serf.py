"""Push workers advertise themselves through real Serf agents and leave when drained."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.workers_support import (  # noqa: F401
    Client,
    SerfAgent,
    client,
    observer,
    spawn,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.serf]


def test_worker_gossips_its_tags_and_leaves_after_draining(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    observer: SerfAgent,  # noqa: F811
) -> None:
    worker = spawn(
        "--name", "w1", "--caps", "sleep", "--slots", "3", "--attr", "site=iu",
        "--serf-join", observer.bind, "--grace", "20",
    )  # fmt: skip
    member = wait_for(lambda: observer.members().get("w1"), what="w1 in the observer's view")
    assert member["status"] == "alive"
    assert member["tags"] == {
        "role": "worker",
        "q": "mm.worker.w1",
        "caps": "sleep",
        "slots": "3",
        "site": "iu",
    }
    client.dispatch("w1", "last-words", {"seconds": 1.0})
    client.running("last-words")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert client.final("last-words", timeout=1).state == "succeeded"
    wait_for(
        lambda: observer.members()["w1"]["status"] == "left", what="w1 to leave the gossip pool"
    )


def test_worker_tags_an_existing_agent_over_rpc(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    sidecar = SerfAgent("w2", tmp_path / "w2-agent.log")
    try:
        worker = spawn(
            "--name", "w2", "--caps", "sleep", "--attr", "gpu=1", "--serf-rpc", sidecar.rpc
        )
        tags = wait_for(
            lambda: sidecar.members()["w2"]["tags"].get("role") and sidecar.members()["w2"]["tags"],
            what="the worker's tags on its agent",
        )
        assert tags["q"] == "mm.worker.w2" and tags["gpu"] == "1" and tags["caps"] == "sleep"
        client.dispatch("w2", "t", {"seconds": 0})
        assert client.final("t").state == "succeeded"
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        assert "role" not in sidecar.members()["w2"]["tags"]
        assert sidecar.process.poll() is None  # not the worker's agent to stop
    finally:
        sidecar.stop()


def test_unreachable_agent_is_a_clear_start_up_error(
    spawn,  # noqa: F811
) -> None:
    from workers.presence import free_port

    worker = spawn(
        "--name", "w3", "--caps", "sleep", "--serf-rpc", f"127.0.0.1:{free_port()}", ready=False
    )
    assert worker.wait() == 2
    text = worker.text()
    assert "Traceback" not in text
    assert "w3: cannot reach the Serf agent at 127.0.0.1:" in text
