"""Push-mode worker: real RabbitMQ (a vhost per test), real ``python -m workers`` processes."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.rabbit_node import RabbitNode
from matchmaker.messages import Cancel, TaskDispatch, TaskResult, decode_dispatches, encode
from matchmaker.wire import amqp
from matchmaker.wire.broker import CONTROL, PERSISTENT, RESULTS, declare_worker, route, worker_queue
from membership.agent import free_port
from tests.conftest import rabbitmqctl
from tests.workers_support import ROOT, Client, client, spawn, wait_for  # noqa: F401

pytestmark = pytest.mark.broker

NO_SERF = ("--no-serf",)
BIG_ATTRS = [arg for i in range(6) for arg in ("--attr", f"a{i}={'y' * 100}")]


def test_sleep_task_reports_running_then_succeeded(spawn, client: Client) -> None:  # noqa: F811
    spawn("--name", "w1", "--caps", "sleep", "--slots", "2", *NO_SERF)
    client.dispatch("w1", "t1", {"seconds": 0.5})
    final = client.final("t1")
    states = [r.state for r in client.of("t1")]
    assert states == ["running", "succeeded"]
    assert final.worker == "w1" and final.attempt == 1
    assert final.output == {"slept": 0.5}
    assert final.started_at is not None and final.finished_at is not None
    assert final.received_at is not None
    assert final.received_at <= final.started_at <= final.finished_at
    assert all(r.received_at == final.received_at for r in client.of("t1"))  # running too
    wait_for(lambda: client.depth(worker_queue("w1")) == 0, what="the dispatch to be acked")


def test_failures_are_reported_and_bad_messages_dead_lettered(spawn, client: Client) -> None:  # noqa: F811
    worker = spawn("--name", "w1", "--caps", "sleep", *NO_SERF)
    client.dispatch("w1", "boom", {"fail": True, "message": "disk on fire"})
    client.dispatch("w1", "alien", {}, type="quantum_leap")
    client.dispatch("w1", "not-mine", {}, type="data_staging")
    client.dispatch("w1", "late", {}, deadline=time.time() - 5)
    client.publish(worker_queue("w1"), b'{"v": 1, "kind": "dispatch", "id": "x"')
    client.dispatch("w1", "after", {"seconds": 0})

    boom = client.final("boom")
    assert boom.state == "failed" and boom.error == "disk on fire"
    alien = client.final("alien")
    assert alien.state == "failed"
    assert alien.error == "worker w1 does not run task type quantum_leap"
    not_mine = client.final("not-mine")
    assert not_mine.error == "worker w1 does not run task type data_staging"
    late = client.final("late")
    assert late.state == "failed" and late.error and "deadline passed" in late.error
    headers, body = client.dead()
    assert body == b'{"v": 1, "kind": "dispatch", "id": "x"'
    assert "not valid JSON" in headers["x-mm-reason"]
    assert headers["x-mm-source"] == "mm.worker.w1"
    assert client.final("after").state == "succeeded"  # still up after all that
    assert worker.process.poll() is None
    wait_for(lambda: client.depth(worker_queue("w1")) == 0, what="every message to be acked")


def test_at_most_slots_tasks_run_at_once(spawn, client: Client) -> None:  # noqa: F811
    spawn("--name", "w1", "--caps", "sleep", "--slots", "2", *NO_SERF)
    ids = [f"t{i}" for i in range(6)]
    for task_id in ids:
        client.dispatch("w1", task_id, {"seconds": 0.6})
    finals = [client.final(task_id, timeout=20) for task_id in ids]
    assert all(r.state == "succeeded" for r in finals)
    edges = sorted(
        [(r.started_at, 1) for r in finals] + [(r.finished_at, -1) for r in finals],
        key=lambda edge: (edge[0], edge[1]),  # at a tie, an end counts before a start
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_deadline_and_cancel_stop_long_tasks(spawn, client: Client) -> None:  # noqa: F811
    worker = spawn("--name", "w1", "--caps", "sleep", "--slots", "2", *NO_SERF)
    client.dispatch("w1", "slow", {"seconds": 60}, deadline=time.time() + 1.0)
    client.dispatch("w1", "doomed", {"seconds": 60})
    client.running("doomed")
    client.channel.basic_publish(CONTROL, "cancel.w1", encode(Cancel("doomed")))
    doomed = client.final("doomed")
    assert doomed.state == "failed" and doomed.error == "sleep: cancelled"
    client.channel.basic_publish(CONTROL, "cancel.w1", encode(Cancel("not-yet")))
    wait_for(lambda: "cancel received id=not-yet held=0" in worker.text(), what="the early cancel")
    client.dispatch("w1", "not-yet", {"seconds": 60})
    not_yet = client.final("not-yet")
    assert not_yet.state == "failed" and not_yet.error == "cancelled before it started"
    slow = client.final("slow")
    assert slow.state == "failed"
    assert slow.error and slow.error.startswith("timed out after")


def test_a_redelivered_dispatch_runs_once(spawn, client: Client) -> None:  # noqa: F811
    spawn("--name", "w1", "--caps", "sleep", *NO_SERF)
    client.dispatch("w1", "twice", {"seconds": 0.3})
    client.dispatch("w1", "twice", {"seconds": 0.3})
    client.dispatch("w1", "marker", {"seconds": 0})
    client.final("marker")
    wait_for(lambda: client.depth(worker_queue("w1")) == 0, what="both copies to be acked")
    client.final("twice")
    reports = client.of("twice")
    assert [r.state for r in reports][:2] == ["running", "succeeded"]
    # ran once: a copy that came after the result answers with the same result again
    assert {r.state for r in reports[2:]} <= {"succeeded"}
    assert len({r.started_at for r in reports}) == 1


def test_reconnects_and_delivers_results_of_tasks_run_meanwhile(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    broker_url: str,
) -> None:
    worker = spawn("--name", "w1", "--caps", "sleep", *NO_SERF)
    client.dispatch("w1", "survivor", {"seconds": 1.5})
    client.running("survivor")
    vhost = broker_url.rsplit("/", 1)[1]
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test: cut the worker off"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    client.close()
    fresh = Client(broker_url)
    try:
        survivor = fresh.final("survivor", timeout=30)
        assert survivor.state == "succeeded"
        wait_for(lambda: "reconnected" in worker.text(), what="the worker to reconnect")
        fresh.dispatch("w1", "next", {"seconds": 0})
        assert fresh.final("next").state == "succeeded"
        wait_for(lambda: fresh.depth(worker_queue("w1")) == 0, what="the redelivery to be acked")
        assert [r.state for r in fresh.of("survivor")] == ["succeeded"]
    finally:
        fresh.close()


def test_sigterm_drains_a_running_task(spawn, client: Client) -> None:  # noqa: F811
    worker = spawn("--name", "w1", "--caps", "sleep", "--grace", "20", *NO_SERF)
    client.dispatch("w1", "finishing", {"seconds": 1.0})
    client.running("finishing")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert client.final("finishing", timeout=1).state == "succeeded"
    assert "draining" in worker.text()


def test_grace_period_over_cancels_running_tasks(spawn, client: Client) -> None:  # noqa: F811
    worker = spawn("--name", "w1", "--caps", "sleep", "--grace", "0.5", *NO_SERF)
    client.dispatch("w1", "endless", {"seconds": 600})
    client.running("endless")
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0
    endless = client.final("endless", timeout=1)
    assert endless.state == "failed" and endless.error == "sleep: cancelled"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_unreachable_broker_is_one_sentence_and_exit_2() -> None:
    url = f"amqp://matchmaker:matchmaker@127.0.0.1:{free_port()}/matchmaker"
    args = ("--name", "w1", "--caps", "sleep", "--no-serf", "--broker-url", url)
    done = _cli(*args, "--broker-wait", "0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot reach the broker at 127.0.0.1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _cli(*args, "--broker-wait", "1")  # retried, then the same sentence with its bound
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "(tried for 1s)" in lines[-1] and "cannot reach the broker" in lines[-1]
    assert any("retrying" in line for line in lines[:-1])


def test_a_worker_started_before_its_broker_waits_for_it(tmp_path: Path) -> None:
    """A host's boot, or a broker restart: the worker keeps trying, then serves."""
    node = RabbitNode(f"mm-late-{secrets.token_hex(3)}@localhost", tmp_path / "node")
    url = f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"  # a fresh node's own user
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "--name", "late1", "--caps", "sleep", *NO_SERF,
             "--broker-url", url, "--broker-wait", "300"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: "unreachable" in log.read_text(), what="the worker to retry")
        node.launch()
        node.wait()

        def consumers() -> int:
            rows = json.loads(node.ctl("list_queues", "name", "consumers", "--formatter", "json"))
            return sum(r["consumers"] for r in rows if r["name"] == worker_queue("late1"))

        wait_for(lambda: consumers() == 1, timeout=60, what="the worker to consume its queue")
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        node.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--caps", "sleep"], "--name"),
        (["--name", "w1", "--caps", "sleep", "--slots", "0"], "slots must be from 1"),
        (["--name", "w 1", "--caps", "sleep"], "worker name"),
        (["--name", "w1", "--caps", "teleport"], "unknown task type(s) in --caps: teleport"),
        (["--name", "w1", "--caps", "sleep", "--attr", "site"], "key=value"),
        (["--name", "w1", "--caps", "sleep", *BIG_ATTRS], "512-byte limit"),
        (["--name", "w1", "--caps", "sleep", "--attr", "site=i u"], "unsafe characters"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_killed_worker_leaves_its_dispatch_in_the_queue(spawn, client: Client) -> None:  # noqa: F811
    first = spawn("--name", "w1", "--caps", "sleep", *NO_SERF)
    client.dispatch("w1", "orphan", {"seconds": 1.0})
    client.running("orphan")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    wait_for(lambda: client.depth(worker_queue("w1")) == 1, what="the unacked dispatch to return")
    spawn("--name", "w1", "--caps", "sleep", *NO_SERF)  # the same worker, restarted
    orphan = client.final("orphan")
    assert orphan.state == "succeeded" and orphan.attempt == 1
    assert [r.state for r in client.of("orphan")] == ["running", "running", "succeeded"]


def _dispatch(task_id: str, seconds: float) -> bytes:
    return encode(TaskDispatch(task_id, 1, "sleep", {"seconds": seconds}, time.time() + 60))


def test_a_dispatches_batch_is_acked_only_once_every_item_is_done(spawn, client: Client) -> None:  # noqa: F811
    """A bad item is dead-lettered on its own; the message stays unacked while one task
    of it still runs, so a crash then brings the whole message back."""
    first = spawn("--name", "w1", "--caps", "sleep", "--slots", "2", *NO_SERF)
    bad = b'{"id": "b", "attempt": 1}'
    client.dispatch_batch("w1", [_dispatch("quick", 0), bad, _dispatch("long", 1.5)])
    headers, body = client.dead()
    assert headers["x-mm-reason"].startswith("dispatches[1]: ")
    assert json.loads(body)["kind"] == "dispatch"
    assert client.final("quick").state == "succeeded"
    client.running("long")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    wait_for(lambda: client.depth(worker_queue("w1")) == 1, what="the batch to come back")
    spawn("--name", "w1", "--caps", "sleep", "--slots", "2", *NO_SERF)
    assert client.final("long").state == "succeeded"
    wait_for(lambda: client.depth(worker_queue("w1")) == 0, what="the batch to be acked")


def test_a_drain_hands_back_a_batch_nothing_of_which_started(spawn, client: Client) -> None:  # noqa: F811
    """Two slots, two batches held: the first's two tasks run out the drain; its third,
    unstarted, is acked away with it (the scheduler moves it when the worker leaves);
    the second batch, nothing of which started, goes back to the queue whole."""
    declare_worker(client.channel, "w1")
    client.dispatch_batch("w1", [_dispatch("a", 1.0), _dispatch("b", 1.0), _dispatch("c", 0)])
    client.dispatch_batch("w1", [_dispatch("later-1", 0), _dispatch("later-2", 0)])
    wait_for(lambda: client.depth(worker_queue("w1")) == 2, what="both batches queued")
    worker = spawn("--name", "w1", "--caps", "sleep", "--slots", "2", "--grace", "20", *NO_SERF)
    client.running("a")
    client.running("b")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert client.final("a", timeout=1).state == client.final("b", timeout=1).state == "succeeded"
    assert client.of("c") == [] and client.of("later-1") == [] and client.of("later-2") == []
    assert "requeued_unstarted=3" in worker.text()
    assert client.depth(worker_queue("w1")) == 1
    method, _props, body = client.channel.basic_get(worker_queue("w1"), auto_ack=True)
    assert method is not None
    assert [d.id for d in decode_dispatches(body).items] == ["later-1", "later-2"]


def test_a_result_the_broker_refuses_is_sent_again(spawn, client: Client, broker_url: str) -> None:  # noqa: F811
    """mm.results full (a policy: max-length 0, reject-publish): the broker nacks the report,
    the worker keeps it and sends it again; the dispatch is acked once the result is stored."""
    vhost = broker_url.rsplit("/", 1)[1]

    def limit_results(length: int) -> None:
        """A policy on mm.results, set again rather than cleared (3.10 keeps a quorum
        queue's limit after clear_policy)."""
        limit = json.dumps({"max-length": length, "overflow": "reject-publish"})
        rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "lim", "^mm.results$", limit)

    limit_results(0)
    probe = client.connection.channel()
    probe.confirm_delivery()
    filler = encode(TaskResult("filler", 1, "nobody", "succeeded"))

    def refused() -> bool:  # a quorum queue takes one message past its limit, then nacks
        try:
            probe.basic_publish(*route(RESULTS), filler, PERSISTENT)
        except amqp.NackError:
            return True
        return False

    wait_for(refused, what="the policy to fill mm.results")
    worker = spawn("--name", "w1", "--caps", "sleep", *NO_SERF)
    client.dispatch("w1", "t1", {"seconds": 0})
    wait_for(lambda: "the broker refused 1 report" in worker.text(), what="the refusal")
    assert client.of("t1") == []
    limit_results(100_000)
    assert client.final("t1").state == "succeeded"
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert "succeeded=1 " in worker.text()  # acked once, after the confirm
