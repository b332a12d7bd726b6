"""The push pipeline end to end: real RabbitMQ, real Serf agents, real processes.

Each test gets its own vhost and its own cluster (scheduler agent, scheduler,
workers) in a temporary directory, and stops everything it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.messages import Cancel, TaskRequest, TaskResult, encode, encode_batch
from matchmaker.wire import amqp, broker
from membership.agent import free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path)
    try:
        yield c
    finally:
        c.stop()


def sleep_task(task_id: str, seconds: float = 0.0, **fields: object) -> TaskRequest:
    return TaskRequest(task_id, "sleep", {"seconds": seconds}, **fields)  # type: ignore[arg-type]


def dead_letters(url: str) -> list[tuple[bytes, str]]:
    connection = amqp.plain(url)
    channel = connection.channel()
    out = []
    while True:
        method, props, body = channel.basic_get(broker.DEAD, auto_ack=True)
        if method is None:
            break
        out.append((body, props.headers["x-mm-reason"]))
    connection.close()
    return out


def test_tasks_run_on_matching_workers_only(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("iu1", ["sleep"], 2, {"site": "iu"})
    cluster.start_worker("tacc1", ["sleep"], 2, {"site": "tacc"})
    pinned = [sleep_task(f"tacc-{i}", 0.05, constraints={"site": "tacc"}) for i in range(6)]
    free = [sleep_task(f"any-{i}", 0.05) for i in range(6)]
    rows = cluster.wait_states(cluster.submit(*pinned, *free))
    assert {rows[t.id].worker for t in pinned} == {"tacc1"}
    assert {rows[t.id].worker for t in free} <= {"iu1", "tacc1"}
    assert all(r.attempt == 1 and r.output == {"slept": 0.05} for r in rows.values())


def test_priorities_win_contested_slots(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("solo", ["sleep"], 1)
    cluster.wait_states(cluster.submit(sleep_task("warm", 0)))
    cluster.submit(sleep_task("blocker", 1.5))
    wait_until(
        lambda: (r := cluster.task("blocker")) is not None and r.state == "running", 20, "blocker"
    )
    low = [sleep_task(f"low-{i}", 0.05, priority=0) for i in range(4)]
    high = [sleep_task(f"high-{i}", 0.05, priority=9) for i in range(4)]
    rows = cluster.wait_states(cluster.submit(*low, *high))
    assert max(rows[t.id].started_at or 0 for t in high) < min(
        rows[t.id].started_at or 0 for t in low
    )


def test_bad_requests_are_dead_lettered_and_the_service_stays_up(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    connection = amqp.plain(cluster.broker_url)
    channel = connection.channel()
    bad = [
        b"{this is not json",
        json.dumps(
            {"v": 1, "id": "big", "type": "sleep", "payload": {"x": "y" * 300_000}}
        ).encode(),
        json.dumps({"v": 1, "id": "odd", "type": "tele:port"}).encode(),  # no worker can carry it
        json.dumps({"v": 1, "id": "neg", "type": "sleep", "priority": -1}).encode(),
        b'{"v":1,"id":"grows","type":"sleep","payload":{"n":['
        + b",".join([b"1e15"] * 40_000)
        + b"]}}",
    ]
    sent_by = broker.persistent(broker.sender(cluster.broker_url))
    for body in bad:
        channel.basic_publish(*broker.route(broker.REQUESTS), body, sent_by)
    # A worker's batch of results with one bad item: that item is refused, the rest taken.
    ghost = encode(TaskResult("ghost", 1, "w1", "succeeded", 1.0, 2.0, {}))
    batch = encode_batch("results", [ghost, b'{"id": "x"}'])
    channel.basic_publish(*broker.route(broker.RESULTS), batch, sent_by)
    connection.close()
    ids = cluster.submit(sleep_task("fine"), sleep_task("dup", 0.1), sleep_task("dup", 0.1))
    cluster.wait_states(ids)
    ledger = cluster.ledger()
    wait_until(lambda: bool(ledger.history("ghost")), 10, "the batch's valid result applied")
    assert [(h["state"], h["note"]) for h in ledger.history("ghost")] == [
        ("ignored-succeeded", "unknown task")
    ]
    reasons = sorted(reason for _, reason in dead_letters(cluster.broker_url))
    assert len(reasons) == 6
    assert any(r.startswith("its dispatch would be") for r in reasons)
    assert any("not valid JSON" in r for r in reasons)
    assert any("byte limit" in r for r in reasons)
    assert any(r.startswith("'type' must be 1-64 characters") for r in reasons)
    assert any("'priority'" in r for r in reasons)
    assert any(r.startswith("results[1]: 'state'") for r in reasons)
    assert ledger.counts() == {"succeeded": 2}
    assert [h["state"] for h in ledger.history("dup")].count("succeeded") == 1
    assert cluster.scheduler is not None and cluster.scheduler.alive()


def test_every_state_change_is_an_event(cluster: LocalCluster, broker_url: str) -> None:
    connection = broker.connect(broker_url)
    channel = connection.channel()
    broker.declare_core(channel)
    watch = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(watch, broker.EVENTS, "task.#")
    cluster.start_scheduler()
    cluster.start_worker("ev", ["sleep"], 1)
    bad_task = TaskRequest("ev-bad", "sleep", {"seconds": 0, "fail": True}, max_attempts=1)
    cluster.wait_states(cluster.submit(sleep_task("ev-ok", 0.3), bad_task), ("succeeded", "dead"))
    seen: list[tuple[str, dict[str, object]]] = []
    deadline = time.monotonic() + 10
    while {"succeeded", "dead"} - {e["state"] for _, e in seen} and time.monotonic() < deadline:
        method, _props, body = channel.basic_get(watch, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        message = json.loads(body)
        assert (message["v"], message["kind"]) == (1, "events")
        seen += [(method.routing_key, e) for e in message["events"]]
    connection.close()
    assert all(key == f"task.{e['state']}" for key, e in seen)
    ok = [e for _, e in seen if e["id"] == "ev-ok"]
    assert [e["state"] for e in ok] == ["pending", "assigned", "running", "succeeded"]
    assert [e["worker"] for e in ok] == [None, "ev", "ev", "ev"]
    assert {e["attempt"] for e in ok} == {1}
    assert [e["at"] for e in ok] == sorted(e["at"] for e in ok)  # type: ignore[type-var]
    bad = [e for _, e in seen if e["id"] == "ev-bad"]
    assert [e["state"] for e in bad if e["state"] != "running"] == [
        "pending",
        "assigned",
        "failed",
        "dead",
    ]
    assert "gave up after 1 attempts" in str(bad[-1]["note"])


def test_a_killed_worker_s_tasks_finish_elsewhere(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    victim = cluster.start_worker("victim", ["sleep"], 4, {"site": "a"})
    tasks = [sleep_task(f"t{i}", 3.0, preferences={"site": "a"}) for i in range(4)]
    cluster.submit(*tasks)
    wait_until(
        lambda: all((r := cluster.task(t.id)) is not None and r.state == "running" for t in tasks),
        20,
        "tasks running on the victim",
    )
    cluster.start_worker("survivor", ["sleep"], 4, {"site": "b"})
    victim.popen.kill()  # kill -9: its Serf agent dies with it
    rows = cluster.wait_states([t.id for t in tasks], timeout=60)
    assert {r.worker for r in rows.values()} == {"survivor"}
    assert all(r.attempt == 2 for r in rows.values())


def test_scheduler_killed_and_restarted_loses_nothing(cluster: LocalCluster) -> None:
    scheduler = cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 4)
    first = [sleep_task(f"a{i}", 0.2) for i in range(20)]
    cluster.submit(*first)
    wait_until(
        lambda: any((row := cluster.task(t.id)) and row.state != "pending" for t in first),
        20,
        "the first tasks to be dispatched",
    )  # killed mid-run: some dispatched, some not
    scheduler.popen.kill()
    scheduler.popen.wait()
    second = [sleep_task(f"b{i}", 0.05) for i in range(20)]
    cluster.submit(*second)  # accepted by the broker while no scheduler runs
    cluster.start_scheduler()
    rows = cluster.wait_states([t.id for t in first + second], timeout=90)
    assert len(rows) == 40
    ledger = cluster.ledger()
    for t in first + second:
        assert [h["state"] for h in ledger.history(t.id)].count("succeeded") == 1


def test_a_standby_scheduler_takes_over(cluster: LocalCluster) -> None:
    active = cluster.start_scheduler()
    standby = cluster.start_scheduler(standby=True, wait=False)
    cluster.wait_log(standby, "standing by", 30)
    cluster.start_worker("w1", ["sleep"], 2)
    cluster.wait_states(cluster.submit(sleep_task("before")))
    active.popen.kill()
    cluster.wait_log(standby, "this scheduler is active", 30)
    rows = cluster.wait_states(cluster.submit(sleep_task("after")))
    assert rows["after"].state == "succeeded"


def test_broker_restart_loses_nothing(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    ids = cluster.submit(*[sleep_task(f"r{i}", 0.3) for i in range(10)])
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
    rows = cluster.wait_states(ids, timeout=120)
    assert len(rows) == 10
    assert cluster.scheduler is not None
    log = cluster.scheduler.log.read_text()
    assert "lost the broker" in log and "Traceback" not in log  # one line of ours, no pika's


def test_a_partitioned_worker_loses_its_tasks_and_its_late_results_are_stale(
    cluster: LocalCluster,
) -> None:
    cluster.start_scheduler()
    cluster.start_worker("cut", ["sleep"], 2, {"site": "x"})
    tasks = [sleep_task(f"p{i}", 15.0, preferences={"site": "x"}) for i in range(2)]
    cluster.submit(*tasks)
    wait_until(
        lambda: all((r := cluster.task(t.id)) is not None and r.worker == "cut" for t in tasks),
        20,
        "tasks on the worker to cut off",
    )
    cluster.start_worker("other", ["sleep"], 2, {"site": "y"})
    serf_pid = agent_pid_of("cut")
    subprocess.run(["kill", "-STOP", str(serf_pid)], check=True)
    try:
        rows = cluster.wait_states([t.id for t in tasks], timeout=60)
    finally:
        subprocess.run(["kill", "-CONT", str(serf_pid)], check=True)
    assert {r.worker for r in rows.values()} == {"other"}
    # The cut-off worker keeps running its old attempts; their results must change nothing.
    ledger = cluster.ledger()
    wait_until(
        lambda: all(
            any(h["state"].startswith("ignored") for h in ledger.history(t.id)) for t in tasks
        ),
        30,
        "stale results from the cut-off worker",
    )
    for t in tasks:
        row = ledger.get(t.id)
        assert row is not None and row.state == "succeeded" and row.worker == "other"


def agent_pid_of(worker: str) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"serf agent.*{worker}"], capture_output=True, text=True, check=False
    ).stdout.split()
    if not out:
        out = subprocess.run(
            ["pgrep", "-f", f"serf-{worker}"], capture_output=True, text=True, check=False
        ).stdout.split()
    assert out, f"no Serf agent process found for {worker}"
    return int(out[0])


def test_cli_submit_status_explain_cancel(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 1, {"site": "iu"})
    base = [sys.executable, "-m", "matchmaker"]
    common = ["--broker-url", cluster.broker_url, "--state-dir", str(cluster.state_dir)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args, *common], capture_output=True, text=True, timeout=60)

    assert (
        cli("submit", "--id", "c1", "--type", "sleep", "--payload", '{"seconds": 0}').stdout.strip()
        == "c1"
    )
    assert (
        cli("submit", "--id", "stuck", "--type", "sleep", "--constraint", "site=mars").returncode
        == 0
    )
    assert (
        cli("submit", "--id", "long", "--type", "sleep", "--payload", '{"seconds": 60}').returncode
        == 0
    )
    cluster.wait_states(["c1"])
    status = cli("status", "c1")
    assert status.returncode == 0 and "succeeded" in status.stdout and "w1" in status.stdout
    wait_until(lambda: "site=mars" in cli("explain", "stuck").stdout, 20, "explain")
    wait_until(lambda: (r := cluster.task("long")) is not None and r.state == "running", 20, "long")
    assert cli("cancel", "long").returncode == 0
    cluster.wait_states(["long"], ("cancelled",))
    bad = cli("submit", "--type", "sleep", "--priority", "12")
    assert bad.returncode == 2 and "priority" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("submit", "--type", "sleep", "--payload", "{seconds: 1}")
    assert bad.returncode == 2 and "--payload is not valid JSON" in bad.stderr
    missing = cli("status", "nope")
    assert missing.returncode == 2 and "no task 'nope'" in missing.stderr
    down = subprocess.run(
        [*base, "submit", "--type", "sleep", "--broker-url", "amqp://u:p@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2 and "cannot reach the broker" in down.stderr
    assert "Traceback" not in down.stderr


def test_a_cancel_right_behind_its_submit_cancels_it(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.send([sleep_task("soon-gone", 30.0), Cancel("soon-gone"), Cancel("never-was")])
    rows = cluster.wait_states(["soon-gone"], ("cancelled",), timeout=30)
    assert rows["soon-gone"].assigned_at is None
    assert cluster.task("never-was") is None


def test_prometheus_metrics(broker_url: str, tmp_path: Path) -> None:
    port = free_port()
    with LocalCluster(
        broker_url=broker_url, workdir=tmp_path, scheduler_args=("--metrics-port", str(port))
    ) as c:
        c.start_scheduler()
        c.start_worker("w1", ["sleep"], 2)
        c.wait_states(c.submit(sleep_task("m1"), sleep_task("m2")))
        c.submit(sleep_task("stuck", constraints={"site": "nowhere"}))

        def scrape() -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            return {
                line.split()[0]: float(line.split()[1])
                for line in text.decode().splitlines()
                if line.startswith("mm_") and " " in line
            }

        wait_until(lambda: scrape().get("mm_pending_tasks") == 1.0, 20, "metrics to show the wait")
        metrics = scrape()
        assert metrics["mm_placements_total"] >= 2
        assert metrics["mm_submitted_total"] == 3
        assert metrics["mm_live_workers"] == 1
        assert metrics["mm_round_seconds_count"] >= 1


def test_a_failing_task_is_retried_after_its_backoff_then_dead(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 1)
    failing = TaskRequest("flaky", "sleep", {"fail": True, "message": "disk full"}, max_attempts=2)
    row = cluster.wait_states(cluster.submit(failing), ("dead",), timeout=30)["flaky"]
    assert row.attempt == 2 and row.error == "disk full"
    history = cluster.ledger().history("flaky")
    failed = [h["at"] for h in history if h["state"] == "failed"]
    assert [h["attempt"] for h in history if h["state"] == "failed"] == [1, 2]
    assert failed[1] - failed[0] >= 1.0  # the first retry waited out its 1 s backoff
