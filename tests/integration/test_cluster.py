"""A broker node killed mid-run, on a real 3-node RabbitMQ cluster with quorum queues.

The scheduler, two real worker processes and the client are given every node's URL;
all of them start on the first node (the list's order), which is then killed with
``kill -9``. They reconnect to a surviving node, the quorum queues elect new leaders,
and the run completes: every task succeeded, none lost, none completed twice. The
time to resume is printed (``-s``): from the kill to the first dispatch confirmed on
a surviving node, and to the first task dispatched after the kill that completed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rabbit_cluster import RabbitCluster
from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.messages import TaskRequest
from matchmaker.wire import broker
from tests.multihost_support import logged_after

pytestmark = [pytest.mark.slow, pytest.mark.serf]

TASKS = 1500


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster.loopback(tmp_path_factory.mktemp("rabbit"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quorum queues for every process: this one (the client) and those it starts."""
    monkeypatch.setenv("MM_QUEUE_TYPE", "quorum")


def _succeeded(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'").fetchone()[0])


def test_urls_list_connects_to_a_surviving_node(rabbit: RabbitCluster) -> None:
    """A list whose first node does not answer: the next one does, one sentence per try."""
    dead = "amqp://u:p@127.0.0.1:1/none"
    connection = broker.connect(f"{dead},{rabbit.urls[1]}", name="test")
    try:
        assert connection.is_open
    finally:
        connection.close()
    with pytest.raises(broker.BrokerError, match=r"cannot reach the broker at 127\.0\.0\.1:1/none"):
        broker.connect(f"{dead},{dead}", name="test")


@pytest.mark.timeout(600)
def test_node_killed_mid_run_loses_nothing(
    rabbit: RabbitCluster, quorum: None, tmp_path: Path
) -> None:
    qt = ("--queue-type", "quorum")
    with LocalCluster(broker_url=rabbit.url, workdir=tmp_path, scheduler_args=qt) as c:
        c.start_scheduler()
        for name in ("w1", "w2"):
            c.start_worker(name, ["sleep"], slots=8)  # quorum by MM_QUEUE_TYPE
        queues = rabbit.queues()
        assert queues["mm.requests"]["type"] == "quorum"
        assert queues["mm.worker.w1"]["type"] == "quorum"
        ids = c.submit(
            *(
                TaskRequest(f"t{i:05d}", "sleep", {"seconds": 0.02}, max_attempts=5)
                for i in range(TASKS)
            )
        )
        db = sqlite3.connect(f"file:{c.state_dir / 'ledger.sqlite'}?mode=ro", uri=True)
        wait_until(lambda: _succeeded(db) >= TASKS // 4, 120, "a quarter of the tasks done")
        victim = rabbit.nodes[0]  # every process started on the list's first node
        killed_at = time.time()
        victim.kill()
        survivors = rabbit.nodes[1:]
        wait_until(
            lambda: rabbit.running_nodes(survivors[0]) == sorted(n.name for n in survivors),
            60,
            "the survivors to see the node gone",
        )
        rows = c.wait_states(ids, timeout=400)
        assert len(rows) == TASKS and {r.state for r in rows.values()} == {"succeeded"}
        twice = db.execute(
            "SELECT id, COUNT(*) FROM transitions WHERE state = 'succeeded'"
            " GROUP BY id HAVING COUNT(*) > 1"
        ).fetchall()
        assert twice == []
        assert _succeeded(db) == TASKS  # nothing else made up either
        assert c.scheduler is not None
        led = logged_after(c.scheduler.log, "this scheduler is active", killed_at)
        assert led is not None
        dispatch = db.execute(  # the first recorded after it led again (one read before the
            "SELECT MIN(at) FROM transitions WHERE state = 'assigned' AND at > ?", (led,)
        ).fetchone()[0]  # kill may be recorded just after it)
        done = db.execute(
            "SELECT MIN(s.at) FROM transitions s JOIN transitions a"
            " ON s.id = a.id AND s.attempt = a.attempt"
            " WHERE s.state = 'succeeded' AND a.state = 'assigned' AND a.at > ?",
            (led,),
        ).fetchone()[0]
        assert dispatch is not None and done is not None
        for process in [c.scheduler, *c.workers.values()]:
            assert process is not None and process.alive()
        assert "connected to broker node" in c.scheduler.log.read_text()
        db.close()
        print(
            f"\nbroker node killed: dispatching again after {dispatch - killed_at:.2f}s, "
            f"a task dispatched after the kill done after {done - killed_at:.2f}s"
        )
