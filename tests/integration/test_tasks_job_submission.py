"""job_submission against the local Aurora-compatible scheduler over real HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aurora.client import AuroraClient
from aurora.local import LocalAurora
from workers.tasks import REGISTRY, TaskContext, TaskError
from workers.tasks.job_submission import run


@pytest.fixture(scope="module")
def aurora() -> Iterator[LocalAurora]:
    with LocalAurora(port=0) as server:
        yield server


@pytest.fixture(autouse=True)
def token_in_env(aurora: LocalAurora, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment names the server's token file, as the local cluster does."""
    monkeypatch.setenv("MM_AURORA_TOKEN_FILE", str(aurora.token_file))


def context(aurora: LocalAurora, tmp_path: Path, **changes: Any) -> TaskContext:
    fields: dict[str, Any] = {"task_id": "t1", "attempt": 1, "worker": "w1", "sandbox": tmp_path}
    return TaskContext(**(fields | {"aurora_url": aurora.url} | changes))


def payload(cmdline: str, **changes: Any) -> dict[str, Any]:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    return {
        "job": {"role": "gateway", "environment": "test", "name": name},
        "processes": [{"name": "setup", "cmdline": "true"}, {"name": "main", "cmdline": cmdline}],
        "resources": {"cpus": 0.1, "ram_mb": 16, "disk_mb": 16},
        **changes,
    }


def key(p: dict[str, Any]) -> str:
    return "gateway/test/" + p["job"]["name"]


def test_registered() -> None:
    assert REGISTRY["job_submission"] is run


def test_finished_job_reports_status_and_events(aurora: LocalAurora, tmp_path: Path) -> None:
    p = payload("echo done", instances=2)
    result = run(p, context(aurora, tmp_path))
    assert result["status"] == "FINISHED" and result["job"] == key(p) and not result["adopted"]
    assert len(result["tasks"]) == 2
    assert [e["status"] for e in result["tasks"][0]["events"]][-1] == "FINISHED"


def test_failed_job_is_a_task_error_with_aurora_s_message(
    aurora: LocalAurora, tmp_path: Path
) -> None:
    with pytest.raises(
        TaskError, match=r"ended FAILED: instance 0: Process 'main' failed: exit status 7"
    ):
        run(payload("exit 7"), context(aurora, tmp_path))


def wait_running(aurora: LocalAurora, job: str) -> None:
    client = AuroraClient(aurora.url)
    deadline = time.monotonic() + 10
    while not (client.tasks(job) and client.status(job)[0].status == "RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_cancel_kills_the_aurora_job(aurora: LocalAurora, tmp_path: Path) -> None:
    p = payload("sleep 60")
    ctx = context(aurora, tmp_path)
    errors: list[Exception] = []

    def submit() -> None:
        try:
            run(p, ctx)
        except TaskError as e:
            errors.append(e)

    thread = threading.Thread(target=submit)
    thread.start()
    wait_running(aurora, key(p))
    ctx.cancelled.set()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(errors) == 1 and "was cancelled; killed it" in str(errors[0])
    assert AuroraClient(aurora.url).wait(key(p), timeout=20).status == "KILLED"


def test_timeout_kills_the_aurora_job(aurora: LocalAurora, tmp_path: Path) -> None:
    p = payload("sleep 60", timeout=0.5)
    with pytest.raises(TaskError, match=r"timed out after 0.5s; killed it"):
        run(p, context(aurora, tmp_path))
    assert AuroraClient(aurora.url).wait(key(p), timeout=20).status == "KILLED"


def test_deadline_bounds_the_timeout(aurora: LocalAurora, tmp_path: Path) -> None:
    p = payload("sleep 60")
    with pytest.raises(TaskError, match="timed out"):
        run(p, context(aurora, tmp_path, deadline=time.time() + 0.5))
    assert AuroraClient(aurora.url).wait(key(p), timeout=20).status == "KILLED"


def test_retry_adopts_the_job_of_an_earlier_attempt(
    aurora: LocalAurora, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = tmp_path / "go"
    p = payload("true")
    earlier = f"while [ ! -e {go} ]; do sleep 0.02; done"
    AuroraClient(aurora.url).create_job(
        "gateway", "test", p["job"]["name"], [("main", earlier)], 0.1, 16, 16
    )
    with pytest.raises(TaskError, match="already exists"):
        run(p, context(aurora, tmp_path))  # a first attempt: the name is someone else's
    real_wait = AuroraClient.wait

    def release_then_wait(self: AuroraClient, *args: Any, **kwargs: Any) -> Any:
        go.touch()  # the earlier job may end only once run() has decided to adopt it
        return real_wait(self, *args, **kwargs)

    monkeypatch.setattr(AuroraClient, "wait", release_then_wait)
    result = run(p, context(aurora, tmp_path, attempt=2))
    assert result["adopted"] and result["status"] == "FINISHED"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"job": {"role": "r", "environment": "e"}}, "job name"),
        ({"job": {"role": "r b", "environment": "e", "name": "n"}}, "job role"),
        ({"processes": []}, "'processes'"),
        ({"processes": [{"name": "a"}]}, "non-empty 'cmdline'"),
        ({"processes": [{"name": "a", "cmdline": "x"}, {"name": "a", "cmdline": "y"}]}, "unique"),
        ({"resources": {"gpus": 1}}, "may only set"),
        ({"resources": {"cpus": -1}}, "resource cpus"),
        ({"instances": 0}, "'instances'"),
        ({"timeout": "soon"}, "'timeout'"),
    ],
)
def test_bad_payload_is_refused(
    aurora: LocalAurora, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        run(payload("true", **changes), context(aurora, tmp_path))


def test_unreachable_aurora_is_a_clear_error(tmp_path: Path) -> None:
    ctx = TaskContext("t", 1, "w", tmp_path, aurora_url="http://127.0.0.1:9")
    with pytest.raises(TaskError, match=r"could not submit job .*cannot reach Aurora"):
        run(payload("true"), ctx)


def test_without_the_token_aurora_refuses_and_runs_nothing(
    aurora: LocalAurora, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MM_AURORA_TOKEN_FILE")
    marker = tmp_path / "ran"
    with pytest.raises(TaskError, match=r"could not submit job .*HTTP 401"):
        run(payload(f"touch {marker}"), context(aurora, tmp_path))
    assert not marker.exists()


def test_a_token_file_others_can_read_is_a_clear_error(
    aurora: LocalAurora, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert aurora.token_file is not None
    leaky = tmp_path / "token"
    leaky.write_text(aurora.token_file.read_text())
    leaky.chmod(0o644)
    monkeypatch.setenv("MM_AURORA_TOKEN_FILE", str(leaky))
    with pytest.raises(TaskError, match=r"cannot talk to Aurora: .* is readable by others"):
        run(payload("true"), context(aurora, tmp_path))
