"""``pipeline_depth``: a worker holds dispatches beyond its slots and runs at most its slots.

A real scheduler and a real worker of one slot: with ``pipeline_depth = 1`` the
second task is dispatched while the first runs, and starts only when the
first has ended (on the worker, without a round trip to the scheduler).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import LocalCluster
from matchmaker.messages import TaskRequest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        broker_url=broker_url, workdir=tmp_path / "c", scheduler_args=("--pipeline-depth", "1")
    )
    try:
        yield c
    finally:
        c.stop()


def test_a_pipelined_task_is_dispatched_early_and_runs_after_the_first(
    cluster: LocalCluster,
) -> None:
    cluster.start_scheduler()
    cluster.start_worker("solo", ["sleep"], slots=1)
    cluster.submit(TaskRequest("first", "sleep", {"seconds": 1.0}))
    cluster.wait_states(["first"], ("running",), timeout=30)
    cluster.submit(
        TaskRequest("second", "sleep", {"seconds": 0.2}),
        TaskRequest("third", "sleep", {"seconds": 0.2}),
    )
    rows = cluster.wait_states(["first", "second", "third"], timeout=60)
    first, second, third = rows["first"], rows["second"], rows["third"]
    assert first.finished_at is not None and first.started_at is not None
    held, waited = sorted((second, third), key=lambda r: r.assigned_at or 0.0)
    assert held.assigned_at is not None and held.started_at is not None
    assert held.assigned_at < first.finished_at  # dispatched while the only slot was busy
    assert held.started_at >= first.finished_at - 0.01  # ... and run after it: one at a time
    assert waited.assigned_at is not None
    assert waited.assigned_at >= first.finished_at - 0.01  # k = 1: only one held beyond
