"""A PostgreSQL ledger shared by schedulers as real processes: a standby with a state
directory of its own (another host, as far as the ledger goes) takes over from a leader
killed with SIGKILL, losing nothing and completing nothing twice; a leader deposed in the
ledger stops and writes nothing; the CLI reads with a read-only role."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from matchmaker.devtools.cluster import ROOT, LocalCluster, wait_until
from matchmaker.ledger import TaskLedger, open_url
from matchmaker.messages import TaskRequest
from tests.pg_support import Schemas

pytestmark = [pytest.mark.timeout(240), pytest.mark.broker, pytest.mark.serf]


@pytest.fixture
def cluster(broker_url: str, pg_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster", ledger_url=pg_url)
    try:
        yield c
    finally:
        c.stop()


def sleep_task(task_id: str, seconds: float) -> TaskRequest:
    return TaskRequest(task_id, "sleep", {"seconds": seconds})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchmaker", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_standby_on_another_host_takes_over_with_nothing_lost(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    leader = cluster.start_scheduler()
    standby = cluster.start_scheduler(standby=True, wait=False, state_dir=tmp_path / "host-b")
    cluster.wait_log(standby, "standing by", 30)
    cluster.start_worker("w1", ["sleep"], 4)
    tasks = [sleep_task(f"t{i:03d}", 0.5) for i in range(40)]
    cluster.submit(*tasks)
    ledger = cluster.ledger()

    def mid_run() -> bool:  # some done, some in flight on the worker: the moment to kill
        done = ledger.counts().get("succeeded", 0)
        return done >= 4 and sum(ledger.in_flight_by_worker().values()) > 0

    wait_until(mid_run, 60, "some tasks done and some in flight")
    leader.popen.kill()  # SIGKILL: its ledger writes stop mid-run
    leader.popen.wait()
    cluster.wait_log(standby, "this scheduler is active", 30)
    rows = cluster.wait_states([t.id for t in tasks], timeout=120)
    assert {r.state for r in rows.values()} == {"succeeded"}
    for t in tasks:
        states = [h["state"] for h in ledger.history(t.id)]
        assert states.count("succeeded") == 1, (t.id, states)
    assert ledger.counts() == {"succeeded": len(tasks)}
    epoch, holder, _ = ledger.leader()
    assert epoch == 2 and holder.endswith(f":{standby.popen.pid}")
    assert "restored" in standby.log.read_text()
    assert not (tmp_path / "host-b" / "ledger.sqlite").exists()
    ledger.close()


def test_a_deposed_leader_stops_and_writes_nothing(cluster: LocalCluster, pg_url: str) -> None:
    leader = cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    cluster.wait_states(cluster.submit(sleep_task("before", 0)))
    usurper = open_url(pg_url, cluster.state_dir)
    usurper.take_lead("another-host:1")  # as a scheduler elsewhere that became active
    cluster.submit(sleep_task("after", 0))
    leader.popen.wait(30)
    assert leader.popen.returncode == 3
    log = leader.log.read_text()
    assert "another scheduler (another-host:1) took the lead" in log
    assert "Traceback" not in log
    reader = cluster.ledger()
    assert reader.get("after") is None  # its turn was rolled back
    row = reader.get("before")
    assert row is not None and row.state == "succeeded"
    usurper.close()
    reader.close()


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` holds (its fds against
    ``/proc/net/tcp``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_leader_whose_session_ends_says_why_and_stops(cluster: LocalCluster, pg_url: str) -> None:
    """The server ends the scheduler's session: it stops (exit 3, as deposed), and its last
    words give the server's reason, not the error of a commit tried after it."""
    leader = cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    cluster.wait_states(cluster.submit(sleep_task("before", 0)))
    ports = sorted(local_tcp_ports(leader.popen.pid))  # this scheduler's sessions only
    with psycopg.connect(pg_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'matchmaker-scheduler' AND client_port = ANY(%s)",
            (ports,),
        ).fetchone()
    assert ended is not None and ended[0] >= 1
    cluster.submit(sleep_task("after", 0))  # its next commit meets the ended session
    leader.popen.wait(30)
    assert leader.popen.returncode == 3
    lines = leader.log.read_text().splitlines()
    first = next(line for line in lines if " ERROR matchmaker.service: " in line)
    reason = first.split(" ERROR matchmaker.service: ", 1)[1]
    assert "ended this scheduler's session (" in reason
    assert "the connection is closed" not in reason  # the server's words, whichever came
    last = [line for line in lines if line.startswith("matchmaker: ")][-1]
    assert last == f"matchmaker: {reason}"
    assert not any("Traceback" in line for line in lines)


