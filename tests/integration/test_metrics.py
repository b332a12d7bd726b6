"""Prometheus metrics: the scheduler's labelled task counters and histograms, read off its
event stream, and a worker's own endpoint; the endpoints are scraped for real."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from matchmaker.book import Event
from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.messages import TaskRequest
from matchmaker.metrics import Metrics
from membership.agent import free_port

pytestmark = pytest.mark.timeout(180)


def test_events_become_labelled_counters_and_histograms() -> None:
    m = Metrics()
    m.opened("a", "sleep", "alice")
    m.opened("b", "sleep", "")
    m.record([
        Event("a", "pending", 1, None, 10.0, "submitted"),
        Event("b", "pending", 1, None, 10.0, "submitted"),
        Event("a", "assigned", 1, "w1", 10.5),
        Event("a", "running", 1, "w1", 11.0),
        Event("a", "succeeded", 1, "w1", 14.0),
        Event("b", "running", 1, "w2", 12.0),
        Event("b", "failed", 1, "w2", 12.5, "boom"),
        Event("b", "dead", 1, "w2", 12.5, "gave up"),
        Event("ghost", "succeeded", 1, "w1", 15.0),  # never opened here: not counted
    ])  # fmt: skip
    value = m.registry.get_sample_value
    assert value("mm_tasks_total", {"type": "sleep", "owner": "alice", "state": "submitted"}) == 1
    assert value("mm_tasks_total", {"type": "sleep", "owner": "alice", "state": "succeeded"}) == 1
    assert value("mm_tasks_total", {"type": "sleep", "owner": "-", "state": "failed"}) == 1
    assert value("mm_tasks_total", {"type": "sleep", "owner": "-", "state": "dead"}) == 1
    assert value("mm_worker_tasks_total", {"worker": "w1", "state": "succeeded"}) == 1
    assert value("mm_worker_tasks_total", {"worker": "w2", "state": "failed"}) == 1
    assert value("mm_queue_wait_seconds_count", {"type": "sleep"}) == 1  # b was never assigned
    assert value("mm_queue_wait_seconds_sum", {"type": "sleep"}) == pytest.approx(0.5)
    assert value("mm_run_seconds_sum", {"type": "sleep"}) == pytest.approx(3.0 + 0.5)
    assert not m._open and not m._since  # closed tasks are forgotten


def test_a_failed_attempt_keeps_the_task_open_for_its_retry() -> None:
    m = Metrics()
    m.opened("a", "sleep", "alice")
    m.record([Event("a", "running", 1, "w1", 1.0), Event("a", "failed", 1, "w1", 2.0)])
    m.record([Event("a", "pending", 2, None, 3.0, "retry"), Event("a", "assigned", 2, "w1", 3.5)])
    m.record([Event("a", "succeeded", 2, "w1", 6.0)])
    value = m.registry.get_sample_value
    assert value("mm_tasks_total", {"type": "sleep", "owner": "alice", "state": "failed"}) == 1
    assert value("mm_tasks_total", {"type": "sleep", "owner": "alice", "state": "succeeded"}) == 1
    assert value("mm_run_seconds_count", {"type": "sleep"}) == 2
    assert value("mm_run_seconds_sum", {"type": "sleep"}) == pytest.approx(1.0 + 2.5)
    assert value("mm_queue_wait_seconds_count", {"type": "sleep"}) == 1  # the retry's wait


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mm_")
    }


def test_scheduler_and_worker_endpoints(broker_url: str, tmp_path: Path) -> None:
    port, worker_port = free_port(), free_port()
    with LocalCluster(
        broker_url=broker_url, workdir=tmp_path, scheduler_args=("--metrics-port", str(port))
    ) as c:
        c.start_scheduler()
        c.start_worker("w1", ["sleep"], 2, extra=("--metrics-port", str(worker_port)))
        ok = [TaskRequest(f"ok{i}", "sleep", {"seconds": 0}) for i in range(3)]
        bad = TaskRequest("bad", "sleep", {"fail": True}, max_attempts=1)
        c.wait_states(c.submit(*ok, bad), states=("succeeded", "dead"))
        key = 'mm_tasks_total{owner="matchmaker",state="%s",type="sleep"}'

        def settled() -> bool:
            m = scrape(port)
            return m.get(key % "succeeded") == 3 and m.get(key % "dead") == 1

        wait_until(settled, 20, "the scheduler's counters to show 3 succeeded and 1 dead")
        m = scrape(port)
        assert m[key % "submitted"] == 4
        assert m[key % "failed"] == 1
        assert m['mm_worker_tasks_total{state="succeeded",worker="w1"}'] == 3
        assert m['mm_queue_wait_seconds_count{type="sleep"}'] == 4
        assert m["mm_leader"] == 1
        assert m["mm_ledger_commit_seconds_count"] >= 1
        w = scrape(worker_port)
        assert w['mm_worker_tasks_total{state="succeeded",type="sleep"}'] == 3
        assert w['mm_worker_tasks_total{state="failed",type="sleep"}'] == 1
        assert w["mm_worker_slots"] == 2


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    from types import SimpleNamespace

    from workers.metrics import WorkerMetrics

    runner = SimpleNamespace(busy=lambda: 0, slots=1, observer=None)
    worker = SimpleNamespace(runner=runner, stats=SimpleNamespace(received=0))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {
        family.name + suffix
        for registry in (Metrics().registry, WorkerMetrics(worker).registry)  # type: ignore[arg-type]
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/grafana/matchmaker.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmm_\w+", target["expr"])
    }
    assert used and used <= exported, used - exported
