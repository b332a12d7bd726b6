"""The identity model: least-privilege broker users per role and authenticated senders.

The rules are unit-tested on their own; what RabbitMQ refuses (rights, forged
``user_id``) and what the scheduler refuses (forged results, others' ids and
tasks) is tested on the real broker with real per-role users (``role_users``)
and a real scheduler, workers and Serf agents.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from matchmaker import identity, users
from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.identity import IdentityError, Senders
from matchmaker.ledger import Ledger
from matchmaker.messages import Cancel, Drain, MessageError, TaskRequest, TaskResult, encode
from matchmaker.wire import amqp, broker
from matchmaker.wire.frames import user_id
from tests.conftest import RoleUsers, rabbitmqctl

ROOT = Path(__file__).resolve().parents[2]


# -- the rules, without a broker --------------------------------------------------------


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = b"\x01\x02\x03\x04"
    raw = base64.b64decode(identity.password_hash("s3cret", salt))
    assert raw == salt + hashlib.sha256(salt + b"s3cret").digest()
    assert identity.password_hash("s3cret") != identity.password_hash("s3cret")  # new salt


def test_a_workers_rights_name_its_own_queues_only() -> None:
    role = identity.worker_role("a")
    assert role.user == "mm-worker-a"
    own = ["mm.worker.a", "mm.control.a"]
    others = ["mm.worker.b", "mm.worker.ab", "mm.worker.a.control", "mm.control.ab", "mm.results"]
    others += ["mm.requests", "mm.dead", "mm.control", "amq.default"]  # "" is amq.default here
    for rights in (role.read, role.configure):
        assert [q for q in own + others if re.search(rights, q)] == own
    assert [q for q in own + others if re.search(role.write, q)] == ["mm.results"]
    client = identity.client_role("c")
    assert [q for q in own + others if re.search(client.write, q)] == ["mm.requests"]
    assert not any(re.search(client.read, q) or re.search(client.configure, q) for q in others)


def test_senders_own_tasks_report_as_their_worker_and_admins_do_more() -> None:
    senders = Senders(True, frozenset({"boss"}), frozenset({"dev"}))
    with pytest.raises(MessageError, match="no user_id"):
        senders.owner(None)
    assert senders.owner("alice") == "alice"
    assert senders.reporting("mm-worker-w1", "w1") is None
    assert senders.reporting("dev", "w1") is None
    assert "only 'mm-worker-w1'" in (senders.reporting("mm-worker-w2", "w1") or "")
    assert [senders.admin(u) for u in ("boss", "dev", "alice")] == [True, True, False]
    assert not senders.privileged("boss")
    open_door = Senders(False)
    assert open_door.owner(None) == "" and open_door.privileged("") and open_door.admin("")


def test_user_id_is_read_from_any_mix_of_properties() -> None:
    mixes = [
        amqp.Properties(),
        amqp.Properties(user_id="u1"),
        amqp.Properties(headers={"x": "y" * 300, "n": 1}, delivery_mode=2),
        amqp.Properties(
            content_type="a", content_encoding="b", headers={"k": [1, "v"]}, delivery_mode=2,
            priority=3, correlation_id="c", reply_to="r", expiration="10", message_id="m",
            timestamp=5, type="t", user_id="mm-worker-é", app_id="a", cluster_id="c",
        ),
    ]  # fmt: skip
    for properties in mixes:
        assert user_id(b"".join(properties.encode())) == properties.user_id


def test_urls_lose_their_passwords_in_text_and_outputs() -> None:
    text = "cannot reach amqp://mm-worker-w1:s3cr%2Ft@host:5672/v; see https://u:p@x.org/a"
    assert identity.redact(text) == (
        "cannot reach amqp://mm-worker-w1:***@host:5672/v; see https://u:***@x.org/a"
    )
    assert identity.redact("mail a@b.c") == "mail a@b.c"
    output = {"from": "https://bob:pw@x/y", "n": [1, {"u": "ftp://a:b@c/"}]}
    assert identity.redact_json(output) == {
        "from": "https://bob:***@x/y",
        "n": [1, {"u": "ftp://a:***@c/"}],
    }
    url = identity.with_password("amqp://mm-client@h:5672/v", "p/@:")
    assert url == "amqp://mm-client:p%2F%40%3A@h:5672/v"
    assert amqp.URLParameters(url).credentials.password == "p/@:"


def test_a_password_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    identity.write_secret(path, "s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert identity.read_secret(path) == "s3cret"
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        identity.read_secret(path)
    with pytest.raises(IdentityError, match="cannot read the password file"):
        identity.read_secret(tmp_path / "missing")


# -- what RabbitMQ refuses ------------------------------------------------------------------


def _channel(url: str) -> tuple[amqp.Connection, amqp.Channel]:
    connection = amqp.plain(url)
    return connection, connection.channel()


def refusal(url: str, act: Callable[[amqp.Channel], object]) -> int | None:
    """The reply code the broker closes the channel with when ``act`` runs on it (None:
    not refused); a passive declare after it makes the round trip."""
    connection, channel = _channel(url)
    try:
        act(channel)
        channel.queue_declare(broker.REQUESTS, passive=True)
        return None
    except amqp.ChannelClosedByBroker as error:
        return int(error.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def publishing(
    exchange: str, key: str, body: bytes, properties: amqp.Properties
) -> Callable[[amqp.Channel], object]:
    return lambda channel: channel.basic_publish(exchange, key, body, properties)


def test_a_client_may_publish_requests_and_nothing_else(role_users: RoleUsers) -> None:
    client = role_users.clients[0]
    url = role_users.url(client)
    mine = broker.persistent(client)
    worker_queue = broker.worker_queue(role_users.workers[0])
    assert refusal(url, publishing(*broker.route(broker.REQUESTS), b"{}", mine)) is None
    assert refusal(url, publishing(*broker.route(broker.RESULTS), b"{}", mine)) == 403
    assert refusal(url, publishing("", worker_queue, b"{}", mine)) == 403
    assert refusal(url, publishing(broker.CONTROL, "cancel.x", b"{}", mine)) == 403
    assert refusal(url, lambda ch: ch.basic_get(broker.REQUESTS)) == 403
    assert refusal(url, lambda ch: ch.queue_declare("mm.mine", durable=True)) == 403


def test_a_worker_reads_only_its_own_queues_and_writes_only_results(
    role_users: RoleUsers,
) -> None:
    a, b = role_users.workers
    url = role_users.worker_url(a)
    me = broker.persistent(identity.worker_user(a))
    other = broker.persistent(identity.worker_user(b))
    result = encode(TaskResult("t", 1, a, "succeeded"))
    for queue in (broker.worker_queue(a), broker.control_queue(a)):
        assert refusal(url, lambda ch, q=queue: ch.basic_get(q)) is None  # type: ignore[misc]
    for queue in (broker.worker_queue(b), broker.control_queue(b), broker.RESULTS, broker.DEAD):
        assert refusal(url, lambda ch, q=queue: ch.basic_get(q)) == 403  # type: ignore[misc]
    results = broker.route(broker.RESULTS)
    assert refusal(url, publishing(*results, result, me)) is None
    assert refusal(url, publishing("", broker.RESULTS, result, me)) == 403
    assert refusal(url, publishing(*broker.route(broker.DEAD), result, me)) is None  # via results
    # A forged sender is refused by RabbitMQ itself, before the scheduler sees it.
    assert refusal(url, publishing(*results, result, other)) == 406
    # Nor may it listen in on another worker's cancels.
    bind = (broker.control_queue(a), broker.CONTROL, "cancel.#")
    assert refusal(url, lambda ch: ch.queue_bind(*bind)) == 403


# -- what the scheduler refuses ---------------------------------------------------------


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster", trusted_users=())
    try:
        yield c
    finally:
        c.stop()


def dead_letters(url: str) -> list[tuple[str, str]]:
    """(reason, sender) of every dead letter so far, taken off mm.dead."""
    connection, channel = _channel(url)
    out: list[tuple[str, str]] = []
    try:
        while True:
            method, props, _body = channel.basic_get(broker.DEAD, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers["x-mm-reason"], props.user_id or ""))
    finally:
        connection.close()


def send(url: str, *messages: object) -> None:
    broker.send_requests(url, [encode(m) for m in messages])  # type: ignore[arg-type]


@pytest.mark.timeout(240)
def test_forged_results_foreign_ids_and_foreign_cancels_are_refused(
    cluster: LocalCluster, role_users: RoleUsers, broker_url: str
) -> None:
    a, b = role_users.workers
    alice, bob = (role_users.url(c) for c in role_users.clients)
    admin = role_users.url(role_users.admin)
    cluster.scheduler_args = ("--admin-users", role_users.admin)
    cluster.start_scheduler(broker_url=role_users.url(role_users.scheduler))
    cluster.start_worker(a, ["sleep"], 2, {"site": "a"}, broker_url=role_users.worker_url(a))
    cluster.start_worker(b, ["sleep"], 2, {"site": "b"}, broker_url=role_users.worker_url(b))

    job = TaskRequest("job", "sleep", {"seconds": 2}, constraints={"site": "a"})
    send(alice, job)
    wait_until(lambda: (r := cluster.task("job")) is not None and r.state == "running", 30, "job")
    # Worker b, under its own user (RabbitMQ insists), claims to be a with a result for job.
    forged = TaskResult("job", 1, a, "succeeded", 1.0, 2.0, {"forged": True})
    connection, channel = _channel(role_users.worker_url(b))
    sender = broker.persistent(identity.worker_user(b))
    channel.basic_publish(*broker.route(broker.RESULTS), encode(forged), sender)
    connection.close()

    parked = TaskRequest("parked", "sleep", {"seconds": 0}, constraints={"site": "nowhere"})
    send(alice, parked)
    send(bob, TaskRequest("parked", "sleep", {"seconds": 1}))  # bob may not reuse alice's id
    send(alice, parked)  # alice's own resubmit: a no-op
    send(bob, Cancel("parked"))  # bob may not cancel alice's task
    send(alice, Drain(b))  # nor may a client drain a worker
    connection, channel = _channel(alice)
    channel.basic_publish(*broker.route(broker.REQUESTS), encode(Cancel("job")), broker.PERSISTENT)
    connection.close()  # no user_id: refused
    send(admin, Cancel("parked"))  # an admin may

    rows = cluster.wait_states(["job"], timeout=60)
    assert rows["job"].output == {"slept": 2} and rows["job"].worker == a
    assert rows["job"].owner == role_users.clients[0]
    cancelled = cluster.wait_states(["parked"], ("cancelled",), timeout=30)["parked"]
    assert cancelled.owner == role_users.clients[0] and cancelled.type == "sleep"
    ledger = cluster.ledger()
    ignored = [h for h in ledger.history("job") if h["state"] == "ignored-succeeded"]
    assert len(ignored) == 1 and f"only 'mm-worker-{a}'" in ignored[0]["note"]

    expected = [
        "result for job: sent by",
        "id parked belongs to another owner",
        "cancel of parked refused",
        f"drain of {b} refused",
        "the message has no user_id",
    ]
    letters: list[tuple[str, str]] = []

    def all_parked() -> bool:
        letters.extend(dead_letters(broker_url))
        return len(letters) >= len(expected)

    wait_until(all_parked, 20, "the refusals on mm.dead")
    reasons = [reason for reason, _ in letters]
    assert [sum(r.startswith(e) for r in reasons) for e in expected] == [1] * len(expected)
    assert len(reasons) == len(expected), reasons  # each once, and nothing else
    assert cluster.scheduler is not None and cluster.scheduler.alive()


# -- the setup -----------------------------------------------------------------------------


def _command_lines(stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
        seen.extend(listing.stdout.splitlines())
        time.sleep(0.02)


@pytest.mark.timeout(240)
def test_setup_keeps_passwords_in_0600_files_and_off_command_lines(
    broker_url: str, tmp_path: Path
) -> None:
    vhost = broker_url.rsplit("/", 1)[1]
    tag = uuid.uuid4().hex[:8]
    scheduler, admin, client, worker = (f"mm-s-{tag}", f"mm-a-{tag}", f"mm-c-{tag}", f"w{tag}")
    made = [scheduler, admin, client, identity.worker_user(worker)]
    secrets = tmp_path / "secrets"
    argv = [sys.executable, "-m", "matchmaker", "users", "setup", "--vhost", vhost]
    argv += ["--secrets", str(secrets), "--scheduler-user", scheduler, "--admin-user", admin]
    argv += ["--client", client, "--worker", worker]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run_setup() -> list[str]:
        seen: list[str] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_command_lines, args=(stop, seen))
        watcher.start()
        try:
            done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        finally:
            stop.set()
            watcher.join()
        assert done.returncode == 0, done.stderr
        assert any("import_definitions" in line for line in seen)  # ps saw rabbitmqctl
        return seen

    def logs_in(user: str, password: str) -> bool:
        url = identity.with_password(f"amqp://{user}@127.0.0.1:5672/{vhost}", password)
        try:
            broker.connect(url).close()
        except broker.BrokerError:
            return False
        return True

    try:
        seen = run_setup()
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        passwords = {}
        for user in made:
            path = identity.secret_path(secrets, user)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            passwords[user] = identity.read_secret(path)
            assert logs_in(user, passwords[user])
        assert not [line for line in seen for pw in passwords.values() if pw in line]
        # A changed file changes the user's password at the next run; the rest stay.
        identity.write_secret(identity.secret_path(secrets, client), "a-new-one")
        seen = run_setup()
        assert not [line for line in seen if "a-new-one" in line]
        assert logs_in(client, "a-new-one") and not logs_in(client, passwords[client])
        assert identity.read_secret(identity.secret_path(secrets, admin)) == passwords[admin]
        listing = json.loads(
            subprocess.run(
                ["rabbitmqctl", "-q", "list_permissions", "-p", vhost, "--formatter", "json"],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        rights = {p["user"]: (p["configure"], p["write"], p["read"]) for p in listing}
        own = identity.client_role(client)
        assert rights[client] == (own.configure, own.write, own.read)
        assert own.write.startswith("^(mm\\.requests)$|") and own.configure != ".*"
        topics = json.loads(
            subprocess.run(
                ["rabbitmqctl", "-q", "list_topic_permissions", "-p", vhost, "--formatter", "json"],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert {(t["user"], t["exchange"], t["read"]) for t in topics if t["user"] == client} == {
            (client, broker.NOTICES, f"^({re.escape(client)})$")
        }
        assert rights[identity.worker_user(worker)][1] == "^(mm\\.results)$"
    finally:
        for user in made:
            with contextlib.suppress(pytest.fail.Exception):
                rabbitmqctl("delete_user", user)


# -- owners in the ledger ---------------------------------------------------------------


def test_an_id_is_its_owners_and_old_ledgers_get_an_owner_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, type TEXT NOT NULL, payload TEXT NOT NULL,"
        " priority INTEGER NOT NULL, constraints TEXT NOT NULL, preferences TEXT NOT NULL,"
        " max_attempts INTEGER NOT NULL, timeout REAL NOT NULL, state TEXT NOT NULL,"
        " attempt INTEGER NOT NULL, worker TEXT, submitted_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, not_before REAL NOT NULL DEFAULT 0, assigned_at REAL,"
        " started_at REAL, finished_at REAL, output TEXT, error TEXT, reason TEXT,"
        " received_at REAL)"
    )
    old.execute(
        "INSERT INTO tasks (id, type, payload, priority, constraints, preferences,"
        " max_attempts, timeout, state, attempt, submitted_at, updated_at)"
        " VALUES ('legacy', 'sleep', '{}', 0, '{}', '{}', 3, 60, 'pending', 1, 0, 0)"
    )
    old.commit()
    old.close()
    ledger = Ledger(path)
    try:
        legacy = ledger.get("legacy")
        assert legacy is not None and legacy.owner == ""
        a, b = TaskRequest("a", "sleep"), TaskRequest("b", "sleep")
        added, clashes = ledger.add_owned([(a, "alice"), (a, "bob"), (b, "bob")], 1.0)
        assert [(r.id, o) for r, o in added] == [("a", "alice"), ("b", "bob")]
        assert [(r.id, o) for r, o in clashes] == [("a", "alice")]  # bob's, with its owner
        ledger.commit()
        added, clashes = ledger.add_owned([(a, "alice"), (b, "alice")], 2.0)
        assert added == [] and [(r.id, o) for r, o in clashes] == [("b", "bob")]
        assert ledger.add([a, TaskRequest("c", "sleep")], 3.0) == [TaskRequest("c", "sleep")]
        row = ledger.get("a")
        assert row is not None and row.owner == "alice"
    finally:
        ledger.close()


def test_add_client_refuses_reserved_names(tmp_path: Path) -> None:
    for name in ("mm-worker-w1", identity.SCHEDULER, "bad name"):
        with pytest.raises(IdentityError):
            users.add_client(name, "nowhere", tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any file or broker call


@pytest.mark.timeout(120)
def test_add_worker_makes_a_user_that_reads_its_queue(broker_url: str, tmp_path: Path) -> None:
    vhost = broker_url.rsplit("/", 1)[1]
    name = f"w{uuid.uuid4().hex[:8]}"
    secrets = tmp_path / "secrets"
    argv = [sys.executable, "-m", "matchmaker", "users", "add-worker", name, "--vhost", vhost]
    done = subprocess.run(
        [*argv, "--secrets", str(secrets)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    user = identity.worker_user(name)
    try:
        assert done.returncode == 0, done.stderr
        path = identity.secret_path(secrets, user)
        assert f"password in {path}" in done.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        url = identity.with_password(
            f"amqp://{user}@127.0.0.1:5672/{vhost}", identity.read_secret(path)
        )
        assert refusal(url, lambda ch: ch.basic_get(broker.worker_queue(name))) is None
        assert refusal(url, lambda ch: ch.basic_get(broker.control_queue(name))) is None
    finally:
        with contextlib.suppress(pytest.fail.Exception):
            rabbitmqctl("delete_user", user)


def test_the_admin_role_reads_dead_letters_and_events_only() -> None:
    admin = identity.admin_role("boss")
    names = ["mm.requests", "mm.results", "mm.dead", "mm.events", "mm.control", "mm.worker.a"]
    names += ["amq.gen-Xy_12-ab", "amq.gen-", "amq.default", "amq.gen-a.b", "mm.deadx"]
    assert [n for n in names if re.search(admin.read, n)] == [
        "mm.dead", "mm.events", "amq.gen-Xy_12-ab"
    ]  # fmt: skip
    assert [n for n in names if re.search(admin.write, n)] == ["mm.requests", "amq.gen-Xy_12-ab"]
    assert [n for n in names if re.search(admin.configure, n)] == ["amq.gen-Xy_12-ab"]
