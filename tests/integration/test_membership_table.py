"""``matchmaker workers``' listing: a one-shot members query rendered as a table or JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from membership.agent import free_port
from membership.errors import MembershipError
from membership.table import WorkerRow, fetch_workers, format_workers
from tests.serf_fixtures import Cluster, cluster, make_cluster, wait_until  # noqa: F401


@pytest.mark.serf
def test_fetch_workers_lists_live_failed_and_rejected_members(cluster: Cluster) -> None:  # noqa: F811
    cluster.worker("w1", ("data_staging", "env_setup"), 4, site="iu", gpu=0)
    gone = cluster.worker("w2", ("sleep",), 1)
    cluster.agent("evil", {"role": "worker", "caps": "sleep", "slots": "1", "q": "mm.dead"})
    gone.stop()
    addr = cluster.scheduler.rpc_addr

    def listed() -> list[WorkerRow] | None:
        rows = fetch_workers(addr)
        return rows if any(r.name == "w2" and r.status == "left" for r in rows) else None

    rows = wait_until(listed, what="w2 listed as left")
    assert [r.name for r in rows] == ["evil", "w1", "w2"], "the scheduler's agent is not listed"
    evil, w1, _ = rows
    assert evil.status.startswith("rejected: queue 'mm.dead'")
    assert (w1.capabilities, w1.slots, w1.status) == (("data_staging", "env_setup"), 4, "alive")
    assert w1.attributes == {"gpu": 0, "site": "iu"} and w1.queue == "mm.worker.w1"

    listing = json.loads(format_workers(rows, as_json=True, running={"w1": 3}))
    assert listing[1] == {
        "name": "w1",
        "capabilities": ["data_staging", "env_setup"],
        "slots": 4,
        "running": 3,
        "attributes": {"gpu": 0, "site": "iu"},
        "status": "alive",
        "queue": "mm.worker.w1",
        "addr": "127.0.0.1",
    }
    table = format_workers(rows, running={"w1": 3}).splitlines()
    assert table[0].split() == ["NAME", "CAPABILITIES", "SLOTS", "RUNNING", "ATTRIBUTES", "STATUS"]
    assert table[2].split() == ["w1", "data_staging,env_setup", "4", "3", "gpu=0,site=iu", "alive"]
    assert table[3].split()[-1] == "left"


def test_unreachable_agent_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(MembershipError) as caught:
        fetch_workers(f"127.0.0.1:{port}", timeout=2)
    assert type(caught.value) is MembershipError  # the CLI reports it as one sentence
    assert (
        str(caught.value) == f"cannot reach the Serf agent at 127.0.0.1:{port}: connection refused"
    )
    with pytest.raises(MembershipError, match="bad RPC address"):
        fetch_workers("localhost")


@pytest.mark.serf
def test_cli_reports_agent_errors_in_one_sentence(make_cluster) -> None:  # noqa: F811
    guarded = make_cluster(rpc_auth="s3cret")
    guarded.worker("w7", ("sleep",), 2, site="iu")
    addr = guarded.scheduler.rpc_addr
    rows = wait_until(lambda: fetch_workers(addr, "s3cret"), what="w7 listed")
    assert [(r.name, r.status) for r in rows] == [("w7", "alive")]
    for key, message in ((None, "requires an RPC auth key"), ("wrong", "refused the RPC auth key")):
        result = subprocess.run(
            [sys.executable, "-m", "matchmaker", "workers", "--serf-rpc", addr,
             *(["--serf-auth-key", key] if key else ["--insecure"])],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_format_escapes_control_characters_and_handles_empty() -> None:
    assert format_workers([]) == "no workers"
    assert json.loads(format_workers([], as_json=True)) == []
    row = WorkerRow("x\x1b[2J", status="rejected: member name 'x\\x1b[2J' is not a safe name")
    table = format_workers([row])
    assert "\x1b" not in table and "x\\x1b[2J" in table
