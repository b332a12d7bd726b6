"""``python -m matchmaker ledger ...`` and ``ledger_url`` in the configuration, on an
embedded ledger (the PostgreSQL side: tests/integration/test_ledger_standby.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matchmaker.config import Config, ConfigError, load
from matchmaker.devtools.cluster import ROOT
from matchmaker.ledger import open_ledger
from matchmaker.messages import TaskRequest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchmaker", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_ledger_url_is_checked_and_names_the_sqlite_file(tmp_path: Path) -> None:
    assert Config(state_dir=tmp_path).ledger_path == tmp_path / "ledger.sqlite"
    named = load(flags={"ledger_url": f"sqlite://{tmp_path}/x.sqlite"})
    assert named.ledger_path == tmp_path / "x.sqlite"
    with pytest.raises(ConfigError, match="ledger_url must be"):
        load(flags={"ledger_url": "mysql://db"})
    with pytest.raises(ConfigError, match="ledger_retention"):
        load(flags={"ledger_retention": "-1"})


def test_prune_archive_and_info_by_hand(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/ledger.sqlite"
    ledger = open_ledger(load(flags={"ledger_url": url}))
    ledger.take_lead("host-a:7")
    old = time.time() - 10 * 86400
    ledger.add([TaskRequest(f"old{n}", "sleep") for n in range(3)], old)
    ledger.add([TaskRequest("new", "sleep"), TaskRequest("open", "sleep")], time.time())
    for task_id, at in (("old0", old), ("old1", old), ("old2", old), ("new", time.time())):
        ledger.update(task_id, at, state="succeeded", finished_at=at)
    ledger.commit()
    ledger.close()
    info = cli("ledger", "info", "--ledger-url", url)
    assert info.returncode == 0 and "epoch 1, host-a:7" in info.stdout, info.stderr
    assert "succeeded 4" in info.stdout
    out = tmp_path / "archive.jsonl"
    done = cli("ledger", "archive", "--out", str(out), "--older-than", "86400", "--ledger-url", url)
    assert done.returncode == 0 and "archived 3 tasks" in done.stdout, done.stderr
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == [
        "old0", "old1", "old2",
    ]  # fmt: skip
    pruned = cli("ledger", "prune", "--before", "2999-01-01T00:00:00Z", "--ledger-url", url)
    assert pruned.returncode == 0 and "pruned 1 tasks" in pruned.stdout, pruned.stderr
    reader = open_ledger(load(flags={"ledger_url": url}), readonly=True)
    assert reader.counts() == {"pending": 1}
    reader.close()
    bad = cli("ledger", "prune", "--before", "yesterday", "--ledger-url", url)
    assert bad.returncode == 2 and "is not a date and time" in bad.stderr


def test_grants_print_sql_for_plain_names_only() -> None:
    printed = cli("ledger", "grants", "--role", "mm_reader", "--database", "matchmaker")
    assert printed.returncode == 0
    assert "GRANT SELECT ON public.tasks, public.transitions" in printed.stdout
    assert "dead_letters" not in printed.stdout
    hostile = cli("ledger", "grants", "--role", "x; DROP TABLE tasks")
    assert hostile.returncode == 2 and "plain lower-case SQL name" in hostile.stderr
