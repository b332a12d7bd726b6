"""Broker-side failure detection (``matchmaker.liveness``) on the real broker.

RabbitMQ's ``rabbitmq_event_exchange`` plugin must be enabled (scripts/broker.sh
does it); the scheduler's user is a test-made one with the rights
``identity.events_role`` grants in ``/``, deleted with the test's users.
"""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.liveness import Liveness
from matchmaker.messages import TaskRequest, encode
from matchmaker.wire import amqp, broker
from membership.agent import SerfAgent, free_port
from membership.inventory import Change
from membership.tags import encode_worker_tags
from tests.conftest import RoleUsers

pytestmark = pytest.mark.timeout(180)

CONSUMER = """
import sys, threading, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
tag = channel.basic_consume(sys.argv[2], lambda *a: None)
def cancel():
    sys.stdin.readline()  # a line on stdin: cancel the consumer, keep the connection
    connection.add_callback_threadsafe(lambda: channel.basic_cancel(tag))
threading.Thread(target=cancel, daemon=True).start()
print("consuming", flush=True)
channel.start_consuming()
"""


def _plugin_enabled() -> bool:
    out = subprocess.run(
        ["rabbitmq-plugins", "is_enabled", "rabbitmq_event_exchange"],
        capture_output=True,
        timeout=60,
    )
    return out.returncode == 0


@pytest.fixture(scope="module", autouse=True)
def _event_exchange() -> None:
    if not _plugin_enabled():
        pytest.fail("rabbitmq_event_exchange is not enabled (bash scripts/broker.sh start)")


def _consumer(url: str, name: str) -> subprocess.Popen[str]:
    """A process consuming worker ``name``'s queue, as that worker would."""
    process = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url, broker.worker_queue(name)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "consuming"
    return process


