"""Push workers advertise themselves through real Serf agents and leave when drained."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from membership.agent import free_port, generate_key
from membership.rpc import SerfRPC
from tests.workers_support import (  # noqa: F401
    Client,
    Observer,
    client,
    observer,
    spawn,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.serf]


def tags_of(rpc: SerfRPC, name: str) -> dict[str, str]:
    return next(m.tags for m in rpc.members() if m.name == name)


def test_worker_gossips_its_tags_and_leaves_after_draining(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    observer: Observer,  # noqa: F811
) -> None:
    rpc = f"127.0.0.1:{free_port()}"
    worker = spawn(
        "--name", "w1", "--caps", "sleep", "--slots", "3", "--attr", "site=iu",
        "--serf-join", observer.bind, "--serf-rpc-bind", rpc, "--grace", "20",
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
    client.dispatch("w1", "last-words", {"seconds": 3.0})
    client.running("last-words")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "advertised slots=0" in worker.text(), what="the drain to be advertised")
    with SerfRPC(rpc) as own:  # while it finishes its task, it asks for no more
        assert tags_of(own, "w1")["slots"] == "0"
    assert worker.wait() == 0
    assert client.final("last-words", timeout=1).state == "succeeded"
    wait_for(
        lambda: observer.members()["w1"]["status"] == "left", what="w1 to leave the gossip pool"
    )


def test_encrypted_pool_with_rpc_auth_and_an_agent_that_dies_with_its_worker(
    spawn,  # noqa: F811
    tmp_path: Path,
) -> None:
    key = generate_key()
    watcher = Observer("watcher", tmp_path / "watcher", encrypt_key=key)
    try:
        rpc = f"127.0.0.1:{free_port()}"
        worker = spawn(
            "--name", "w4", "--caps", "sleep", "--serf-join", watcher.bind,
            "--serf-encrypt", key, "--serf-auth", "s3cret", "--serf-rpc-bind", rpc,
        )  # fmt: skip
        wait_for(lambda: "w4" in watcher.members(), what="w4 to join the encrypted pool")
        with SerfRPC(rpc, "s3cret") as own:  # the worker's own agent wants the auth key
            assert tags_of(own, "w4")["q"] == "mm.worker.w4"
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        wait_for(
            lambda: watcher.members()["w4"]["status"] == "failed",
            timeout=20,
            what="the agent of a killed worker to be seen failed",
        )
    finally:
        watcher.stop()


def test_worker_tags_an_existing_agent_over_rpc(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    sidecar = Observer("w2", tmp_path / "w2")
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
        assert sidecar.agent.running  # not the worker's agent to stop
    finally:
        sidecar.stop()


def test_unreachable_agent_is_a_clear_start_up_error(spawn) -> None:  # noqa: F811
    rpc = f"127.0.0.1:{free_port()}"
    worker = spawn("--name", "w3", "--caps", "sleep", "--serf-rpc", rpc, ready=False)
    assert worker.wait() == 2
    text = worker.text()
    assert "Traceback" not in text
    assert f"w3: cannot reach the Serf agent at {rpc}" in text
