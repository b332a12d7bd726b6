"""The scheduler against hostile input and crashes: real RabbitMQ, Serf and processes.

Poison messages are dead-lettered once each with a reason and the scheduler goes on; a
forged result changes nothing; a scheduler killed mid-intake loses, holds and duplicates
nothing once restarted; SIGTERM ends a scheduler that is waiting for the broker.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.ledger import DEAD_BODY_BYTES, Ledger, Letter
from matchmaker.messages import Cancel, TaskRequest, TaskResult, encode
from matchmaker.wire import amqp, broker
from membership.agent import SerfAgent, free_port
from membership.tags import encode_worker_tags

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


def publish(url: str, queue: str, bodies: list[bytes]) -> None:
    connection = amqp.plain(url)
    channel = connection.channel()
    broker.declare_core(channel)
    sender = broker.persistent(broker.sender(url))  # the dev user, trusted by LocalCluster
    for body in bodies:
        channel.basic_publish(*broker.route(queue), body, sender)
    connection.close()


Letters = list[tuple[bytes, amqp.Properties]]


def dead_letters(url: str) -> Letters:
    connection = amqp.plain(url)
    channel = connection.channel()
    out = []
    while True:
        method, props, body = channel.basic_get(broker.DEAD, auto_ack=True)
        if method is None:
            break
        out.append((body, props))
    connection.close()
    return out


def collect(url: str, letters: Letters) -> Letters:
    """Take what ``mm.dead`` holds now into ``letters``; returns them all."""
    letters += dead_letters(url)
    return letters


def queue_depths(url: str) -> dict[str, int]:
    """Messages per queue, ready and unacked together (``rabbitmqctl``)."""
    vhost = url.rsplit("/", 1)[1]
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    depths = {}
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if count.strip().isdigit():
            depths[name] = int(count)
    return depths


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


DEEP_ID = b'{"v":1,"kind":"submit","id":' + b"[" * 1000 + b"1" + b"]" * 1000 + b',"type":"sleep"}'
DEEP_PAYLOAD = b'{"v":1,"kind":"submit","id":"deep","type":"sleep","payload":' + nested(300) + b"}"


def test_poison_messages_are_dead_lettered_and_the_scheduler_goes_on(
    cluster: LocalCluster,
) -> None:
    scheduler = cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    cluster.wait_states(cluster.submit(sleep_task("warm")))
    deep_output = (
        b'{"v":1,"kind":"result","id":"warm","attempt":1,"worker":"w1","state":"succeeded",'
        b'"output":' + nested(300) + b"}"
    )
    publish(cluster.broker_url, broker.REQUESTS, [DEEP_ID, DEEP_PAYLOAD])
    publish(cluster.broker_url, broker.RESULTS, [deep_output])
    rows = cluster.wait_states(cluster.submit(sleep_task("after")))
    assert rows["after"].worker == "w1"
    letters: Letters = []
    wait_until(lambda: len(collect(cluster.broker_url, letters)) >= 3, 20, "three dead letters")
    assert len(letters) == 3
    by_source = sorted((p.headers["x-mm-source"], p.headers["x-mm-reason"]) for _, p in letters)
    assert by_source == [
        (broker.REQUESTS, "the message nests objects and arrays more than 32 levels deep"),
        (broker.REQUESTS, "the message nests objects and arrays more than 32 levels deep"),
        (broker.RESULTS, "the message nests objects and arrays more than 32 levels deep"),
    ]
    for body, props in letters:  # truncated, with the whole body's size and hash
        sizes = {len(b): b for b in (DEEP_ID, DEEP_PAYLOAD, deep_output)}
        whole = sizes[props.headers["x-mm-size"]]
        assert body == whole[:DEAD_BODY_BYTES]
        assert props.headers["x-mm-sha256"] == hashlib.sha256(whole).hexdigest()
        assert props.message_id == Letter.of(props.headers["x-mm-source"], whole, "", 0).key
    assert scheduler.alive()
    assert "Traceback" not in scheduler.log.read_text()
    assert cluster.task("deep") is None
    arguments = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", cluster.broker_url.rsplit("/", 1)[1],
         "name", "arguments"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    dead = next(line for line in arguments.splitlines() if line.startswith(broker.DEAD + "\t"))
    assert "x-max-length" in dead and "100000" in dead and "drop-head" in dead
    warm = cluster.task("warm")
    assert warm is not None and warm.output == {"slept": 0.0}


def test_forged_results_are_refused_and_the_honest_one_counts(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    cluster.start_worker("honest", ["sleep"], 1)
    cluster.submit(sleep_task("job", 2.0), sleep_task("parked", constraints={"site": "nowhere"}))
    wait_until(lambda: (r := cluster.task("job")) is not None and r.state == "running", 20, "job")
    forged = [
        TaskResult("job", 1, "mallory", "succeeded", 1.0, 1.1, {"owned": True}),
        TaskResult("parked", 1, "honest", "succeeded", 1.0, 1.1, {"owned": True}),
    ]
    publish(cluster.broker_url, broker.RESULTS, [encode(r) for r in forged])
    ledger = cluster.ledger()
    wait_until(lambda: len(ledger.history("parked")) >= 2, 20, "the forged results recorded")
    rows = cluster.wait_states(["job"], timeout=30)
    assert rows["job"].output == {"slept": 2.0} and rows["job"].worker == "honest"
    job = [(h["state"], h["worker"], h["note"]) for h in ledger.history("job")]
    refused = ("ignored-succeeded", "mallory", "attempt 1 was dispatched to honest, not to mallory")
    assert refused in job
    assert [s for s, _, _ in job].count("succeeded") == 1
    parked = ledger.get("parked")
    assert parked is not None and parked.state == "pending" and parked.output is None
    assert ledger.history("parked")[-1]["note"] == (
        "the task is pending: no attempt of it is in flight"
    )


def test_a_redelivered_rejected_message_is_dead_lettered_once(cluster: LocalCluster) -> None:
    bad = b'{"v":1,"kind":"submit","id":"x","type":"tele:port"}'
    publish(cluster.broker_url, broker.REQUESTS, [bad])
    scheduler = cluster.start_scheduler()
    letters: Letters = []
    wait_until(lambda: bool(collect(cluster.broker_url, letters)), 20, "the dead letter")
    scheduler.stop()
    # The same message again, as a redelivery after a crash between commit and ack
    # would bring it; and a letter committed to the outbox but never published.
    publish(cluster.broker_url, broker.REQUESTS, [bad])
    unsent = Letter.of(broker.RESULTS, b"never published", "a crash came first", time.time())
    ledger = Ledger(cluster.state_dir / "ledger.sqlite")
    assert ledger.outbox([unsent]) == [unsent]
    ledger.commit()
    ledger.close()
    cluster.start_scheduler()
    wait_until(lambda: len(collect(cluster.broker_url, letters)) >= 2, 20, "the unsent letter")
    wait_until(lambda: queue_depths(cluster.broker_url).get(broker.REQUESTS) == 0, 30, "intake")
    letters += dead_letters(cluster.broker_url)
    assert sorted(body for body, _ in letters) == sorted([bad, b"never published"])
    assert (
        next(p for b, p in letters if b == bad)
        .headers["x-mm-reason"]
        .startswith("'type' must be 1-64 characters")
    )
    query = "SELECT 1 FROM dead_letters WHERE sent = 0"
    reader = cluster.ledger()
    wait_until(lambda: not reader.query(query), 20, "the letters marked sent")


def intake_mix(total: int) -> tuple[list[bytes], set[str], dict[bytes, str], set[str]]:
    """``total`` requests: valid ones, some cancels of earlier ones, invalid ones and a
    poison message; returns the bodies, the valid ids, the invalid bodies (with a
    fragment of their reason) and the ids cancelled."""
    bodies: list[bytes] = []
    valid: set[str] = set()
    invalid: dict[bytes, str] = {}
    cancelled: set[str] = set()
    for i in range(total):
        if i % 13 == 5:
            body = encode(TaskRequest(f"bad-{i}", "tele:port"))
            invalid[body] = "'type' must be"
        elif i % 17 == 3 and f"t{i - 2}" in valid:
            body = encode(Cancel(f"t{i - 2}"))
            cancelled.add(f"t{i - 2}")
        elif i == total // 2:
            body = DEEP_ID
            invalid[body] = "32 levels"
        else:
            body = encode(sleep_task(f"t{i}", constraints={"site": "nowhere"}))
            valid.add(f"t{i}")
        bodies.append(body)
    return bodies, valid, invalid, cancelled


def test_a_scheduler_killed_mid_intake_loses_and_holds_nothing(cluster: LocalCluster) -> None:
    bodies, valid, invalid, cancelled = intake_mix(4000)
    broker.send_requests(cluster.broker_url, bodies)
    db = cluster.state_dir / "ledger.sqlite"
    recorded_at_kill = []
    for _ in range(2):  # a crash loop: killed as soon as it has recorded something
        scheduler = cluster.start_scheduler(wait=False)

        def recorded() -> int:
            if not db.exists():
                return 0
            ledger = Ledger(db, readonly=True)
            try:
                return int(ledger.db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
            finally:
                ledger.close()

        wait_until(lambda: recorded() > 0, 60, "the first requests recorded")
        scheduler.popen.kill()
        scheduler.popen.wait()
        recorded_at_kill.append(recorded())
    assert min(recorded_at_kill) < len(valid)  # the kills came mid-intake
    cluster.start_scheduler()
    ledger = cluster.ledger()
    wait_until(lambda: sum(ledger.counts().values()) == len(valid), 60, "every task recorded")
    wait_until(lambda: queue_depths(cluster.broker_url).get(broker.REQUESTS) == 0, 60,
               "mm.requests drained: every request acked")  # fmt: skip
    counts = ledger.counts()
    assert counts == {"pending": len(valid) - len(cancelled), "cancelled": len(cancelled)}
    letters: Letters = []
    wait_until(
        lambda: (
            len({p.message_id for _, p in collect(cluster.broker_url, letters)}) >= len(invalid)
        ),
        30,
        "the dead letters",
    )
    by_id: dict[str, bytes] = {}
    for body, props in letters:  # a repeat is only possible as the same letter (same id)
        assert by_id.setdefault(props.message_id, body) == body
        assert invalid[body] in props.headers["x-mm-reason"]
    assert sorted(by_id.values()) == sorted(invalid)
    # A letter published but not yet marked sent when a kill came goes again after the
    # restart, as the same letter: at most once more per kill.
    assert max(Counter(p.message_id for _, p in letters).values()) <= 3
    assert cluster.scheduler is not None and cluster.scheduler.alive()


def test_sigterm_stops_a_scheduler_waiting_for_the_broker(tmp_path: Path) -> None:
    """Without a broker the scheduler retries for ever (backoff capped at 5 s, one line per
    attempt, no traceback), and SIGTERM ends it at once."""
    closed = f"amqp://u:p@127.0.0.1:{free_port()}/x"
    with LocalCluster(broker_url=closed, workdir=tmp_path) as c:
        scheduler = c.start_scheduler(wait=False)

        def retries() -> list[str]:  # the loop's own (the liveness thread retries beside it)
            log = scheduler.log.read_text().splitlines()
            return [line for line in log if "wire.broker" in line and "retrying in" in line]

        wait_until(lambda: len(retries()) >= 6, 30, "retries")
        assert scheduler.alive()
        scheduler.signal(signal.SIGTERM)
        started = time.monotonic()
        scheduler.popen.wait(10)
        assert time.monotonic() - started < 2.0
        assert scheduler.popen.returncode == 0
        log = scheduler.log.read_text()
        lines = retries()
        assert all("unreachable (connection refused)" in line for line in lines)
        delays = [float(line.split("retrying in ")[1].split("s")[0]) for line in lines]
        assert delays[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
        assert "Traceback" not in log and " ERROR " not in log


def test_refused_credentials_are_retried_too(broker_url: str, tmp_path: Path) -> None:
    wrong = broker_url.replace("matchmaker:matchmaker@", "matchmaker:wrong@")
    with LocalCluster(broker_url=wrong, workdir=tmp_path) as c:
        scheduler = c.start_scheduler(wait=False)
        wait_until(
            lambda: scheduler.log.read_text().count("refused the credentials; retrying") >= 2,
            30,
            "two refused attempts",
        )
        assert scheduler.alive()
        scheduler.stop()
        assert scheduler.popen.returncode == 0
        assert "Traceback" not in scheduler.log.read_text()


def test_after_a_channel_error_the_scheduler_reconnects_and_leads_at_once(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel error (here: declaring the queues of a newcomer whose control queue another
    connection holds exclusively) drops the whole connection; one left open would keep the
    leader queue and its deliveries while the new connection stood by. (A lost worker's
    queue deleted under the scheduler is no channel error: the dispatcher checks first.)
    Broker-side liveness is off here: with it, a worker without a consumer (the ghost) is
    never placed, so its queues are never declared."""
    monkeypatch.setenv("MM_LIVENESS_VHOST", "")
    scheduler = cluster.start_scheduler()
    cluster.start_worker("other", ["sleep"], 1)
    cluster.wait_states(cluster.submit(sleep_task("before")))
    holder = amqp.plain(cluster.broker_url)
    holder.channel().queue_declare(broker.control_queue("ghost"), exclusive=True)
    agent = cluster.start_agent()
    ghost = SerfAgent(
        "ghost",
        tags=encode_worker_tags("ghost", ("sleep",), 1, {}),
        encrypt_key=cluster.encrypt_key,
        join=[agent.bind_addr],
        workdir=cluster.workdir / "serf-ghost",
        insecure=True,
    ).start()  # a worker in the pool only: the scheduler declares its queues
    try:
        cluster.wait_log(scheduler, "lost the broker (ChannelClosedByBroker: (405", 60)
    finally:
        holder.close()  # the next connection declares them
        ghost.kill()
    rows = cluster.wait_states(cluster.submit(sleep_task("after")), timeout=30)
    assert rows["after"].worker == "other"
    assert "standing by" not in scheduler.log.read_text()
    assert scheduler.alive()
