"""The live inventory against real Serf agents on loopback (``-profile=local``)."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from membership.agent import SerfAgent, generate_key
from membership.errors import AgentError, SerfAuthError
from membership.inventory import Change, Inventory, LiveWorker
from tests.serf_fixtures import Cluster, cluster, make_cluster, wait_until  # noqa: F401

pytestmark = pytest.mark.serf

Snapshot = dict[str, LiveWorker]


class Recorder:
    """Collects an inventory's changes (they arrive on the inventory's thread)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.lock = threading.Lock()

    def __call__(self, change: Change) -> None:
        with self.lock:
            self.changes.append(change)

    def kinds(self, name: str) -> list[str]:
        with self.lock:
            return [c.kind for c in self.changes if c.name == name]


@pytest.fixture
def watch() -> Iterator[Callable[..., tuple[Inventory, Recorder]]]:
    """Start inventories (with a change recorder) that are stopped afterwards."""
    started: list[Inventory] = []

    def start(
        rpc_addr: str, auth_key: str | None = None, resync: float = 0.5
    ) -> tuple[Inventory, Recorder]:
        recorder = Recorder()
        inventory = Inventory(
            rpc_addr, auth_key, on_change=recorder, backoff=(0.05, 0.5), resync=resync
        )
        inventory.start()
        started.append(inventory)
        return inventory, recorder

    yield start
    for inventory in started:
        inventory.stop()


def settle(inventory: Inventory, check: Callable[[Snapshot], bool], what: str) -> Snapshot:
    assert inventory.wait_for(check, timeout=45), f"inventory never showed {what}"
    return inventory.snapshot()


