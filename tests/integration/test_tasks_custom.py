"""Custom task types through the whole system: a real scheduler, Serf agents, RabbitMQ and
worker processes that load tasks from a ``--tasks`` module or an installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from matchmaker.messages import TaskRequest
from membership.keys import AUTH_FILE
from tests.api_support import ApiCluster, api_cluster
from tests.integration.test_dashboard import SHOTS, page

pytestmark = [pytest.mark.broker, pytest.mark.serf]
__all__ = ["api_cluster", "page"]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "examples" / "gateway"

SHOUT = """
from workers import task, TaskError

@task("shout")
def shout(payload, context):
    text = payload.get("text")
    if not isinstance(text, str):
        raise TaskError("shout: 'text' must be a string")
    context.logger.info("shouting %d characters", len(text))
    print("raw line from print", file=context.log)
    return {"text": text.upper(), "attempt": context.attempt}
"""

LATER = """
from workers import task

@task("later")
def later(payload, context):
    return {"later": True}
"""


@pytest.fixture
def cluster(broker_url: str, tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path)
    try:
        yield c
    finally:
        c.stop()


def python_path(monkeypatch: pytest.MonkeyPatch, *entries: Path) -> None:
    """Processes started from here on find ``entries`` first (and this tree's code)."""
    now = os.environ.get("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*map(str, entries), now]))


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    assert cluster.agent is not None
    common = [
        "--broker-url", cluster.broker_url,
        "--state-dir", str(cluster.state_dir),
        "--serf-rpc", cluster.agent.rpc_addr,
        "--serf-auth-key-file", str(cluster.keys_dir / AUTH_FILE),
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "matchmaker", *args, *common],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_task_from_a_tasks_module_runs_and_its_log_is_kept(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "shouting.py").write_text(SHOUT)
    python_path(monkeypatch, modules)
    cluster.start_scheduler()
    cluster.start_worker("w1", ["shout", "sleep"], 2, extra=["--tasks", "shouting"])
    submitted = cli(
        cluster, "submit", "--id", "s1", "--type", "shout", "--payload", '{"text": "hi"}'
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "s1" and "warning" not in submitted.stderr
    bad = cli(cluster, "submit", "--id", "s2", "--type", "shout", "--max-attempts", "2")
    assert bad.returncode == 0
    rows = cluster.wait_states(["s1"])
    assert rows["s1"].output == {"text": "HI", "attempt": 1}
    assert rows["s1"].worker == "w1"
    cluster.wait_states(["s2"], ("dead",))
    logs = cli(cluster, "logs", "s1")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0].startswith("--- attempt 1 on w1, ")
    assert lines[1].endswith("INFO shouting 2 characters")
    assert lines[2] == "raw line from print"
    assert cli(cluster, "logs", "s1", "--attempt", "2").stderr.startswith(
        "matchmaker: no logs kept for attempt 2 of s1"
    )
    as_json = json.loads(cli(cluster, "logs", "s1", "--json").stdout)
    assert [(e["attempt"], e["worker"]) for e in as_json] == [(1, "w1")]
    missing = cli(cluster, "logs", "nope")
    assert missing.returncode == 2 and "no task 'nope'" in missing.stderr
    assert cli(cluster, "logs", "s2").returncode == 2  # failed before writing a line: no log


def test_an_unadvertised_type_waits_explained_until_a_worker_runs_it(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "later_tasks.py").write_text(LATER)
    python_path(monkeypatch, modules)
    cluster.start_scheduler()
    cluster.start_worker("w1", ["sleep"], 1)
    submitted = cli(cluster, "submit", "--id", "l1", "--type", "later")
    assert submitted.returncode == 0 and submitted.stdout.strip() == "l1"
    assert submitted.stderr.strip() == (
        "matchmaker: warning: no live worker advertises task type 'later' (nor is it among "
        "the configured task_types); its tasks wait until one does"
    )
    quiet = cli(cluster, "submit", "--id", "z1", "--type", "sleep")
    assert quiet.returncode == 0 and quiet.stderr == ""
    wait_until(
        lambda: (
            "no live worker advertises task type 'later'" in cli(cluster, "explain", "l1").stdout
        ),
        20,
        "explain to say why l1 waits",
    )
    assert cluster.task("l1") is not None and cluster.task("l1").state == "pending"  # type: ignore[union-attr]
    cluster.start_worker("w2", ["later"], 1, extra=["--tasks", "later_tasks"])
    rows = cluster.wait_states(["l1", "z1"])
    assert rows["l1"].output == {"later": True} and rows["l1"].worker == "w2"
    assert "is succeeded on worker w2, not waiting" in cli(cluster, "explain", "l1").stdout


def installed_example(site: Path) -> None:
    """The metadata pip would install for the example package: a ``*.dist-info`` with its
    entry points (read from its pyproject), found on ``sys.path`` by importlib.metadata."""
    import tomllib

    project = tomllib.loads((GATEWAY / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    points = project["entry-points"]["matchmaker.tasks"]
    lines = "".join(f"{name} = {value}\n" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[matchmaker.tasks]\n{lines}")


def test_the_gateway_example_from_its_entry_points(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    installed_example(site)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(GATEWAY), str(ROOT)]))
    cluster.start_scheduler()
    cluster.start_worker("counter", ["wordcount"], 2)
    cluster.start_worker("merger", ["aggregate"], 1)
    documents = {"d1": "the cat and the hat", "d2": "The hat, the bat; a cat"}
    ids = cluster.submit(
        *(TaskRequest(i, "wordcount", {"text": text, "top": 3}) for i, text in documents.items())
    )
    rows = cluster.wait_states(ids)
    assert rows["d1"].output == {
        "words": 5,
        "distinct": 4,
        "counts": {"the": 2, "cat": 1, "and": 1},
    }
    assert {r.worker for r in rows.values()} == {"counter"}
    parts = [rows[i].output for i in ids]
    [total] = cluster.submit(TaskRequest("sum", "aggregate", {"parts": parts, "top": 2}))
    merged = cluster.wait_states([total])[total]
    assert merged.worker == "merger"
    assert merged.output == {"documents": 2, "words": 11, "counts": {"the": 4, "cat": 1}}
    logs = cluster.ledger().logs("sum")
    assert [e["text"] for e in logs] == ["merged 2 documents, 11 words\n"]
    assert "counted 5 words, 4 distinct" in cluster.ledger().logs("d1")[0]["text"]


def test_exec_attempt_logs_reach_the_api_and_the_cli(
    api_cluster: ApiCluster, tmp_path: Path
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[commands]\nsh = ["/bin/sh", "-c"]\n')
    c = api_cluster.cluster
    c.start_worker("w1", ["exec"], 1, extra=["--config", str(config)])
    script = 'echo "out $MM_ATTEMPT"; echo "err $MM_ATTEMPT" >&2; exit 1'
    c.submit(TaskRequest("x1", "exec", {"command": "sh", "args": [script]}, max_attempts=2))
    row = c.wait_states(["x1"], ("dead",), timeout=40)["x1"]
    assert row.error == "exec: sh exited with 1: err 2"
    task = api_cluster.get("/v1/tasks/x1", "read")
    assert [(e["attempt"], e["worker"]) for e in task["logs"]] == [(1, "w1"), (2, "w1")]
    for entry in task["logs"]:
        n = entry["attempt"]
        assert f"out {n}\n" in entry["text"] and f"err {n}\n" in entry["text"]
    second = cli(c, "logs", "x1", "--attempt", "2")
    assert second.returncode == 0 and "out 2" in second.stdout and "out 1" not in second.stdout
    status, reply, _ = api_cluster.call(
        "POST", "/v1/tasks", "submit", {"id": "w-1", "type": "nobody_runs"}
    )
    assert status == 202 and reply["warning"] == (
        "no live worker advertises task type 'nobody_runs'; it waits until one does"
    )
    status, reply, _ = api_cluster.call("POST", "/v1/tasks", "submit", {"type": "exec"})
    assert status == 202 and "warning" not in reply


def test_the_dashboard_task_page_shows_each_attempts_logs(
    api_cluster: ApiCluster, page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "shouting.py").write_text(SHOUT)
    python_path(monkeypatch, modules)
    c = api_cluster.cluster
    c.start_worker("w1", ["shout"], 1, extra=["--tasks", "shouting"])
    c.submit(TaskRequest("loud", "shout", {"text": "hello"}))
    c.wait_states(["loud"])
    page.goto(api_cluster.url + "/")
    page.fill("#token", api_cluster.tokens["read"])
    page.click("#login button")
    page.wait_for_selector("#tasks tr[data-task='loud'] a")
    page.click("#tasks tr[data-task='loud'] a")
    page.wait_for_selector("#task-body pre.logs")
    body = page.inner_text("#task-body")
    assert "logs, attempt 1 on w1" in body
    assert "shouting 5 characters" in body and "raw line from print" in body
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard-task-logs.png"), full_page=True)
