"""The operator's commands against the real system: a scheduler process, Serf agents,
worker processes and the real broker; the CLI run as a process, as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker import users
from matchmaker.devtools.cluster import ROOT, LocalCluster, wait_until
from matchmaker.messages import Retry, TaskRequest
from matchmaker.wire import amqp, broker
from tests.cli_support import cli, cli_json, where
from tests.conftest import RoleUsers, rabbitmqctl

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster", round_interval=0.05)
    try:
        c.start_scheduler()
        yield c
    finally:
        c.stop()


def sleep(task_id: str, seconds: float = 0.0, **fields: object) -> TaskRequest:
    return TaskRequest(task_id, "sleep", {"seconds": seconds}, **fields)  # type: ignore[arg-type]


def queue_exists(url: str, queue: str) -> bool:
    connection = amqp.plain(url)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except amqp.ChannelClosedByBroker as error:
        assert error.reply_code == 404
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_tasks_retry_and_live_events(cluster: LocalCluster) -> None:
    c = cluster
    c.start_worker("w1", ["sleep"], 2)
    follow = subprocess.Popen(
        [sys.executable, "-m", "matchmaker", "events", *where(c), "--follow", "--json",
         "--last", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follow.stderr is not None
        assert "following live events" in follow.stderr.readline()  # bound: none is missed
        submitted = cli_json(c, "submit", "--type", "sleep", "--payload", '{"seconds": 0}')
        ids = submitted["submitted"]
        c.wait_states(ids)
        dead = c.submit(TaskRequest("doomed", "sleep", {"fail": True}, max_attempts=1))
        c.wait_states(dead, ("dead",))
        seen: list[dict[str, object]] = []
        assert follow.stdout is not None
        while not any(e["id"] == "doomed" and e["state"] == "dead" for e in seen):
            line = follow.stdout.readline()
            assert line, follow.stderr.read() if follow.stderr else "events ended"
            seen.append(json.loads(line))
        states = [e["state"] for e in seen if e["id"] == ids[0]]
        assert "succeeded" in states, seen
    finally:
        follow.terminate()
        follow.wait(10)

    page = cli_json(c, "tasks", "--state", "succeeded")
    assert [t["id"] for t in page["tasks"]] == ids and page["next_cursor"] is None
    assert cli_json(c, "tasks", "--state", "dead", "--type", "sleep")["tasks"][0]["id"] == "doomed"
    c.submit(*[sleep(f"p-{i}") for i in range(3)])
    c.wait_states([f"p-{i}" for i in range(3)])
    first = cli_json(c, "tasks", "--limit", "2", "--worker", "w1")
    assert len(first["tasks"]) == 2 and first["next_cursor"]
    rest = cli_json(c, "tasks", "--limit", "2", "--worker", "w1", "--cursor", first["next_cursor"])
    listed = [t["id"] for t in first["tasks"] + rest["tasks"]]
    assert listed[:3] == ["p-2", "p-1", "p-0"] and len(set(listed)) == len(listed)
    table = cli(c, "tasks", "--state", "dead")
    assert table.returncode == 0 and "doomed" in table.stdout and "1/1" in table.stdout

    refused = cli(c, "retry", ids[0])
    assert refused.returncode == 2 and "only a dead or cancelled task" in refused.stderr
    assert cli_json(c, "retry", "doomed")["state"] == "retry requested"
    wait_until(lambda: (r := c.task("doomed")) is not None and r.attempt == 2, 20, "attempt 2")
    recent = cli(c, "events", "--task", "doomed", "--last", "50")
    assert recent.returncode == 0 and "retried" in recent.stdout, recent.stdout


def test_dead_letters_are_listed_replayed_and_purged(cluster: LocalCluster) -> None:
    c = cluster
    c.start_worker("w1", ["sleep"], 1)
    c.send([Retry("later")])  # no such task yet: dead-lettered
    broker.send_requests(c.broker_url, [b"{not json"])
    wait_until(lambda: len(cli_json(c, "dead", "list")["letters"]) == 2, 20, "two letters")
    letters = cli_json(c, "dead", "list")["letters"]
    assert len(cli_json(c, "dead", "list")["letters"]) == 2  # looking loses nothing
    first = cli_json(c, "dead", "list", "--limit", "1")
    assert (len(first["letters"]), first["total"]) == (1, 2)
    assert len(cli_json(c, "dead", "list")["letters"]) == 2  # nor does looking at one
    by_reason = {("JSON" in x["reason"]): x for x in letters}
    garbage, retry = by_reason[True], by_reason[False]
    assert "no such task" in retry["reason"] and retry["source"] == "mm.requests"
    text = cli(c, "dead", "list")
    assert retry["name"] in text.stdout and "no such task" in text.stdout

    c.wait_states(
        c.submit(TaskRequest("later", "sleep", {"fail": True}, max_attempts=1)), ("dead",)
    )
    done = cli(c, "dead", "replay", "--all", "--json")
    assert done.returncode == 1  # the garbage stays
    answer = json.loads(done.stdout)
    assert answer["replayed"] == [retry["name"]]
    assert "still invalid" in answer["kept"][garbage["name"]]
    wait_until(lambda: (r := c.task("later")) is not None and r.attempt == 2, 20, "replayed retry")
    assert [x["name"] for x in cli_json(c, "dead", "list")["letters"]] == [garbage["name"]]

    assert cli(c, "dead", "purge").returncode == 2
    missing = cli(c, "dead", "purge", "nosuch", "--yes")
    assert missing.returncode == 2 and "no letter 'nosuch'" in missing.stderr
    assert cli_json(c, "dead", "purge", garbage["name"], "--yes")["purged"] == 1
    assert cli_json(c, "dead", "list")["letters"] == []
    broker.send_requests(c.broker_url, [b"[]", b"7"])
    wait_until(lambda: len(cli_json(c, "dead", "list")["letters"]) == 2, 20, "two more letters")
    assert cli_json(c, "dead", "purge", "--yes")["purged"] == 2


def test_drain_deadline_moves_running_work_elsewhere(cluster: LocalCluster) -> None:
    c = cluster
    c.start_worker("w1", ["sleep"], 1)
    c.submit(sleep("long", 8))
    wait_until(lambda: (r := c.task("long")) is not None and r.state == "running", 20, "running")
    c.start_worker("w2", ["sleep"], 1)
    started = time.monotonic()
    done = cli(c, "drain", "w1", "--deadline", "1", "--wait", "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "w1: drained, nothing running" in done.stdout
    assert time.monotonic() - started < 8  # not by the task's end: the deadline moved it
    row = c.wait_states(["long"], ("running", "succeeded"))["long"]
    assert (row.worker, row.attempt) == ("w2", 2)
    c.wait_log(c.workers["w1"], "cancel received id=long", 10)
    history = json.loads(cli(c, "status", "long", "--json").stdout)["history"]
    assert any("deadline passed" in (h["note"] or "") for h in history), history
    assert cli_json(c, "drain", "w1", "--undo")["state"] == "undrain requested"


def test_a_drain_deadline_survives_a_takeover(cluster: LocalCluster) -> None:
    c = cluster
    c.start_worker("w1", ["sleep"], 1)
    c.submit(sleep("long", 40))
    wait_until(lambda: (r := c.task("long")) is not None and r.state == "running", 20, "running")
    c.start_worker("w2", ["sleep"], 1)
    standby = c.start_scheduler(standby=True, wait=False)
    c.wait_log(standby, "standing by", 30)
    assert cli(c, "drain", "w1", "--deadline", "5").returncode == 0

    def drained() -> bool:
        ledger = c.ledger()
        try:
            return "w1" in ledger.drain_deadlines()
        finally:
            ledger.close()

    wait_until(drained, 20, "the drain and its deadline in the ledger")
    assert c.scheduler is not None
    c.scheduler.stop()
    c.wait_log(standby, "this scheduler is active", 30)
    wait_until(
        lambda: (r := c.task("long")) is not None and (r.worker, r.attempt) == ("w2", 2),
        25,  # well before the 40 s task could end on w1
        "the task moved to w2 by the deadline the first scheduler took in",
    )
    c.wait_log(c.workers["w1"], "cancel received id=long", 10)


def test_workers_gc_deletes_only_departed_workers_queues(cluster: LocalCluster) -> None:
    c = cluster
    c.start_worker("gone", ["sleep"], 1)
    c.start_worker("stays", ["sleep"], 1)
    c.wait_states(c.submit(sleep("t1")))
    c.workers["gone"].stop()
    c.wait_for_worker("gone", present=False)
    assert queue_exists(c.broker_url, "mm.worker.gone")
    preview = cli_json(c, "workers", "gc", "--dry-run")
    assert preview["departed"] == ["gone"] and preview["kept"] == {"stays": "alive"}
    assert queue_exists(c.broker_url, "mm.worker.gone")
    done = cli_json(c, "workers", "gc")
    assert done["deleted"] == {"gone": {"mm.worker.gone": "deleted", "mm.control.gone": "deleted"}}
    assert not queue_exists(c.broker_url, "mm.worker.gone")
    assert not queue_exists(c.broker_url, "mm.control.gone")
    assert queue_exists(c.broker_url, "mm.worker.stays")
    assert cli_json(c, "workers", "gc")["departed"] == []
    table = cli(c, "workers")
    lines = table.stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and "stays" in table.stdout
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # columns aligned


def rabbitmq_queues(vhost: str) -> dict[str, str]:
    """Queue name -> the policy applied to it, as the broker lists them."""
    raw = users.rabbitmqctl("list_queues", "-p", vhost, "name", "policy", "--formatter", "json")
    return {q["name"]: q.get("policy") or "" for q in json.loads(raw)}


def test_worker_queue_expiry_policy_applies_to_existing_queues(broker_url: str) -> None:
    vhost = broker_url.rsplit("/", 1)[1]
    connection = amqp.plain(broker_url)
    try:
        broker.declare_core(connection.channel())
        broker.declare_worker(connection.channel(), "old")  # made before the policy
        users.expire_worker_queues(vhost, 600.0)
        names = lambda: rabbitmq_queues(vhost)  # noqa: E731  (a passive declare is a use)
        wait_until(
            lambda: names().get("mm.worker.old") == users.WORKER_QUEUES_POLICY, 30, "the policy"
        )
        # the same full declare as before the policy is still accepted (an x-expires
        # argument would have been refused: PRECONDITION_FAILED)
        connection.channel().queue_declare(
            "mm.worker.old", durable=True, arguments={"x-queue-type": broker.queue_type()}
        )
        with pytest.raises(amqp.ChannelClosedByBroker) as refused:
            connection.channel().queue_declare(
                "mm.worker.old",
                durable=True,
                arguments={"x-queue-type": broker.queue_type(), "x-expires": 1000},
            )
        assert refused.value.reply_code == 406  # why it is a policy, not an argument
        users.expire_worker_queues(vhost, 1.0)  # set again: the expiry changes in place
        wait_until(lambda: "mm.worker.old" not in names(), 60, "the queue expiring")
        assert "mm.control.old" not in names()
        assert queue_exists(broker_url, broker.REQUESTS)  # only worker queues expire
    finally:
        if connection.is_open:
            connection.close()
        rabbitmqctl("clear_policy", "-p", vhost, users.WORKER_QUEUES_POLICY)


def test_the_admin_user_reads_dead_letters_and_follows_events(
    broker_url: str, role_users: RoleUsers
) -> None:
    admin = role_users.url(role_users.admin)
    client = role_users.url(role_users.clients[0])
    dev = amqp.plain(broker_url)
    try:
        dev.channel().basic_publish(
            "", broker.DEAD, b"{bad", broker.dead_letter_properties("not JSON", broker.REQUESTS)
        )
    finally:
        dev.close()
    listed = cli_json(None, "dead", "list", "--broker-url", admin)
    assert [x["reason"] for x in listed["letters"]] == ["not JSON"]
    refused = cli(None, "dead", "list", "--broker-url", client)
    assert refused.returncode == 2 and "ACCESS_REFUSED" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1

    follow = subprocess.Popen(
        [sys.executable, "-m", "matchmaker", "events", "--follow", "--json", "--last", "0",
         "--broker-url", admin],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follow.stderr is not None and follow.stdout is not None
        assert "following live events" in follow.stderr.readline()
        event = {"id": "t1", "state": "succeeded", "attempt": 1, "worker": "w1", "at": 1.0}
        dev = amqp.plain(broker_url)
        try:
            body = json.dumps({"v": 1, "kind": "events", "events": [event]}).encode()
            dev.channel().basic_publish(broker.EVENTS, "task.succeeded", body)
        finally:
            dev.close()
        assert json.loads(follow.stdout.readline()) == event
    finally:
        follow.terminate()
        follow.wait(10)
    connection = amqp.plain(admin)
    try:  # reading is all: no publishing events, no reading requests
        with pytest.raises(amqp.ChannelClosedByBroker) as caught:
            connection.channel().basic_get(broker.REQUESTS)
        assert caught.value.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()


def test_the_scheduler_copes_with_a_worker_queue_deleted_under_it(broker_url: str) -> None:
    """What ``workers gc`` or the expiry policy may do: the dispatcher's purge of a deleted
    queue keeps its channel, and the worker's queues and cancel binding are made again."""
    from matchmaker.wire.dispatch import Dispatcher

    connection = amqp.plain(broker_url)
    try:
        channel = connection.channel()
        broker.declare_core(channel)
        channel.confirm_delivery()
        dispatcher = Dispatcher(channel)
        dispatcher.declare("x")
        other = connection.channel()
        other.queue_delete("mm.worker.x")
        other.queue_delete("mm.control.x")
        assert dispatcher.purge("x") == 0 and channel.is_open
        dispatcher.declare("x")  # it came back
        assert queue_exists(broker_url, "mm.worker.x")
        channel.basic_publish(broker.CONTROL, "cancel.x", b"{}")
        method, _, _ = connection.channel().basic_get("mm.control.x", auto_ack=True)
        assert method is not None  # the cancel binding is back too
    finally:
        if connection.is_open:
            connection.close()