# resync=0: the event stream alone; 0.5: events plus the periodic members resync.
@pytest.mark.parametrize("resync", [0, 0.5])
def test_snapshot_join_and_tag_changes(cluster: Cluster, watch, resync: float) -> None:  # noqa: F811
    cluster.worker("w1", ("data_staging", "env_setup"), 4, site="iu", gpu=0)
    with cluster.scheduler.rpc() as rpc:
        wait_until(lambda: len(rpc.members()) == 2, what="w1 in the gossip pool")
    inventory, recorder = watch(cluster.scheduler.rpc_addr, resync=resync)

    snap = inventory.snapshot()
    assert set(snap) == {"w1"}, "the scheduler's own agent (role=scheduler) is not a worker"
    w1 = snap["w1"]
    assert w1.queue == "mm.worker.w1" and w1.status == "alive" and w1.addr == "127.0.0.1"
    assert w1.worker.capabilities == {"data_staging", "env_setup"}
    assert (w1.worker.slots, w1.worker.perf) == (4, 1.0)
    assert w1.worker.attributes == {"site": "iu", "gpu": 0}

    # A worker joining appears.
    version = inventory.version
    w2 = cluster.worker("w2", ("sleep",), 1)
    settle(inventory, lambda s: "w2" in s, "w2 joining")
    assert inventory.version > version
    assert recorder.kinds("w2") == ["joined"]

    # A tag change over RPC appears.
    with w2.rpc() as rpc:
        rpc.tags({"slots": "3", "zone": "b"})
    snap = settle(inventory, lambda s: s["w2"].worker.slots == 3, "w2's new slots")
    assert snap["w2"].worker.attributes == {"zone": "b"}
    assert recorder.kinds("w2") == ["joined", "updated"]

    # A tag changed with the real `serf tags` command appears too.
    subprocess.run(
        ["serf", "tags", f"-rpc-addr={cluster.agents[1].rpc_addr}", "-set", "site=tacc",
         "-delete", "gpu"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    snap = settle(inventory, lambda s: s["w1"].worker.attributes.get("site") == "tacc", "w1 tacc")
    assert snap["w1"].worker.attributes == {"site": "tacc"}


@pytest.mark.parametrize("resync", [0, 0.5])
def test_kill_9_and_graceful_leave_remove_workers(
    cluster: Cluster,  # noqa: F811
    watch,
    resync: float,
) -> None:
    doomed = cluster.worker("doomed")
    leaver = cluster.worker("leaver")
    cluster.worker("stayer")
    inventory, recorder = watch(cluster.scheduler.rpc_addr, resync=resync)
    settle(inventory, lambda s: set(s) == {"doomed", "leaver", "stayer"}, "three workers")

    leaver.stop()  # SIGINT: a graceful leave
    assert leaver.process is not None and leaver.process.returncode == 0
    settle(inventory, lambda s: "leaver" not in s, "the graceful leave")
    # Serf reports "left"; if its leave broadcast is lost, the others see the node die: "failed".
    assert recorder.kinds("leaver")[0] == "joined"
    assert recorder.kinds("leaver")[1:] in (["left"], ["failed"])

    doomed.kill()  # kill -9: only failure detection notices
    snap = settle(inventory, lambda s: "doomed" not in s, "the killed worker failing")
    assert recorder.kinds("doomed") == ["joined", "failed"]
    assert [c for c in recorder.changes if c.name == "doomed"][-1].gone
    assert set(snap) == {"stayer"}


def test_gossip_encryption(make_cluster, watch) -> None:  # noqa: F811
    key = generate_key()
    secure = make_cluster(encrypt_key=key)
    secure.worker("w1")
    inventory, _ = watch(secure.scheduler.rpc_addr)
    settle(inventory, lambda s: "w1" in s, "the encrypted worker")
    with secure.scheduler.rpc() as rpc:
        assert rpc.stats()["serf"]["encrypted"] == "true"
    # An agent with another key cannot join the cluster.
    with pytest.raises(AgentError, match="exited with code"):
        secure.agent("intruder", {"role": "worker"}, encrypt_key=generate_key(16))
    assert "intruder" not in inventory.snapshot()


def test_rpc_auth_key_required_and_wrong_key_refused(make_cluster, watch) -> None:  # noqa: F811
    guarded = make_cluster(rpc_auth="s3cret")
    guarded.worker("w1")
    addr = guarded.scheduler.rpc_addr
    inventory, _ = watch(addr, "s3cret")
    settle(inventory, lambda s: "w1" in s, "w1 through an authenticated connection")

    with pytest.raises(SerfAuthError, match=r"refused the RPC auth key \(Invalid authentication"):
        Inventory(addr, "wrong").start()
    with pytest.raises(SerfAuthError, match=r"requires an RPC auth key"):
        Inventory(addr).start()


def test_hostile_and_malformed_tags_are_ignored_and_logged(
    cluster: Cluster,  # noqa: F811
    watch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="membership.inventory")
    good = cluster.worker("good")
    cluster.agent("hijack", {"role": "worker", "caps": "sleep", "slots": "1", "q": "mm.requests"})
    cluster.agent("nocaps", {"role": "worker", "slots": "1"})
    cluster.agent("slotty", {"role": "worker", "caps": "sleep", "slots": "lots"})
    cluster.agent("posing", {"role": "worker", "caps": "sleep", "slots": "1", "name": "good"})
    cluster.agent("bad.name!", {"role": "worker", "caps": "sleep", "slots": "1"})
    cluster.agent("huge", {"role": "worker", "caps": "sleep", "slots": "99999999"})
    copycat = {"role": "worker", "caps": "sleep", "slots": "1", "q": "mm.worker.good"}
    cluster.agent("copycat", copycat)
    inventory, recorder = watch(cluster.scheduler.rpc_addr)
    settle(inventory, lambda s: {"good", "huge"} <= set(s), "the acceptable workers")
    wait_until(lambda: len(inventory.rejected()) == 6, what="six rejected members")

    assert set(inventory.snapshot()) == {"good", "huge"}
    assert inventory.snapshot()["huge"].worker.slots == 1024  # clamped
    reasons = inventory.rejected()
    assert "queue 'mm.requests'" in reasons["hijack"]
    assert "'caps'" in reasons["nocaps"]
    assert "slots 'lots'" in reasons["slotty"]
    assert "reserved" in reasons["posing"]
    assert "member name" in reasons["bad.name!"]
    assert "queue 'mm.worker.good' is not this worker's own" in reasons["copycat"]
    for name, reason in reasons.items():
        assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert any("clamped" in r.getMessage() for r in caplog.records)

    # A live worker turning hostile (bytes that are not UTF-8) leaves the inventory...
    with good.rpc() as rpc:
        rpc.tags({"site": b"\xff\xfe"})
        settle(inventory, lambda s: "good" not in s, "the hostile update")
        rejected = [c for c in recorder.changes if c.name == "good" and c.kind == "rejected"]
        assert rejected and rejected[0].gone and "unsafe" in (rejected[0].reason or "")
        # ...and comes back once its tags are fixed.
        rpc.tags({"site": "iu"})
        settle(inventory, lambda s: "good" in s, "the repaired worker")
    assert recorder.kinds("good")[-1] == "joined"


def test_connection_cut_mid_stream_recovers_a_correct_inventory(
    cluster: Cluster,  # noqa: F811
    watch,
) -> None:
    w1 = cluster.worker("w1")
    w2 = cluster.worker("w2")
    # No periodic resync: the snapshot diff on reconnect must find what changed by itself.
    inventory, recorder = watch(cluster.scheduler.rpc_addr, resync=0)
    settle(inventory, lambda s: set(s) == {"w1", "w2"}, "both workers")

    sched = cluster.scheduler
    sched.kill()  # the agent the inventory talks to dies: the RPC connection drops
    wait_until(lambda: not inventory.connected, what="the inventory to notice the drop")
    # While the inventory is blind: w2 dies, w1 changes its tags, w3 joins through w1.
    w2.kill()
    with w1.rpc() as rpc:
        rpc.tags({"slots": "7"})
    cluster.agent("w3", {"role": "worker", "caps": "sleep", "slots": "1"}, join=[w1.bind_addr])

    # The scheduler's agent comes back on the same ports and rejoins through w1.
    revived = SerfAgent(
        "sched", tags={"role": "scheduler"}, bind_port=sched.bind_port, rpc_port=sched.rpc_port,
        join=[w1.bind_addr], workdir=sched.workdir, insecure=True,
    )  # fmt: skip
    cluster.agents.append(revived)
    revived.start()
    snap = settle(
        inventory,
        lambda s: set(s) == {"w1", "w3"} and s["w1"].worker.slots == 7,
        "the rebuilt inventory: w1 updated, w2 gone, w3 joined",
    )
    assert inventory.connected
    assert snap["w3"].worker.capabilities == {"sleep"}
    assert any(c.gone for c in recorder.changes if c.name == "w2")
    assert "joined" in recorder.kinds("w3")
