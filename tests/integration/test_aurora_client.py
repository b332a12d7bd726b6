"""AuroraClient against the local Aurora-compatible scheduler over real HTTP, TJSON and binary."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

import pytest

from aurora.client import AuroraClient, TaskState
from aurora.errors import AuroraError, AuroraWaitCancelled, AuroraWaitTimeout
from aurora.local import LocalAurora


class Resources(TypedDict):
    cpus: float
    ram_mb: int
    disk_mb: int


SMALL: Resources = {"cpus": 0.1, "ram_mb": 16, "disk_mb": 16}


@pytest.fixture(scope="module")
def aurora(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAurora]:
    server = LocalAurora(port=0, sandbox_root=tmp_path_factory.mktemp("sandboxes"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["json", "binary"])
def client(request: pytest.FixtureRequest, aurora: LocalAurora) -> AuroraClient:
    return AuroraClient(aurora.url, timeout=5, protocol=request.param, token=aurora.token)


_names = iter(range(10**6))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def sandbox_of(aurora: LocalAurora, state: TaskState) -> Path:
    return aurora.scheduler.sandbox_root / state.task_id


def test_job_that_finishes_runs_processes_in_order(
    client: AuroraClient, aurora: LocalAurora
) -> None:
    name = unique("hello")
    processes = [("first", "echo one > out.txt"), ("second", "echo two >> out.txt")]
    key = client.create_job("www", "test", name, processes, **SMALL, instances=2)
    outcome = client.wait(key, timeout=20)
    assert outcome.status == "FINISHED"
    assert outcome.job == f"www/test/{name}"
    assert [t.instance for t in outcome.tasks] == [0, 1]
    for task in outcome.tasks:
        statuses = [e.status for e in task.events]
        assert statuses == ["PENDING", "ASSIGNED", "STARTING", "RUNNING", "FINISHED"]
        timestamps = [e.timestamp_ms for e in task.events]
        assert timestamps == sorted(timestamps) and timestamps[0] > 0
        assert (sandbox_of(aurora, task) / "out.txt").read_text() == "one\ntwo\n"
        assert (sandbox_of(aurora, task) / ".logs" / "second" / "0" / "stdout").exists()


def test_job_that_fails_reports_failed_with_the_exit_status(client: AuroraClient) -> None:
    key = client.create_job(
        "www", "test", unique("fail"), [("a", "true"), ("b", "exit 3")], **SMALL
    )
    outcome = client.wait(key, timeout=20)
    assert outcome.status == "FAILED"
    last = outcome.tasks[0].events[-1]
    assert last.status == "FAILED" and "'b'" in (last.message or "") and "3" in (last.message or "")


def test_killed_job_stops_its_processes(client: AuroraClient, aurora: LocalAurora) -> None:
    key = client.create_job(
        "www", "test", unique("sleepy"), [("s", "echo $$ > pid; sleep 60")], **SMALL
    )
    poll(lambda: client.status(key)[0].status == "RUNNING")
    sandbox = sandbox_of(aurora, client.status(key)[0])
    poll(lambda: (sandbox / "pid").exists() and (sandbox / "pid").read_text().strip() != "")
    pid = int((sandbox / "pid").read_text())
    assert key in {job.key for job in client.jobs("www")}
    assert client.kill(key, message="test says stop") is None
    outcome = client.wait(key, timeout=20)
    assert outcome.status == "KILLED"
    statuses = [e.status for e in outcome.tasks[0].events]
    assert statuses[-2:] == ["KILLING", "KILLED"]
    assert "test says stop" in (outcome.tasks[0].events[-2].message or "")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    poll(gone)
    assert key not in {job.key for job in client.jobs()}
    assert client.kill(key) == "No tasks to kill."


def test_pending_reason_and_configs(client: AuroraClient) -> None:
    key = client.create_job("www", "test", unique("huge"), [("a", "true")], 1e6, 16, 16)
    reasons = client.pending_reason(key)
    assert list(reasons.values()) == ["Insufficient: CPU"]
    assert client.status(key)[0].status == "PENDING"
    with_config = client.tasks(key, with_configs=True)[0].assignedTask.task.executorConfig
    without = client.tasks(key)[0].assignedTask.task.executorConfig
    assert with_config.name == "AuroraExecutor" and '"processes"' in with_config.data
    assert without.name == "AuroraExecutor" and without.data is None
    client.kill(key)
    assert client.wait(key, timeout=10).status == "KILLED"
    assert client.pending_reason(key) == {}


def test_create_job_twice_is_refused_while_active(client: AuroraClient) -> None:
    name = unique("twice")
    key = client.create_job("www", "test", name, [("s", "sleep 60")], **SMALL)
    with pytest.raises(AuroraError, match="already exists") as error:
        client.create_job("www", "test", name, [("s", "true")], **SMALL)
    assert error.value.code == "INVALID_REQUEST"
    client.kill(key)
    assert client.wait(key, timeout=20).status == "KILLED"
    again = client.create_job("www", "test", name, [("s", "true")], **SMALL)
    outcome = client.wait(again, timeout=20)  # the newest run of the key is what counts
    assert outcome.status == "FINISHED"
    assert len(client.tasks(again)) == 2


def test_wait_times_out_and_can_be_cancelled(client: AuroraClient) -> None:
    key = client.create_job("www", "test", unique("long"), [("s", "sleep 60")], **SMALL)
    with pytest.raises(AuroraWaitTimeout):
        client.wait(key, timeout=0.3, poll=0.05)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(AuroraWaitCancelled):
        client.wait(key, timeout=30, poll=0.05, cancelled=cancel)
    client.kill(key)
    assert client.wait(key, timeout=20).status == "KILLED"


def test_job_key_strings_are_checked(client: AuroraClient) -> None:
    with pytest.raises(AuroraError, match="role/environment/name"):
        client.status("not-a-key")


def test_concurrent_clients(aurora: LocalAurora) -> None:
    names = [unique("many") for _ in range(12)]
    outcomes: dict[str, str] = {}

    def submit(name: str, protocol: str) -> None:
        client = AuroraClient(aurora.url, protocol=protocol, token=aurora.token)
        key = client.create_job("www", "test", name, [("p", "echo $AURORA_TASK_ID")], **SMALL)
        outcomes[name] = client.wait(key, timeout=30, poll=0.05).status

    threads = [
        threading.Thread(target=submit, args=(n, "json" if i % 2 else "binary"))
        for i, n in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes == dict.fromkeys(names, "FINISHED")