def test_users_setup_sets_the_worker_queue_expiry(broker_url: str, tmp_path: Path) -> None:
    vhost = broker_url.rsplit("/", 1)[1]
    tag = uuid.uuid4().hex[:8]
    made = [f"mm-scheduler-{tag}", f"mm-admin-{tag}", f"mm-client-{tag}"]
    try:
        done = cli_json(
            None, "users", "setup", "--vhost", vhost, "--secrets", str(tmp_path / "secrets"),
            "--scheduler-user", made[0], "--admin-user", made[1], "--client", made[2],
            "--worker-queue-expiry", "120",
        )  # fmt: skip
        assert [u["user"] for u in done["users"]] == made and done["worker_queue_expiry"] == 120
        raw = users.rabbitmqctl("list_policies", "-p", vhost, "--formatter", "json")
        policy = {p["name"]: p for p in json.loads(raw)}[users.WORKER_QUEUES_POLICY]
        assert json.loads(policy["definition"]) == {"expires": 120000}
        assert policy["pattern"] == users.WORKER_QUEUES_PATTERN
    finally:
        for user in made:
            rabbitmqctl("delete_user", user)
        rabbitmqctl("clear_policy", "-p", vhost, users.WORKER_QUEUES_POLICY)


@pytest.mark.parametrize(
    "url", ["amqp://guest@127.0.0.1:5672/%2F", "amqp://u:secret@127.0.0.1:99999/", "http://x/"]
)
def test_an_unusable_broker_url_is_one_sentence_from_every_process(url: str) -> None:
    """A process given a broker URL it cannot use says so and exits 2, without a
    traceback and without the URL's password (a user without one crashed pika)."""
    for argv in (
        ["matchmaker", "submit", "--type", "sleep", "--broker-url", url],
        ["workers", "--name", "w1", "--caps", "sleep", "--no-serf", "--broker-url", url],
    ):
        done = subprocess.run(
            [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert done.returncode == 2, done.stderr
        assert "cannot be used" in done.stderr and "Traceback" not in done.stderr
        assert "secret" not in done.stderr
