"""Push workers advertise themselves through real Serf agents and leave when drained."""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from membership.agent import SerfAgent, free_port
from membership.errors import AgentError, SerfAuthError
from membership.keys import keygen
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
    encrypt_file, auth_file = keygen(tmp_path / "keys")
    encrypt, auth = (p.read_text().strip() for p in (encrypt_file, auth_file))
    watcher = Observer("watcher", tmp_path / "watcher", encrypt_key=encrypt, rpc_auth=auth)
    try:
        rpc = f"127.0.0.1:{free_port()}"
        worker = spawn(
            "--name", "w4", "--caps", "sleep", "--serf-join", watcher.bind,
            "--serf-encrypt-file", str(encrypt_file), "--serf-auth-file", str(auth_file),
            "--serf-rpc-bind", rpc,
        )  # fmt: skip
        wait_for(lambda: "w4" in watcher.members(), what="w4 to join the encrypted pool")
        assert encrypt not in " ".join(worker.process.args)  # no key in ps
        with SerfRPC(rpc, auth) as own:  # the worker's own agent wants the auth key
            assert tags_of(own, "w4")["q"] == "mm.worker.w4"
            assert own.stats()["serf"]["encrypted"] == "true"
        with pytest.raises(SerfAuthError), SerfRPC(rpc) as anonymous:
            anonymous.members()
        outsider = SerfAgent("outsider", join=[watcher.bind], workdir=tmp_path / "o", insecure=True)
        with pytest.raises(AgentError, match="exited with code"):
            outsider.start()  # an agent without the key cannot join the pool
        assert "outsider" not in watcher.members()
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        wait_for(
            lambda: watcher.members()["w4"]["status"] == "failed",
            timeout=20,
            what="the agent of a killed worker to be seen failed",
        )
    finally:
        watcher.stop()