def test_the_cli_reads_a_postgresql_ledger_with_a_read_only_role(
    cluster: LocalCluster, pg_url: str, pg_schemas: Schemas
) -> None:
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 2)
    cluster.wait_states(cluster.submit(sleep_task("done", 0)))
    cluster.submit(TaskRequest("waits", "sleep", constraints={"gpu": {">=": 1}}))
    wait_until(lambda: bool((r := cluster.task("waits")) and r.reason), 30, "a reason")
    parts = urllib.parse.urlsplit(pg_url)
    schema = urllib.parse.parse_qs(parts.query)["options"][0].split("=", 1)[1]
    database = parts.path.lstrip("/")
    role, password = f"mm_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    grants = cli("ledger", "grants", "--role", role, "--schema", schema, "--database", database)
    assert grants.returncode == 0, grants.stderr
    admin = pg_schemas.admin
    admin.execute(grants.stdout)
    admin.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
    try:
        url = urllib.parse.urlunsplit(
            parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}")
        )
        status = cli("status", "done", "--ledger-url", url)
        assert status.returncode == 0, status.stderr
        assert "succeeded" in status.stdout and "w1" in status.stdout
        explain = cli("explain", "waits", "--ledger-url", url)
        assert explain.returncode == 0 and "gpu" in explain.stdout, explain.stderr
        info = cli("ledger", "info", "--ledger-url", url)
        assert info.returncode == 0 and "epoch 1" in info.stdout, info.stderr
        agent = cluster.start_agent()
        workers = cli(
            "workers", "--ledger-url", url, "--serf-rpc", agent.rpc_addr,
            "--serf-auth-key-file", str(cluster.keys_dir / "serf-rpc-auth.key"),
        )  # fmt: skip
        assert workers.returncode == 0 and "w1" in workers.stdout, workers.stderr
        refused = cli("ledger", "prune", "--older-than", "0", "--ledger-url", url)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "permission denied" in refused.stderr or "read-only" in refused.stderr
        missing = cli("status", "nope", "--ledger-url", url)
        assert missing.returncode == 2 and "no task 'nope'" in missing.stderr
    finally:
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def _probes(ledger: TaskLedger) -> tuple[int, ...]:
    """Keepalive on, idle, interval, count and user timeout of the ledger's own socket."""
    fd = ledger.db.fileno()  # type: ignore[attr-defined]
    with socket.socket(fileno=os.dup(fd)) as sock:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )


def test_both_ends_of_the_writer_session_drop_a_cut_off_peer(pg_url: str) -> None:
    """Idle in a transaction, or cut off in the middle of a pipeline (where that timeout is
    not armed), a scheduler's session is ended by the server within seconds; and the
    scheduler's own socket probes the server, so a leader waiting for a reply that will
    never come (its session ended during the cut) fails instead of waiting for ever."""
    ledger = open_url(pg_url, ROOT)
    try:
        client = _probes(ledger)
        shown = {
            name: ledger.db.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[attr-defined]
            for name in (
                "idle_in_transaction_session_timeout",
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
            )
        }
    finally:
        ledger.close()
    assert shown == {
        "idle_in_transaction_session_timeout": "10s",
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",  # ms
    }
    assert client == (1, 5, 2, 3, 10000)


def test_a_ledger_url_may_set_its_own_probes(pg_url: str) -> None:
    joiner = "&" if "?" in pg_url else "?"
    ledger = open_url(f"{pg_url}{joiner}keepalives_idle=30&tcp_user_timeout=20000", ROOT)
    try:
        assert _probes(ledger) == (1, 30, 2, 3, 20000)
    finally:
        ledger.close()
