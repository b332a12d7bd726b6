"""The Serf RPC client and agent control, against real agents on loopback."""

from __future__ import annotations

import queue
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from membership.agent import SerfAgent, free_port, generate_key
from membership.errors import AgentError, SerfConnectionError, SerfError
from membership.rpc import SerfRPC, _Reply, parse_members, split_addr
from membership.tags import SERF_TAG_LIMIT, encoded_size
from tests.serf_fixtures import Cluster, cluster, make_cluster, wait_until  # noqa: F401

pytestmark = pytest.mark.serf


def test_members_filtered_stats_join_and_stream(cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.worker("w1")
    w2 = cluster.agent("w2", {"role": "worker", "caps": "sleep", "slots": "1"}, join=[])
    with cluster.scheduler.rpc() as rpc:
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        handle = rpc.stream("member-join,member-update", events.put)
        assert rpc.join([w2.bind_addr]) == 1
        joined = events.get(timeout=10)
        assert joined["Event"] == "member-join"
        names = {m.name for m in rpc.members()}
        assert names == {"sched", "w1", "w2"}
        workers = rpc.members_filtered({"role": "work.*"}, status="alive")
        assert {m.name for m in workers} == {"w1", "w2"}
        assert {m.addr for m in workers} == {"127.0.0.1"}
        assert {m.port for m in workers} == {w1.bind_port, w2.bind_port}
        assert rpc.members_filtered(name="w1")[0].tags["caps"] == "sleep"
        stats = rpc.stats()
        assert stats["agent"]["name"] == "sched" and stats["serf"]["members"] == "3"
        rpc.stop(handle)
        rpc.tags({"extra": "1"})  # would stream a member-update if the stream were still on
        assert rpc.stats()["tags"] == {"role": "scheduler", "extra": "1"}
        rpc.tags(delete=["extra"])
        assert rpc.stats()["tags"] == {"role": "scheduler"}
        with pytest.raises(SerfError, match="valid regular expression"):
            rpc.members_filtered({"role": "(unclosed"})


def test_query_and_respond(cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.worker("w1")
    responder = w1.rpc()
    queries: queue.Queue[dict[str, Any]] = queue.Queue()
    responder.stream("query", queries.put)

    def answer() -> None:  # callbacks run on the reader thread: respond from another one
        record = queries.get(timeout=10)
        assert record["Name"] == "load"
        responder.respond(int(record["ID"]), b"load=" + bytes(record["Payload"]))

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with cluster.scheduler.rpc() as rpc:
            result = rpc.query(
                "load", b"\x00\xff", filter_nodes=["w1"], request_ack=True, timeout=1
            )
    finally:
        thread.join()
        responder.close()
    assert result.responses == {"w1": b"load=\x00\xff"}
    assert result.acks == ["w1"]


def test_user_event_reaches_a_stream(cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.worker("w1")
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with w1.rpc() as listener, cluster.scheduler.rpc() as rpc:
        listener.stream("user:deploy", events.put)
        rpc.event("deploy", b"v2", coalesce=False)
        record = events.get(timeout=10)
    assert (record["Event"], record["Name"], record["Payload"]) == ("user", "deploy", b"v2")


def test_tag_limit_is_counted_like_the_agent(cluster: Cluster) -> None:  # noqa: F811
    with cluster.scheduler.rpc() as rpc:
        base = {"role": "scheduler"}
        pad = SERF_TAG_LIMIT - encoded_size({**base, "pad": ""}) - 2  # raw16 header: 3 bytes
        fits = {**base, "pad": "p" * pad}
        assert encoded_size(fits) == SERF_TAG_LIMIT
        rpc.tags(fits)
        too_big = {**base, "pad": "p" * (pad + 1)}
        with pytest.raises(SerfError, match="exceeds limit of 512 bytes"):
            rpc.tags(too_big)


def test_leave_over_rpc_ends_the_agent(cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.worker("w1")
    with w1.rpc() as rpc:
        rpc.leave()
    assert w1.process is not None and w1.process.wait(10) == 0
    with cluster.scheduler.rpc() as rpc:
        wait_until(
            lambda: {m.name: m.status for m in rpc.members()}.get("w1") == "left",
            what="w1 to be seen as left",
        )


def test_unreachable_agent_and_dropped_connection(cluster: Cluster) -> None:  # noqa: F811
    port = free_port()
    with pytest.raises(SerfConnectionError) as caught:
        SerfRPC(f"127.0.0.1:{port}").connect()
    assert (
        str(caught.value) == f"cannot reach the Serf agent at 127.0.0.1:{port}: connection refused"
    )

    w1 = cluster.worker("w1")
    lost = threading.Event()
    rpc = SerfRPC(w1.rpc_addr, on_close=lambda error: lost.set()).connect()
    w1.kill()
    assert lost.wait(10), "on_close was not called when the agent died"
    assert rpc.closed
    with pytest.raises(SerfConnectionError, match="closed"):
        rpc.members()


def test_agent_start_failures_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="unknown Serf profile"):
        SerfAgent("x", profile="fast", insecure=True)
    with pytest.raises(AgentError, match="decodes to 5 bytes"):
        SerfAgent("x", encrypt_key="aGVsbG8=", insecure=True)
    with pytest.raises(ValueError, match="16, 24 or 32"):
        generate_key(10)
    port = free_port()
    with SerfAgent("first", workdir=tmp_path / "first", bind_port=port, insecure=True):
        second = SerfAgent("second", workdir=tmp_path / "second", bind_port=port, insecure=True)
        with pytest.raises(AgentError, match="exited with code") as caught:
            second.start()
        assert "log tail" in str(caught.value)
        assert not second.running


def test_ports_of_its_own_choosing_taken_before_start_are_chosen_again(tmp_path: Path) -> None:
    agent = SerfAgent("squeezed", workdir=tmp_path, insecure=True)
    taken_rpc, taken_bind = agent.rpc_port, agent.bind_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken_rpc))
        squatter.listen()
        with agent:
            assert agent.rpc_port != taken_rpc
            assert agent.bind_port != taken_bind
            with agent.rpc() as rpc:
                assert [m.name for m in rpc.members()] == ["squeezed"]
    assert "address already in use" in agent.log_path.read_text()
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(10_000 <= port < low for port in ports)


def test_split_addr() -> None:
    assert split_addr("127.0.0.1:7373") == ("127.0.0.1", 7373)
    assert split_addr("[::1]:7373") == ("::1", 7373)
    for bad in ("127.0.0.1", "localhost:", ":7373", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="bad RPC address"):
            split_addr(bad)


def test_encrypted_agent_with_a_16_byte_key(tmp_path: Path) -> None:
    with SerfAgent("enc", encrypt_key=generate_key(16), workdir=tmp_path, insecure=True) as agent:
        with agent.rpc() as rpc:
            assert rpc.stats()["serf"]["encrypted"] == "true"
        assert "encrypt_key" in agent.config()
    assert not agent.running


def test_reader_stays_in_step_without_an_agent() -> None:
    """Pure dispatch logic: bodies pair with headers even for a Seq nobody waits for."""
    rpc = SerfRPC("127.0.0.1:1")
    members, auth = _Reply("members", with_body=True), _Reply("members", with_body=True)
    rpc._handlers.update({5: members, 6: auth})
    rpc._dispatch({"Seq": 9, "Error": ""})  # a stopped stream's record...
    rpc._dispatch({"Event": "member-join", "Members": []})  # ...and its body: dropped
    rpc._dispatch({"Seq": 5, "Error": ""})
    assert not members.done.is_set(), "the members body has not arrived yet"
    raw = {"Name": "w1", "Addr": b"\x7f\x00\x00\x01", "Port": 7946, "Tags": {"role": "worker"}}
    rpc._dispatch({"Members": [raw, {"Name": "bad", "Port": "x"}]})
    assert members.done.is_set() and members.header == {"Seq": 5, "Error": ""}
    assert [(m.name, m.addr, m.port) for m in parse_members(members.body)] == [
        ("w1", "127.0.0.1", 7946)
    ]
    rpc._dispatch({"Seq": 6, "Error": "Authentication required"})  # no body follows
    assert auth.done.is_set() and auth.body is None
    assert rpc._handlers == {}
