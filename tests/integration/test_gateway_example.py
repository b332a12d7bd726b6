"""The gateway example end to end against the real system: a scheduler with its HTTP API and
dashboard, two worker processes loading ``gateway_tasks`` (``wordcount`` and ``aggregate``)
with ``--tasks``, ``examples/gateway/client_chain.py`` run as a gateway would run it (as a
least-privilege client user), and the dashboard in a real headless Chromium showing the
workers and the chain.

Screenshots go under the test's ``tmp_path``; with ``MM_SCREENSHOT_DIR`` set, the overview
is also copied there as ``gateway-dashboard.png`` (how ``docs/gateway-dashboard.png`` is
made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import wait_until
from tests.api_support import ApiCluster, api_cluster
from tests.conftest import RoleUsers
from tests.integration.test_dashboard import page
from tests.integration.test_tasks_custom import python_path

pytestmark = [pytest.mark.broker, pytest.mark.serf, pytest.mark.timeout(120)]
__all__ = ["api_cluster", "page"]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "examples" / "gateway"
DOCUMENTS = ["The cat and the hat sat on the mat.", "The hat, the bat; a cat in a hat."]
WORKERS = {"gw-iu": "iu", "gw-tacc": "tacc"}  # name -> site
TOP = 50  # more than the distinct words: every count comes back


def counted(text: str) -> dict[str, Any]:
    """What ``wordcount`` should answer, by a tokenizer of the test's own (the documents
    have only plain ASCII words)."""
    counts = Counter(re.findall(r"[a-z]+", text.lower()))
    return {"words": sum(counts.values()), "distinct": len(counts), "counts": dict(counts)}


def test_the_gateway_chain_through_the_client_and_the_dashboard(
    api_cluster: ApiCluster,
    role_users: RoleUsers,
    page: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    python_path(monkeypatch, GATEWAY)  # the workers import gateway_tasks from the example
    c = api_cluster.cluster
    for name, site in WORKERS.items():
        c.start_worker(
            name, ["wordcount", "aggregate"], 2, {"site": site}, extra=["--tasks", "gateway_tasks"]
        )

    def listed() -> dict[str, Any]:
        return {w["name"]: w for w in api_cluster.get("/v1/workers")["workers"]}

    wait_until(lambda: set(listed()) == set(WORKERS), 20, "the API listing both workers")
    for worker in listed().values():
        assert {"wordcount", "aggregate"} <= set(worker["capabilities"])

    client = role_users.clients[0]
    env = {
        **os.environ,
        "MM_BROKER_URL": f"amqp://{client}@127.0.0.1:5672/{role_users.vhost}",
        "MM_BROKER_PASSWORD_FILE": str(role_users.secrets / f"{client}.password"),
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, str(GATEWAY / "client_chain.py"), "--first", "wordcount",
        "--then", "aggregate", "--then-payload", json.dumps({"top": TOP}), "--timeout", "30",
    ]  # fmt: skip
    for text in DOCUMENTS:
        command += ["--input", json.dumps({"text": text, "top": TOP})]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    expected = [counted(text) for text in DOCUMENTS]
    firsts = list(result["first"])
    assert list(result["first"].values()) == expected
    total: Counter[str] = Counter()
    for part in expected:
        total.update(part["counts"])
    [(last, output)] = result["then"].items()
    assert output == {
        "documents": len(DOCUMENTS),
        "words": sum(p["words"] for p in expected),
        "counts": dict(total),
    }
    chain = [*firsts, last]
    for task_id in chain:  # the ledger agrees, and the tasks ran on the gateway workers
        row = c.task(task_id)
        assert row is not None and row.state == "succeeded" and row.worker in WORKERS
        assert row.owner == client

    page.goto(api_cluster.url + "/")
    page.fill("#token", api_cluster.tokens["admin"])
    page.click("#login button")
    for name in WORKERS:
        page.wait_for_selector(f"#workers tr[data-worker='{name}'] td.state-alive")
    for name, site in WORKERS.items():  # columns: name, status, capabilities, ..., site (7th)
        row_cells = f"#workers tr[data-worker='{name}'] td"
        capabilities = page.inner_text(f"{row_cells}:nth-child(3)")
        assert {"wordcount", "aggregate"} <= set(capabilities.split(", "))
        assert page.inner_text(f"{row_cells}:nth-child(7)") == site
    for task_id in chain:
        page.wait_for_selector(f"#tasks tr[data-task='{task_id}'] td.state-succeeded")
    kinds = {t: page.inner_text(f"#tasks tr[data-task='{t}'] td:nth-child(2)") for t in chain}
    assert kinds == {**dict.fromkeys(firsts, "wordcount"), last: "aggregate"}
    page.wait_for_function(
        "document.querySelector('#reasons tbody').innerText.includes('nothing is waiting')"
    )
    cards = """([label, value]) => [...document.querySelectorAll('#cards .card')].some(
        (c) => c.querySelector('span').textContent === label
            && c.querySelector('b').textContent === value)"""
    for label in ("submitted", "succeeded"):  # the live counters caught up with the chain
        page.wait_for_function(cards, arg=[label, str(len(chain))], timeout=15_000)
    page.wait_for_function(cards, arg=["workers", str(len(WORKERS))], timeout=15_000)
    overview = tmp_path / "gateway-dashboard.png"
    page.screenshot(path=str(overview), full_page=True)

    page.click(f"#tasks tr[data-task='{last}'] a")
    page.wait_for_selector("#task-body pre.logs")
    body = page.inner_text("#task-body")
    assert page.inner_text("#task-id") == last
    assert body.split(",")[0] == "succeeded aggregate"
    timeline = page.inner_text("#task-body .timeline")
    ran_on = c.task(last).worker  # type: ignore[union-attr]
    assert "assigned" in timeline and "succeeded" in timeline and f"on {ran_on}" in timeline
    shown = json.loads(page.inner_text("#task-body pre:not(.logs)"))
    assert shown == output
    words = sum(p["words"] for p in expected)
    assert f"merged {len(DOCUMENTS)} documents, {words} words" in body
    page.screenshot(path=str(tmp_path / "gateway-task.png"), full_page=True)
    assert overview.stat().st_size > 0 and (tmp_path / "gateway-task.png").stat().st_size > 0

    if directory := os.environ.get("MM_SCREENSHOT_DIR"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(overview, Path(directory) / "gateway-dashboard.png")
