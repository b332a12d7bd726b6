"""``matchmaker.client`` against the real system: a real RabbitMQ with least-privilege users
of every role, a real scheduler and real worker processes (with their Serf agents).

One cluster serves the module (starting one costs seconds of the 2 cores); every test uses
task ids of its own. Alice and Bob are two client users, the admin a third.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.client import (
    AsyncClient,
    Client,
    ClientError,
    TaskCancelled,
    TaskDead,
    TaskHandle,
    TaskRejected,
    TaskUnknown,
)
from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.wire import amqp, broker
from tests.conftest import RoleUsers, VhostPool

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


class System:
    def __init__(self, cluster: LocalCluster, users: RoleUsers) -> None:
        self.cluster = cluster
        self.users = users
        self.alice, self.bob = users.clients
        self.admin = users.admin

    def password_file(self, user: str) -> str:
        return str(self.users.secrets / f"{user}.password")

    def bare_url(self, user: str) -> str:
        return f"amqp://{user}@127.0.0.1:5672/{self.users.vhost}"

    def client(self, user: str, **options: object) -> Client:
        return Client(self.bare_url(user), password_file=self.password_file(user), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def system(vhost_pool: VhostPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    vhost = vhost_pool.take()
    workdir = tmp_path_factory.mktemp("client")
    users = RoleUsers(f"amqp://x@127.0.0.1:5672/{vhost}", workdir / "secrets").make()
    cluster = LocalCluster(
        broker_url=users.url(users.scheduler), workdir=workdir / "cluster", trusted_users=()
    )
    try:
        cluster.scheduler_args = ("--admin-users", users.admin)
        cluster.start_scheduler()
        for name in users.workers:
            cluster.start_worker(name, ["sleep"], 4, broker_url=users.worker_url(name))
        yield System(cluster, users)
    finally:
        cluster.stop()
        users.delete()
        vhost_pool.give_back(vhost)


@pytest.fixture
def alice(system: System) -> Iterator[Client]:
    with system.client(system.alice) as client:
        yield client


@pytest.fixture
def bob(system: System) -> Iterator[Client]:
    with system.client(system.bob) as client:
        yield client


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_submit_and_wait_return_the_output(alice: Client) -> None:
    handle = alice.submit("sleep", {"seconds": 0.1}, id=tid("ok"), priority=5)
    assert handle.wait(timeout=60) == {"slept": 0.1}
    assert handle.done() and handle.result() == {"slept": 0.1}
    assert handle.state() == "succeeded" and handle.exception() is None
    again = alice.submit("sleep", {"seconds": 0.1}, id=handle.id)  # the same id: no new task
    assert again.wait(timeout=30) == {"slept": 0.1}


def test_a_task_that_fails_for_good_raises_its_error(alice: Client) -> None:
    payload = {"seconds": 0, "fail": True, "message": "the input was bad"}
    handle = alice.submit("sleep", payload, id=tid("bad"), max_attempts=2)
    with pytest.raises(TaskDead) as caught:
        handle.wait(timeout=60)
    assert caught.value.error == "the input was bad" and caught.value.attempt == 2
    assert caught.value.task_id == handle.id and "the input was bad" in str(caught.value)
    assert isinstance(handle.exception(), TaskDead)
    retried = alice.retry(handle.id)  # one more attempt, which fails again
    with pytest.raises(TaskDead) as again:
        retried.wait(timeout=60)
    assert again.value.attempt == 3


def test_a_refused_submit_raises_the_schedulers_reason(alice: Client, bob: Client) -> None:
    with pytest.raises(TaskRejected, match="priority 8 is above the cap of role 'client'"):
        alice.submit("sleep", {}, id=tid("urgent"), priority=8).wait(timeout=30)
    mine = alice.submit("sleep", {"seconds": 0}, id=tid("mine"))
    with pytest.raises(TaskRejected, match="belongs to another owner"):
        bob.submit("sleep", {"seconds": 0}, id=mine.id).wait(timeout=30)
    with pytest.raises(ValueError, match="'priority' must be an integer"):
        alice.submit("sleep", {}, priority=12)  # refused before anything is sent


def test_cancel_ends_the_wait_with_task_cancelled(alice: Client) -> None:
    running = alice.submit("sleep", {"seconds": 60}, id=tid("long"))
    wait_until(lambda: running.state() == "running", 30, "the task to run")
    parked = alice.submit("sleep", {}, id=tid("parked"), constraints={"site": "nowhere"})
    assert parked.state() == "pending"
    running.cancel()
    alice.cancel(parked.id)
    for handle in (running, parked):
        with pytest.raises(TaskCancelled):
            handle.wait(timeout=30)
        assert handle.state() == "cancelled"


def test_submit_many_confirms_all_and_refuses_a_bad_batch_whole(alice: Client) -> None:
    prefix = tid("many")
    specs = [{"type": "sleep", "payload": {"seconds": 0.01 * (n % 3)}, "id": f"{prefix}-{n}"}
             for n in range(40)]  # fmt: skip
    handles = alice.submit_many(specs)
    assert [h.id for h in handles] == [s["id"] for s in specs]
    outputs = [h.wait(timeout=90) for h in handles]
    assert outputs == [{"slept": 0.01 * (n % 3)} for n in range(40)]
    bad = [{"type": "sleep", "id": tid("never")}, {"type": "sleep", "colour": "red"}]
    with pytest.raises(ValueError, match="task 1: unknown keys"):
        alice.submit_many(bad)
    assert alice.handle(bad[0]["id"]).state() == "unknown"  # nothing was sent
    with pytest.raises(ValueError, match="task 0 must be a mapping"):
        alice.submit_many([42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not a task id"):
        alice.cancel("../etc")


def test_done_callbacks_run_once_and_may_chain_tasks(alice: Client) -> None:
    seen: list[str] = []
    chained: list[TaskHandle] = []
    finished = threading.Event()

    def then(handle: TaskHandle) -> None:
        seen.append(handle.id)
        follow = alice.submit("sleep", {"seconds": handle.result()["slept"]}, id=tid("b"))
        chained.append(follow)
        follow.add_done_callback(lambda _: finished.set())

    first = alice.submit("sleep", {"seconds": 0.2}, id=tid("a"))
    first.add_done_callback(then)
    assert finished.wait(60)
    assert seen == [first.id] and chained[0].result() == {"slept": 0.2}
    late: list[str] = []
    first.add_done_callback(lambda h: late.append(h.id))  # done already: called at once
    assert late == [first.id] and seen == [first.id]


def test_a_wait_that_times_out_leaves_the_task_running(alice: Client) -> None:
    handle = alice.submit("sleep", {"seconds": 1.5}, id=tid("slow"))
    with pytest.raises(TimeoutError, match=r"not done after 0\.3s"):
        handle.wait(timeout=0.3)
    assert not handle.done()
    assert handle.wait(timeout=60) == {"slept": 1.5}


def test_a_client_sees_only_its_own_tasks(system: System, alice: Client, bob: Client) -> None:
    hers = alice.submit("sleep", {"seconds": 0.2}, id=tid("hers"))
    assert hers.wait(timeout=60) == {"slept": 0.2}
    # Bob asking about her task hears it is no task of his.
    foreign = bob.handle(hers.id)
    assert foreign.state() == "unknown"
    with pytest.raises(TaskUnknown):
        foreign.wait(timeout=30)
    # The admin may ask about anyone's.
    with system.client(system.admin) as admin:
        assert admin.handle(hers.id).state() == "succeeded"
        assert admin.handle(hers.id).wait(timeout=30) == {"slept": 0.2}
    # Bob cannot listen to her notices: RabbitMQ refuses any other binding key.
    url = system.users.url(system.bob)
    for key in (system.alice, "#", f"{system.bob}.#", "*"):
        assert _bind_refusal(url, system.bob, key) == 403, key
    assert _bind_refusal(url, system.bob, system.bob) is None
    # Inbox queues are bounded by a policy: one left unread cannot grow for ever.
    policies = subprocess.run(
        ["rabbitmqctl", "-q", "list_policies", "-p", system.users.vhost, "--formatter", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (inbox,) = [p for p in json.loads(policies) if p["name"] == "mm-inbox"]
    assert json.loads(inbox["definition"])["max-length"] == 100_000
    # Nor declare a queue under her name.
    connection = amqp.plain(url)
    channel = connection.channel()
    with pytest.raises(amqp.ChannelClosedByBroker) as refused:
        channel.queue_declare(broker.inbox_queue(system.alice, "x"), exclusive=True)
    assert refused.value.reply_code == 403
    if connection.is_open:
        connection.close()


def _bind_refusal(url: str, user: str, key: str) -> int | None:
    connection = amqp.plain(url)
    try:
        channel = connection.channel()
        queue = broker.inbox_queue(user, uuid.uuid4().hex)
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        channel.queue_bind(queue, broker.NOTICES, routing_key=key)
        return None
    except amqp.ChannelClosedByBroker as error:
        return int(error.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def test_the_async_client(system: System) -> None:
    async def main() -> None:
        options = {"password_file": system.password_file(system.alice)}
        async with AsyncClient(system.bare_url(system.alice), **options) as client:
            handle = await client.submit("sleep", {"seconds": 0.1}, id=tid("async"))
            assert await handle.wait(timeout=60) == {"slept": 0.1}
            many = await client.submit_many(
                [{"type": "sleep", "payload": {"seconds": 0}} for _ in range(5)]
            )
            outputs = await asyncio.gather(*(h.wait(timeout=60) for h in many))
            assert outputs == [{"slept": 0}] * 5
            slow = await client.submit("sleep", {"seconds": 30}, id=tid("async-slow"))
            with pytest.raises(TimeoutError):
                await slow.wait(timeout=0.2)
            await slow.cancel()
            with pytest.raises(TaskCancelled):
                await slow.wait(timeout=30)
            assert await slow.state() == "cancelled"

    asyncio.run(main())


def test_a_refused_login_is_one_sentence(system: System, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with pytest.raises(ClientError, match="refused the credentials"):
        Client(system.bare_url(system.alice), password_file=str(wrong))
    with pytest.raises(ValueError, match="readable by others"):
        wrong.chmod(0o644)
        Client(system.bare_url(system.alice), password_file=str(wrong))


def test_the_client_does_not_load_the_engine() -> None:
    probe = "import sys, matchmaker.client; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "matchmaker.client" in loaded
    assert not {"ortools", "numpy", "matchmaker.engine", "matchmaker.ledger"} & loaded


def test_the_gateway_chain_example(system: System) -> None:
    env = {
        **os.environ,
        "MM_BROKER_URL": system.bare_url(system.alice),
        "MM_BROKER_PASSWORD_FILE": system.password_file(system.alice),
        "PYTHONPATH": str(ROOT),
    }
    script = ROOT / "examples" / "gateway" / "client_chain.py"
    done = subprocess.run(
        [sys.executable, str(script), "--input", '{"seconds": 0.1}', "--input", '{"seconds": 0}'],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result["first"].values()) == [{"slept": 0.1}, {"slept": 0}]
    assert list(result["then"].values()) == [{"slept": 0.1}]
    failing = [sys.executable, str(script), "--input", '{"fail": true, "message": "no input"}']
    done = subprocess.run(failing, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "dead: no input" in done.stderr


def _close_connections_of(user: str) -> int:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_connections", "pid", "user"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in listing.splitlines()]
    pids = [row[0] for row in rows if len(row) == 2 and row[1] == user]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by the test"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
    return len(pids)


def test_a_lost_connection_is_reconnected_and_nothing_is_missed(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    with system.client(system.alice, resync_interval=1.0) as client:
        handle = client.submit("sleep", {"seconds": 0.5}, id=tid("lost"))
        parked = client.submit("sleep", {}, id=tid("lost-parked"), constraints={"site": "x"})
        assert _close_connections_of(system.alice) >= 1
        assert handle.wait(timeout=60) == {"slept": 0.5}  # finished while we were away, maybe
        wait_until(lambda: "lost the broker" in caplog.text, 10, "the client to log the loss")
        client.cancel(parked.id)  # requests work on the new connection
        with pytest.raises(TaskCancelled):
            parked.wait(timeout=30)
