"""matchmaker across hosts, for real: network namespaces on one bridge (``netns_support``).

Hosts: ``db`` (PostgreSQL), ``r1``-``r3`` (one RabbitMQ node each, long node names
``rabbit@<address>``: Erlang distribution crosses the bridge, each host runs its own
epmd), ``sa`` (scheduler A and its Serf agent), ``sb`` (standby scheduler B's host,
also the client that submits), ``wh1`` and ``wh2`` (two workers each, their Serf
agents on the host's address, profile ``lan``, joined to A's host). Every process is
given the three broker URLs and quorum queues.

The run: 2,000 tasks submitted; kill -9 of scheduler A (B, on its own host, takes
over); A started again as a standby, its host cut off the network and brought back
while B leads (A stays a standby: it writes nothing); kill -9 of the RabbitMQ node
everyone started on; kill -9 of every process on worker host ``wh1``. Every task must
end succeeded, exactly once in the ledger, none lost. The test prints the takeover
(last dispatch by A to first by B), the time to resume after the broker node's loss
and when the worker host's tasks ran again.

Until the PostgreSQL ledger (``--ledger-url``) is merged, both schedulers open one
SQLite file: the namespaces share this machine's file system (``World.ledger_args``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.rabbit_cluster import RabbitCluster, RabbitNode
from matchmaker.config import Config
from matchmaker.devtools.cluster import Process, wait_until
from membership.keys import AUTH_FILE, ENCRYPT_FILE, keygen
from tests import netns_support
from tests.multihost_support import Postgres, logged_after, spawn
from tests.netns_support import SUBNET, Host, NetLab

pytestmark = [pytest.mark.slow, pytest.mark.serf]
POSTGRES_LEDGER = "ledger_url" in {f.name for f in dataclasses.fields(Config)}

TASKS = 2000
SECONDS = 0.5  # each task's sleep: >= 31 s of work on 32 slots, long enough to break things
GOSSIP = 7946
WORKERS = {"wh1": ("w1a", "w1b"), "wh2": ("w2a", "w2b")}


def _skip_reason() -> str | None:
    return netns_support.available()


@dataclass
class World:
    """The hosts, the servers on them and the processes the test started."""

    lab: NetLab
    dir: Path
    rabbit: RabbitCluster
    postgres: Postgres
    keys: Path
    password_file: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self.lab.hosts[name]

    def broker_args(self) -> list[str]:
        bare = ",".join(
            f"amqp://{self.rabbit.user}@{n.host}:{n.port}/{self.rabbit.vhost}"
            for n in self.rabbit.nodes
        )
        return ["--broker-url", bare, "--broker-password-file", str(self.password_file)]

    def start_agent(self, host: str, node: str, join: str | None = None) -> Process:
        """A scheduler's Serf agent on ``host`` (RPC on the host's loopback)."""
        h = self.host(host)
        args = [
            "-m", "membership", "agent", "--node", node, "--tag", "role=scheduler",
            "--bind", f"{h.address}:{GOSSIP}", "--rpc", "127.0.0.1:7373", "--profile", "lan",
            "--keys", str(self.keys), "--state-dir", str(self.dir / "serf"),
        ]  # fmt: skip
        if join is not None:
            args += ["--join", f"{join}:{GOSSIP}"]
        process = spawn(h, f"agent-{node}", args, self.dir)
        self.processes[process.name] = process
        wait_log(process, "up, gossip", 30)
        return process

    def start_scheduler(self, host: str, name: str) -> Process:
        args = [
            "-m", "matchmaker", "run", *self.broker_args(),
            "--trusted-users", self.rabbit.user,
            "--serf-rpc", "127.0.0.1:7373",
            "--serf-auth-key-file", str(self.keys / AUTH_FILE),
            *self.ledger_args(),
        ]  # fmt: skip
        process = spawn(self.host(host), name, args, self.dir)
        self.processes[name] = process
        return process

    def start_worker(self, host: str, name: str, index: int) -> Process:
        h, join = self.host(host), self.host("sa").address
        args = [
            "-m", "workers", "--name", name, "--caps", "sleep", "--slots", "8",
            *self.broker_args(), "--sandbox", str(self.dir / "sandbox" / host),
            "--serf-bind", f"{h.address}:{GOSSIP + index}",
            "--serf-rpc-bind", f"127.0.0.1:{7374 + index}",
            "--serf-join", f"{join}:{GOSSIP}", "--serf-profile", "lan",
            "--serf-advertise", f"{h.address}:{GOSSIP + index}",
            "--serf-encrypt-file", str(self.keys / ENCRYPT_FILE),
            "--serf-auth-file", str(self.keys / AUTH_FILE),
        ]  # fmt: skip
        process = spawn(h, name, args, self.dir)
        self.processes[name] = process
        return process

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def ledger_args(self) -> list[str]:
        """Where the schedulers keep their state: the PostgreSQL ledger on host ``db``,
        or, in a tree without it, one SQLite file both hosts open (the namespaces share
        this machine's file system)."""
        if POSTGRES_LEDGER:
            return ["--ledger-url", self.postgres.url, "--state-dir", str(self.state_dir)]
        return ["--state-dir", str(self.state_dir)]

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of ``sql`` on the ledger, every value as text ('' for NULL)."""
        if POSTGRES_LEDGER:
            out = self.postgres.psql(sql, database="mm")
            return [tuple(line.split("|")) for line in out.splitlines()]
        path = self.state_dir / "ledger.sqlite"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(sql).fetchall()
        return [tuple("" if v is None else str(v) for v in row) for row in rows]

    def number(self, sql: str) -> float | None:
        """The one value of ``sql`` as a number (None for NULL)."""
        value = self.query(sql)[0][0]
        return float(value) if value else None

    def alive_workers(self, host: str) -> set[str]:
        """The workers the Serf agent on ``host`` sees alive (asked on that host)."""
        out = self.host(host).run(
            sys.executable, "-m", "matchmaker", "workers", "--json",
            "--serf-rpc", "127.0.0.1:7373", "--serf-auth-key-file", str(self.keys / AUTH_FILE),
            *self.ledger_args(),
        )  # fmt: skip
        if out.returncode != 0:
            return set()
        return {w["name"] for w in json.loads(out.stdout) if w.get("status") == "alive"}

    def submit(self, count: int) -> list[str]:
        tasks = self.dir / "tasks.jsonl"
        ids = [f"m{i:05d}" for i in range(count)]
        with tasks.open("w") as out:
            for task_id in ids:
                body = {"id": task_id, "type": "sleep", "payload": {"seconds": SECONDS}}
                out.write(json.dumps({**body, "max_attempts": 5}) + "\n")
        done = self.host("sb").run(
            sys.executable, "-m", "matchmaker", "submit", "--file", str(tasks), *self.broker_args(),
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return ids


def _leads(process: Process) -> bool:
    """Whether the scheduler's log last said it is active (not standing by)."""
    lines = [
        line
        for line in process.log.read_text(errors="replace").splitlines()
        if "this scheduler is active" in line or "standing by" in line
    ]
    return bool(lines) and "this scheduler is active" in lines[-1]


def wait_log(process: Process, text: str, timeout: float) -> None:
    wait_until(
        lambda: text in process.log.read_text(errors="replace"),
        timeout,
        f"{process.name} logging {text!r}",
        process.tail,
    )


def rabbit_node(host: Host, workdir: Path, cookie: str) -> RabbitNode:
    """A node named by its host's address (a long name: no /etc/hosts entry needed)."""
    return RabbitNode(
        f"rabbit@{host.address}", workdir / "rabbit" / host.name, cookie, host=host.address,
        port=5672, dist_port=25672, prefix=host.prefix, longnames=True,
    )  # fmt: skip


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    why = _skip_reason()
    if why is not None:
        pytest.skip(why)
    monkeypatch.setenv("MM_QUEUE_TYPE", "quorum")  # every process it starts
    with NetLab() as lab:
        for name in ("db", "r1", "r2", "r3", "sa", "sb", "wh1", "wh2"):
            lab.add(name)
        postgres = Postgres(lab.hosts["db"], keep_log=tmp_path / "postgres.log")
        try:
            cookie = secrets.token_hex(20)
            nodes = [rabbit_node(lab.hosts[n], tmp_path, cookie) for n in ("r1", "r2", "r3")]
            rabbit = RabbitCluster(nodes)
            rabbit.start()
            postgres.start()
            keys = tmp_path / "keys"
            keygen(keys)
            secret = tmp_path / "broker.password"
            secret.write_text(rabbit.password)
            secret.chmod(0o600)
            yield World(lab, tmp_path, rabbit, postgres, keys, secret)
        finally:
            lab.close()  # every process on every host, the namespaces, the bridge
            postgres.stop()


def test_harness_hosts_reach_each_other(world: World) -> None:
    """The namespaces are hosts: the cluster spans three of them, PostgreSQL answers on
    its address from another host, and nothing of it is reachable from the root
    namespace (the test's addresses exist inside the namespaces only; a connect from it
    proves nothing here, the sandbox's egress answers every address)."""
    assert world.rabbit.running_nodes() == sorted(n.name for n in world.rabbit.nodes)
    probe = world.host("sa").run(
        "psql", world.postgres.url, "-At", "-c", "SELECT current_user", timeout=30
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "mm", probe.stderr
    root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert f" {SUBNET}." not in root.stdout  # the root namespace has none of the addresses


@pytest.mark.timeout(900)
def test_faults_across_hosts_lose_nothing(world: World) -> None:
    world.start_agent("sa", "scheduler-a")
    world.start_agent("sb", "scheduler-b", join=world.host("sa").address)
    a = world.start_scheduler("sa", "scheduler-a")
    wait_log(a, "this scheduler is active", 60)
    b = world.start_scheduler("sb", "scheduler-b")
    wait_log(b, "standing by", 60)
    for host, names in WORKERS.items():
        for index, name in enumerate(names):
            world.start_worker(host, name, index)
    everyone = {n for names in WORKERS.values() for n in names}
    wait_until(lambda: world.alive_workers("sb") == everyone, 60, "the workers across hosts")

    ids = world.submit(TASKS)

    def succeeded() -> int:
        return int(world.number("SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'") or 0)

    def progress(more: int, what: str, timeout: float = 120) -> None:
        start = succeeded()
        wait_until(lambda: succeeded() >= start + more, timeout, what, b.tail)

    # 1. kill -9 of scheduler A mid-run: B, on another host, takes over
    wait_until(lambda: succeeded() >= TASKS // 10, 120, "a tenth of the tasks done", a.tail)
    a_killed = time.time()
    a.popen.kill()
    a.popen.wait()
    wait_log(b, "this scheduler is active", 60)
    progress(50, "tasks flowing under B")
    assert succeeded() < TASKS, "the run ended before the next fault"

    # 2. A again, as a standby; its host cut off the network while B leads, then back
    a = world.start_scheduler("sa", "scheduler-a-again")  # a log of its own
    wait_log(a, "standing by", 60)
    world.host("sa").cut()
    progress(100, "tasks flowing while A's host is cut off")
    world.host("sa").restore()
    progress(100, "tasks flowing after A's host is back")
    assert a.alive() and not _leads(a) and _leads(b)
    if POSTGRES_LEDGER:  # fencing: B holds the ledger's lead, A never took it
        holder = world.query("SELECT holder FROM leader WHERE id = 1")[0][0]
        assert holder.endswith(f":{b.popen.pid}")
        assert "leader epoch" not in a.log.read_text()
    assert succeeded() < TASKS, "the run ended before the next fault"

    # 3. kill -9 of the RabbitMQ node every process started on (the first of the list)
    broker_killed = time.time()
    world.rabbit.nodes[0].kill()
    progress(100, "tasks flowing after the broker node's loss")
    assert succeeded() < TASKS, "the run ended before the next fault"

    # 4. kill -9 of every process on worker host wh1 (its workers and their agents)
    host_killed = time.time()
    world.host("wh1").kill_all()
    wait_until(lambda: world.alive_workers("sb") == set(WORKERS["wh2"]), 60, "wh1's workers failed")
    detected = time.time()

    wait_until(lambda: succeeded() == TASKS, 600, "every task succeeded", b.tail)
    rows = {row[0]: row[1] for row in world.query("SELECT id, state FROM tasks")}
    assert sorted(rows) == ids and set(rows.values()) == {"succeeded"}
    twice = world.query(
        "SELECT id, COUNT(*) FROM transitions WHERE state = 'succeeded'"
        " GROUP BY id HAVING COUNT(*) > 1"
    )
    assert twice == []
    # after the broker node's loss either scheduler may lead (both reconnected and raced)
    leaders = [p for p in (a, b) if p.alive() and _leads(p)]
    assert len(leaders) == 1
    if POSTGRES_LEDGER:  # the ledger's leader is that one
        holder = world.query("SELECT holder FROM leader WHERE id = 1")[0][0]
        assert holder.endswith(f":{leaders[0].popen.pid}")
    for name in WORKERS["wh2"]:
        assert world.processes[name].alive()

    def first_after(state: str, at: float) -> float:  # times are the test's own floats
        value = world.number(
            f"SELECT MIN(at) FROM transitions WHERE state = '{state}' AND at > {at!r}"
        )
        assert value is not None
        return value

    # A's dispatches end before B leads (A may record one a moment after the kill signal)
    b_leads = logged_after(b.log, "this scheduler is active", a_killed)
    assert b_leads is not None
    last_by_a = world.number(
        f"SELECT MAX(at) FROM transitions WHERE state = 'assigned' AND at <= {b_leads!r}"
    )
    assert last_by_a is not None
    takeover = first_after("assigned", b_leads) - last_by_a
    # dispatching again: the first dispatch recorded after a scheduler took the lead again
    # (one read before the kill may be recorded just after it)
    led = [logged_after(p.log, "this scheduler is active", broker_killed) for p in (a, b)]
    resumed = first_after("assigned", min(t for t in led if t is not None)) - broker_killed
    rerun = world.number(
        "SELECT MIN(s.at) FROM transitions s JOIN transitions p ON s.id = p.id"
        f" WHERE p.state = 'pending' AND p.at > {host_killed!r} AND s.state = 'succeeded'"
        " AND s.at > p.at"
    )
    print(
        f"\ntakeover (last dispatch by A to first by B): {takeover:.2f}s; broker node killed: "
        f"dispatching again after {resumed:.2f}s; worker host killed: seen failed after "
        f"{detected - host_killed:.2f}s (polled)"
        + (f", its tasks done elsewhere from {rerun - host_killed:.2f}s" if rerun else "")
    )


@pytest.mark.timeout(900)
def test_a_leader_cut_off_is_fenced(world: World) -> None:
    """Scheduler A leads when its host is cut off the network; B takes over once the broker
    drops A's connection (its heartbeat), and when A's host comes back A must not write: its
    epoch in the PostgreSQL ledger is stale, so whatever it commits is refused, and it stops
    or stands by. Every task still ends succeeded exactly once."""
    if not POSTGRES_LEDGER:
        pytest.skip("fencing needs the PostgreSQL ledger (--ledger-url), not in this tree")
    world.start_agent("sa", "scheduler-a")
    world.start_agent("sb", "scheduler-b", join=world.host("sa").address)
    a = world.start_scheduler("sa", "scheduler-a")
    wait_log(a, "this scheduler is active", 60)
    b = world.start_scheduler("sb", "scheduler-b")
    wait_log(b, "standing by", 60)
    for index, name in enumerate(WORKERS["wh2"]):
        world.start_worker("wh2", name, index)
    wait_until(lambda: world.alive_workers("sb") == set(WORKERS["wh2"]), 60, "the workers")
    total = 600
    ids = world.submit(total)

    def succeeded() -> int:
        return int(world.number("SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'") or 0)

    wait_until(lambda: succeeded() >= 50, 120, "the first tasks done", a.tail)
    world.host("sa").cut()
    wait_log(b, "this scheduler is active", 240)  # the broker gave up on A's heartbeats
    start = succeeded()
    wait_until(lambda: succeeded() >= start + 50, 120, "tasks flowing under B", b.tail)
    world.host("sa").restore()
    wait_until(
        lambda: not a.alive() or logged_after(a.log, "standing by", time.time() - 600) is not None,
        240,
        "A fenced or standing by",
        a.tail,
    )
    wait_until(lambda: succeeded() == total, 600, "every task succeeded", b.tail)
    rows = {row[0]: row[1] for row in world.query("SELECT id, state FROM tasks")}
    assert sorted(rows) == ids and set(rows.values()) == {"succeeded"}
    twice = world.query(
        "SELECT id, COUNT(*) FROM transitions WHERE state = 'succeeded'"
        " GROUP BY id HAVING COUNT(*) > 1"
    )
    assert twice == []
    holder = world.query("SELECT holder FROM leader WHERE id = 1")[0][0]
    assert holder.endswith(f":{b.popen.pid}") and _leads(b)
    print(f"\nA after its host came back: {'exited' if not a.alive() else 'standing by'}")
    print("\n".join(line for line in a.log.read_text().splitlines() if "epoch" in line)[-800:])
