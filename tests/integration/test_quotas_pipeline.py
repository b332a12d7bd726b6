"""Quotas on the real broker: a flood over an owner's open-task limit is dead-lettered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.messages import Cancel, TaskRequest
from matchmaker.wire import amqp, broker

pytestmark = pytest.mark.timeout(240)

LIMIT = 40
OWNER = "owner 'matchmaker'"  # the test's broker user: every request here is its
FULL = f"{OWNER} has {LIMIT} open tasks, the limit is {LIMIT}"


def make_cluster(broker_url: str, tmp_path: Path, config_text: str) -> LocalCluster:
    config = tmp_path / "mm.toml"
    config.write_text(config_text)
    return LocalCluster(
        broker_url=broker_url,
        workdir=tmp_path / "cluster",
        scheduler_args=("--config", str(config)),
    )


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = make_cluster(
        broker_url,
        tmp_path,
        f"max_pending_per_owner = {LIMIT}\nmax_priority_by_role = {{admin = 6, client = 3}}\n",
    )
    try:
        yield c
    finally:
        c.stop()


class DeadLetters:
    """What ``mm.dead`` received so far, as (task id or body, reason)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[bytes, str]] = []

    def reasons(self) -> list[str]:
        connection = amqp.plain(self.url)
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(broker.DEAD, auto_ack=True)
            if method is None:
                break
            self.seen.append((body, props.headers["x-mm-reason"]))
        connection.close()
        return [reason for _, reason in self.seen]

    def wait(self, count: int) -> list[str]:
        wait_until(lambda: len(self.reasons()) >= count, 30, f"{count} dead letters")
        return self.reasons()


def pending_ids(cluster: LocalCluster) -> set[str]:
    ledger = cluster.ledger()
    try:
        return {row.id for row in ledger.open_tasks()}
    finally:
        ledger.close()


def wait_open(cluster: LocalCluster, count: int) -> set[str]:
    wait_until(lambda: len(pending_ids(cluster)) >= count, 30, f"{count} open tasks")
    return pending_ids(cluster)


def task(i: int, **fields: object) -> TaskRequest:
    return TaskRequest(f"q{i:03d}", "sleep", {"seconds": 0}, **fields)  # type: ignore[arg-type]


def test_a_flood_over_the_open_task_limit_is_dead_lettered_with_its_reason(
    cluster: LocalCluster,
) -> None:
    cluster.start_scheduler()  # no worker: everything accepted stays open
    dead = DeadLetters(cluster.broker_url)
    cluster.submit(task(999, priority=8), *(task(i) for i in range(LIMIT + 20)))
    reasons = dead.wait(21)
    assert pending_ids(cluster) == {f"q{i:03d}" for i in range(LIMIT)}  # the first LIMIT
    assert reasons.count(FULL) == 20
    assert "priority 8 is above the cap of role 'admin' (6)" in reasons
    assert len(reasons) == 21

    cluster.send([Cancel(f"q{i:03d}") for i in range(5)])  # five fewer open tasks
    cluster.submit(*(task(i) for i in range(100, 106)))
    assert dead.wait(22).count(FULL) == 21
    open_now = wait_open(cluster, LIMIT)
    assert {f"q{i:03d}" for i in range(100, 105)} <= open_now and "q105" not in open_now
    cancelled = cluster.task("q000")
    assert cancelled is not None and cancelled.state == "cancelled"

    assert cluster.scheduler is not None
    cluster.scheduler.stop()
    cluster.start_scheduler()  # the count is rebuilt from the ledger
    cluster.submit(task(200))
    assert dead.wait(23)[-1] == FULL
    assert len(pending_ids(cluster)) == LIMIT


def test_a_flood_over_the_submit_rate_is_dead_lettered(broker_url: str, tmp_path: Path) -> None:
    with make_cluster(
        broker_url, tmp_path, "submit_rate_per_owner = 0.001\nsubmit_burst = 5\n"
    ) as cluster:
        cluster.start_scheduler()
        dead = DeadLetters(cluster.broker_url)
        cluster.submit(*(task(i) for i in range(8)))
        reasons = dead.wait(3)
        assert (
            reasons == [f"{OWNER} submits faster than 0.001 tasks/s (burst 5): request refused"] * 3
        )
        assert wait_open(cluster, 5) == {f"q{i:03d}" for i in range(5)}