def _next(changes: queue.Queue[Change], name: str, kind: str, timeout: float = 10.0) -> float:
    """Wait for ``kind`` about ``name``; when it came (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            change = changes.get(timeout=left)
        except queue.Empty:
            break
        if change.name == name and change.kind == kind:
            return time.monotonic()
    raise AssertionError(f"no {kind} change for {name} within {timeout} s")


@pytest.fixture
def liveness(role_users: RoleUsers) -> Iterator[tuple[Liveness, queue.Queue[Change]]]:
    changes: queue.Queue[Change] = queue.Queue()
    url = role_users.url(role_users.scheduler)
    follower = Liveness(url, "/", changes.put, resync=0.5).start()
    try:
        yield follower, changes
    finally:
        follower.stop()


def test_a_queue_without_consumer_is_absent_and_a_killed_consumer_is_seen_at_once(
    liveness: tuple[Liveness, queue.Queue[Change]], role_users: RoleUsers
) -> None:
    follower, changes = liveness
    a, b = role_users.workers
    assert follower.active
    assert follower.present({a: 1, b: 2}) == {}  # not looked up yet: left out, asked about
    process = _consumer(role_users.worker_url(a), a)
    try:
        _next(changes, a, "connected")
        assert follower.present({a: 1, b: 2}) == {a: 1}
        killed = time.monotonic()
        process.send_signal(signal.SIGKILL)
        seen = _next(changes, a, "disconnected")
        assert seen - killed < 5.0, "slower than Serf would be"
        logging.getLogger(__name__).info("kill -9 to disconnected: %.3f s", seen - killed)
        assert follower.present({a: 1, b: 2}) == {}
    finally:
        process.kill()
        process.wait()


def test_a_consumer_there_before_the_first_look_up_counts_and_a_cancel_is_no_failure(
    liveness: tuple[Liveness, queue.Queue[Change]], role_users: RoleUsers
) -> None:
    follower, changes = liveness
    a, _ = role_users.workers
    process = _consumer(role_users.worker_url(a), a)
    try:
        assert follower.present({a: 1}) == {}
        _next(changes, a, "connected")
        assert follower.present({a: 1}) == {a: 1}
        assert process.stdin is not None
        process.stdin.write("cancel\n")  # its own cancel (a drain): no dispatches, no failure
        process.stdin.flush()
        _next(changes, a, "unsubscribed")
        assert follower.present({a: 1}) == {}
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_without_the_right_to_read_the_events_it_stands_aside_with_one_warning(
    role_users: RoleUsers, caplog: pytest.LogCaptureFixture
) -> None:
    changes: queue.Queue[Change] = queue.Queue()
    client = role_users.url(role_users.admin)  # a client's user: no rights in /
    with caplog.at_level(logging.WARNING, "matchmaker.liveness"):
        follower = Liveness(client, "/", changes.put).start()
        try:
            assert not follower.active
            assert follower.present({"x": 1}) == {"x": 1}  # Serf alone decides
        finally:
            follower.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "failed workers are found by Serf alone" in warnings[0].getMessage()
    assert "Traceback" not in caplog.text


# -- with the scheduler and real workers ------------------------------------------------


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster", trusted_users=())
    try:
        yield c
    finally:
        c.stop()


def _submit(url: str, *requests: TaskRequest) -> None:
    broker.send_requests(url, [encode(r) for r in requests])


def test_a_killed_workers_tasks_run_elsewhere_before_serf_notices(
    cluster: LocalCluster, role_users: RoleUsers
) -> None:
    a, b = role_users.workers
    client = role_users.url(role_users.clients[0])
    cluster.start_scheduler(broker_url=role_users.url(role_users.scheduler))
    cluster.start_worker(
        a, ["sleep"], 2, broker_url=role_users.worker_url(a), extra=["--grace", "0"]
    )
    ids = ["long-0", "long-1"]
    _submit(client, *(TaskRequest(i, "sleep", {"seconds": 60}, timeout=600) for i in ids))

    def running(worker: str, attempt: int) -> bool:
        rows = [cluster.task(i) for i in ids]
        return all(
            r is not None and r.state == "running" and r.worker == worker and r.attempt == attempt
            for r in rows
        )

    wait_until(lambda: running(a, 1), 60, f"the tasks to run on {a}")
    cluster.start_worker(b, ["sleep"], 2, broker_url=role_users.worker_url(b))
    killed = time.time()
    cluster.workers[a].popen.send_signal(signal.SIGKILL)
    wait_until(lambda: running(b, 2), 30, f"the killed worker's tasks to run on {b}")
    started = [r.started_at for i in ids if (r := cluster.task(i)) is not None and r.started_at]
    text = (cluster.workdir / "scheduler.log").read_text()
    assert f"worker {a} disconnected: 2 tasks rescheduled" in text  # the broker told first
    assert _held(role_users.url(role_users.scheduler), a) == 0  # its old dispatches purged
    print(f"kill -9 to running elsewhere: {max(started) - killed:.2f} s")


def test_a_draining_worker_finishes_its_running_task_without_a_second_attempt(
    cluster: LocalCluster, role_users: RoleUsers
) -> None:
    a, _ = role_users.workers
    client = role_users.url(role_users.clients[0])
    cluster.start_scheduler(broker_url=role_users.url(role_users.scheduler))
    cluster.start_worker(
        a, ["sleep"], 2, broker_url=role_users.worker_url(a), extra=["--grace", "30"]
    )
    _submit(client, TaskRequest("last", "sleep", {"seconds": 2}))
    wait_until(
        lambda: (r := cluster.task("last")) is not None and r.state == "running", 60, "to run"
    )
    cluster.workers[a].signal(signal.SIGTERM)  # stops consuming, lets the task finish
    rows = cluster.wait_states(["last"], timeout=60)
    assert rows["last"].attempt == 1 and rows["last"].worker == a
    text = (cluster.workdir / "scheduler.log").read_text()
    assert f"worker {a} unsubscribed" in text and f"worker {a} disconnected" not in text


def test_a_worker_alive_in_serf_without_a_consumer_gets_nothing(
    cluster: LocalCluster, role_users: RoleUsers
) -> None:
    a, b = role_users.workers
    client = role_users.url(role_users.clients[0])
    cluster.start_scheduler(broker_url=role_users.url(role_users.scheduler))
    agent = cluster.start_agent()
    ghost = SerfAgent(
        a,
        tags=encode_worker_tags(a, ["sleep"], 8),
        encrypt_key=cluster.encrypt_key,
        rpc_auth=cluster.auth_key,
        join=[agent.bind_addr],
        workdir=cluster.workdir / "serf-ghost",
    ).start()
    try:
        cluster.wait_for_worker(a, present=True)
        cluster.start_worker(b, ["sleep"], 2, broker_url=role_users.worker_url(b))
        ids = [f"t{i}" for i in range(6)]
        _submit(client, *(TaskRequest(i, "sleep", {"seconds": 0}) for i in ids))
        rows = cluster.wait_states(ids, timeout=60)
        assert {r.worker for r in rows.values()} == {b}  # spread would have used the ghost
        assert _held(role_users.url(role_users.scheduler), a) == 0
    finally:
        ghost.stop()


def _held(url: str, name: str) -> int:
    """How many messages worker ``name``'s queue holds."""
    connection = amqp.plain(url)
    try:
        ok = connection.channel().queue_declare(broker.worker_queue(name), passive=True)
        return int(ok.method.message_count)
    finally:
        connection.close()


def test_an_unreachable_broker_is_retried_not_taken_for_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"amqp://u:p@127.0.0.1:{free_port()}/x"  # nothing listens there
    changes: queue.Queue[Change] = queue.Queue()
    with caplog.at_level(logging.INFO, "matchmaker.liveness"):
        follower = Liveness(closed, "/", changes.put).start()
        try:
            assert not follower.active
            assert follower.present({"x": 1}) == {"x": 1}  # Serf alone, meanwhile
            assert follower._thread is not None and follower._thread.is_alive()  # retrying
        finally:
            follower.stop()
    assert "failure detection is off" not in caplog.text