def test_a_worker_started_before_any_peer_joins_once_one_answers(
    spawn,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A host that boots its workers first: no exit, a warning, and a join later."""
    port = free_port()
    worker = spawn("--name", "early", "--caps", "sleep", "--serf-join", f"127.0.0.1:{port}")
    wait_for(lambda: "joined no peer yet" in worker.text(), what="the worker to say it is alone")
    peer = SerfAgent(
        "late-peer", bind_port=port, workdir=tmp_path / "peer", insecure=True, log_level="warn"
    )
    try:
        peer.start()

        def status() -> str | None:
            with peer.rpc() as rpc:
                return next((m.status for m in rpc.members() if m.name == "early"), None)

        wait_for(lambda: status() == "alive", timeout=30, what="the worker to join the late peer")
        assert worker.process.poll() is None
        assert "serf agent joined node=early" in worker.text()
    finally:
        peer.kill()


def test_a_later_join_waits_for_no_answer_and_refuses_another_key(tmp_path: Path) -> None:
    alone = SerfAgent(
        "alone", join=[f"127.0.0.1:{free_port()}"], join_later=True,
        workdir=tmp_path / "alone", insecure=True,
    )  # fmt: skip
    try:
        alone.start()
        assert alone.running and alone.unjoined and "dial tcp" in alone.unjoined
    finally:
        alone.kill()
    encrypt_file, auth_file = keygen(tmp_path / "keys")
    encrypt, auth = (p.read_text().strip() for p in (encrypt_file, auth_file))
    watcher = Observer("watcher", tmp_path / "watcher", encrypt_key=encrypt, rpc_auth=auth)
    outsider = SerfAgent(
        "outsider", join=[watcher.bind], join_later=True, workdir=tmp_path / "o", insecure=True
    )
    try:
        with pytest.raises(AgentError, match=r"could not join: Failed to join .*encrypted"):
            outsider.start()  # an answer that refuses is not retried
        assert not outsider.running
        assert "outsider" not in watcher.members()
    finally:
        watcher.stop()


def test_a_worker_without_serf_keys_refuses_to_start(spawn, tmp_path: Path) -> None:  # noqa: F811
    worker = spawn(
        "--name", "w5", "--caps", "sleep", "--serf-join", "127.0.0.1:1",
        ready=False, insecure=False,
    )  # fmt: skip
    assert worker.wait() == 2
    text = worker.text()
    assert "Traceback" not in text
    assert "python -m membership keygen --out DIR" in text and "--insecure" in text
    assert not (tmp_path / "sandbox" / ".serf-agents" / "w5").exists()  # refused before starting


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the worker's Serf agent)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_worker_killed_outright_and_restarted_the_same_way_rejoins_and_stays(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    observer: Observer,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = f"phoenix-{os.getpid()}"
    args = ("--name", name, "--caps", "sleep", "--slots", "2", "--serf-join", observer.bind)
    first = spawn(*args, "--attr", "life=1")
    wait_for(lambda: observer.members().get(name, {}).get("status") == "alive", what="first life")
    agents = wait_for(lambda: _children(first.process.pid), what="the worker's own Serf agent")
    for pid in [first.process.pid, *agents]:
        os.kill(pid, signal.SIGKILL)
    first.process.wait()

    second = spawn(*args, "--attr", "life=2")

    def back() -> bool:
        member = observer.members().get(name, {})
        return member.get("status") == "alive" and member["tags"].get("life") == "2"

    wait_for(back, timeout=20, what="the restarted worker alive with its new tags")
    # Serf settles a name conflict about two seconds after a join; a task that outlasts
    # that window must reach the worker, and the worker must still be seen afterwards.
    client.dispatch(name, "after-restart", {"seconds": 4.0})
    assert client.final("after-restart", timeout=30).state == "succeeded"
    assert back(), "the restarted worker dropped out of the pool"
    assert second.process.poll() is None
    assert "serf agent lost" not in second.text()
    serf_dirs = tmp_path / "sandbox" / ".serf-agents"
    assert [p.name for p in serf_dirs.iterdir()] == [name]  # one state dir, reused
    assert not list(Path(tempfile.gettempdir()).glob(f"serf-{name}-*"))


def test_a_second_worker_with_the_same_name_and_sandbox_is_refused(
    spawn,  # noqa: F811
    observer: Observer,  # noqa: F811
) -> None:
    spawn("--name", "twin", "--caps", "sleep", "--serf-join", observer.bind)
    other = spawn("--name", "twin", "--caps", "sleep", "--serf-join", observer.bind, ready=False)
    assert other.wait() == 2
    assert "another worker named 'twin' is running with this sandbox root" in other.text()
    assert "Traceback" not in other.text()


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


def test_a_worker_restarts_its_agent_when_the_agent_alone_dies(
    spawn,  # noqa: F811
    observer: Observer,  # noqa: F811
) -> None:
    worker = spawn("--name", "lazarus", "--caps", "sleep", "--serf-join", observer.bind)
    wait_for(lambda: observer.members().get("lazarus", {}).get("status") == "alive", what="up")
    (agent,) = wait_for(lambda: _children(worker.process.pid), what="the worker's agent")
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: "serf agent restarted node=lazarus" in worker.text(), what="the restart")
    replaced = wait_for(lambda: [p for p in _children(worker.process.pid) if p != agent])
    assert len(replaced) == 1 and worker.process.poll() is None
    wait_for(
        lambda: observer.members()["lazarus"]["status"] == "alive", what="alive again in the pool"
    )


def test_a_worker_whose_name_is_alive_elsewhere_stops_instead_of_hiding(
    spawn,  # noqa: F811
    observer: Observer,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "dup", "--caps", "sleep", "--serf-join", observer.bind)
    wait_for(lambda: observer.members().get("dup", {}).get("status") == "alive", what="first dup")
    other = spawn(
        "--name", "dup", "--caps", "sleep", "--serf-join", observer.bind,
        "--sandbox", str(tmp_path / "elsewhere"), ready=False,
    )  # fmt: skip
    assert other.wait(timeout=60) == 2
    text = other.text()
    assert "another Serf member named 'dup' is alive at another address" in text
    assert "Traceback" not in text


def test_after_a_graceful_leave_a_worker_may_come_back_on_another_port(
    spawn,  # noqa: F811
    observer: Observer,  # noqa: F811
    tmp_path: Path,
) -> None:
    args = ("--name", "returner", "--caps", "sleep", "--serf-join", observer.bind)
    first = spawn(*args)
    wait_for(lambda: observer.members().get("returner", {}).get("status") == "alive", what="up")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    wait_for(lambda: observer.members()["returner"]["status"] == "left", what="the leave")
    config = tmp_path / "sandbox" / ".serf-agents" / "returner" / "returner.json"
    old_port = int(json.loads(config.read_text())["bind"].rsplit(":", 1)[1])
    with socket.socket() as squatter:  # someone else took the old gossip port meanwhile
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        spawn(*args)
        wait_for(
            lambda: observer.members()["returner"]["status"] == "alive", what="back in the pool"
        )
    assert int(json.loads(config.read_text())["bind"].rsplit(":", 1)[1]) != old_port
