"""The HTTP API and ``matchmaker tasks`` on a scheduler whose ledger is PostgreSQL (the
multi-host setup): a real scheduler process with its API, a real worker, the CLI run as a
process; nothing reads or makes a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.devtools.cluster import ROOT, wait_until
from matchmaker.messages import TaskRequest
from tests.api_support import ApiCluster, running_api

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pg_api(broker_url: str, pg_url: str, tmp_path: Path) -> Iterator[ApiCluster]:
    with running_api(broker_url, tmp_path, ledger_url=pg_url) as api:
        yield api


def tasks_cli(pg_url: str, state_dir: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "matchmaker", "tasks", "--ledger-url", pg_url,
         "--state-dir", str(state_dir), "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page: dict[str, object] = json.loads(done.stdout)
    return page


def test_the_api_and_the_cli_read_a_postgresql_ledger(
    pg_api: ApiCluster, pg_url: str, tmp_path: Path
) -> None:
    c = pg_api.cluster
    c.start_worker("w1", ["sleep"], 2)
    ids = c.submit(*[TaskRequest(f"t-{i}", "sleep", {"seconds": 0.01}) for i in range(5)])
    c.wait_states(ids)
    c.submit(TaskRequest("waits", "sleep", constraints={"gpu": {">=": 1}}))
    wait_until(lambda: bool((r := c.task("waits")) and r.reason), 30, "a reason for 'waits'")

    page = pg_api.get("/v1/tasks?state=succeeded&limit=3", "read")
    assert [t["id"] for t in page["tasks"]] == ["t-4", "t-3", "t-2"]
    rest = pg_api.get(f"/v1/tasks?state=succeeded&cursor={page['next_cursor']}", "read")
    assert [t["id"] for t in rest["tasks"]] == ["t-1", "t-0"] and rest["next_cursor"] is None
    everything = pg_api.get("/v1/tasks", "read")["tasks"]
    assert [t["id"] for t in everything] == ["waits", "t-4", "t-3", "t-2", "t-1", "t-0"]
    status, body, _ = pg_api.call("GET", "/v1/tasks?cursor=abc", "read")
    assert status == 400 and "cursor" in body["error"]

    task = pg_api.get("/v1/tasks/t-0", "read")
    assert (task["state"], task["worker"], task["output"]) == ("succeeded", "w1", {"slept": 0.01})
    assert [h["state"] for h in task["history"]][:2] == ["pending", "assigned"]
    assert task["history"][-1]["state"] == "succeeded"
    waiting = pg_api.get("/v1/tasks/waits", "read")
    assert waiting["state"] == "pending" and "gpu" in waiting["explanation"]
    status, body, _ = pg_api.call("GET", "/v1/tasks/nope", "read")
    assert status == 404 and "no task 'nope'" in body["error"]

    by_state = lambda: pg_api.get("/v1/stats")["tasks_by_state"]  # noqa: E731
    wait_until(lambda: by_state() == {"succeeded": 5, "pending": 1}, 10, "the counts")
    rounds = pg_api.get("/v1/rounds")
    assert len(rounds["waits"]) == 5
    assert [r["tasks"] for r in rounds["unplaced_by_reason"]] == [1]
    assert "gpu" in rounds["unplaced_by_reason"][0]["reason"]

    first = tasks_cli(pg_url, tmp_path / "cli", "--limit", "2")
    listed = [t["id"] for t in first["tasks"]]  # type: ignore[attr-defined]
    assert listed == ["waits", "t-4"] and isinstance(first["next_cursor"], str)
    rest_cli = tasks_cli(pg_url, tmp_path / "cli", "--cursor", first["next_cursor"])
    assert [t["id"] for t in rest_cli["tasks"]] == ["t-3", "t-2", "t-1", "t-0"]  # type: ignore[attr-defined]
    assert rest_cli["next_cursor"] is None
    assert not (c.state_dir / "ledger.sqlite").exists()
    assert not (tmp_path / "cli").exists()
