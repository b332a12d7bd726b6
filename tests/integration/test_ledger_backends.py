"""The ledger's contract on both backends (each test runs on SQLite and on PostgreSQL):
rows read back as written, fencing, retention, migrations, read-only handles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from matchmaker.book import Book
from matchmaker.ledger import LeaderLost, LedgerError, TaskLedger, migrations, open_url
from matchmaker.ledger.retention import Pruner, archive, prune
from matchmaker.messages import TaskRequest, TaskResult

Open = Callable[..., TaskLedger]


def test_a_task_reads_back_as_it_was_written(ledger_url: str, open_ledgers: Open) -> None:
    ledger = open_ledgers(ledger_url)
    request = TaskRequest(
        "a", "sleep", {"seconds": 0.5, "deep": {"x": [1, None, "y"]}},
        priority=7, constraints={"gpu": {">=": 1}}, preferences={"site": "iu"},
        max_attempts=4, timeout=12.5,
    )  # fmt: skip
    ledger.add_owned([(request, "alice")], 100.25)
    ledger.commit()
    ledger.assign([("a", 1, "w1", 101.5)])
    ledger.update("a", 102.0, state="succeeded", output={"n": 3}, finished_at=102.0)
    ledger.commit()
    row = ledger.get("a")
    assert row is not None
    assert row.request() == request and row.owner == "alice"
    assert (row.state, row.worker, row.assigned_at, row.finished_at) == (
        "succeeded", "w1", 101.5, 102.0,
    )  # fmt: skip
    assert row.output == {"n": 3} and row.submitted_at == 100.25
    assert [h["state"] for h in ledger.history("a")] == ["pending", "assigned"]
    assert ledger.counts() == {"succeeded": 1}
    assert ledger.get("nope") is None


def test_free_text_with_a_nul_character_is_recorded(ledger_url: str, open_ledgers: Open) -> None:
    """PostgreSQL's text cannot hold NUL: a worker's error with one must not fail a commit."""
    ledger = open_ledgers(ledger_url)
    ledger.add([TaskRequest("a", "sleep")], 1.0)
    ledger.update("a", 2.0, error="bad\x00byte")
    ledger.transitions([("a", 1, "failed", "w1", 2.0, "note\x00")])
    ledger.commit()
    row = ledger.get("a")
    assert row is not None and row.error is not None and row.error.startswith("bad")
    assert ledger.history("a")[-1]["note"].startswith("note")


def test_open_tasks_and_drained_workers_survive_a_new_handle(
    ledger_url: str, open_ledgers: Open
) -> None:
    book = Book(open_ledgers(ledger_url))
    book.submit([TaskRequest(t, "sleep") for t in "abc"], 1.0)
    book.dispatching([("a", "w1"), ("b", "w2")], 2.0)
    book.assigned([("a", "w1", 2.0), ("b", "w2", 2.0)])
    book.result(TaskResult("b", 1, "w2", "succeeded", output={}), 3.0)
    book.ledger.set_drained("w1", True, 3.0)
    book.ledger.set_drained("w2", True, 3.0)
    book.ledger.set_drained("w2", False, 4.0)
    book.ledger.commit()
    again = Book(open_ledgers(ledger_url))
    again.restore(again.ledger.open_tasks())
    assert sorted(again.pending) == ["c"] and sorted(again.in_flight) == ["a"]
    assert again.ledger.drained() == {"w1"}
    assert again.ledger.in_flight_by_worker() == {"w1": 1}


# -- fencing ----------------------------------------------------------------------------


def test_a_deposed_leader_commits_nothing(ledger_url: str, open_ledgers: Open) -> None:
    """Two handles on one ledger: the second takes the lead; the first's next commit is
    refused, rolled back, and none of it is visible; the new leader's commits go on."""
    first, second = open_ledgers(ledger_url), open_ledgers(ledger_url)
    one = first.take_lead("host-a:1")
    first.add([TaskRequest("before", "sleep")], 1.0)
    first.commit()
    two = second.take_lead("host-b:2")
    assert two == one + 1 and second.leader()[:2] == (two, "host-b:2")
    first.add([TaskRequest("late", "sleep")], 2.0)
    first.update("before", 2.0, state="dead", finished_at=2.0)
    with pytest.raises(LeaderLost, match=r"host-b:2.*epoch 2.*held 1"):
        first.commit()
    reader = open_ledgers(ledger_url, readonly=True)
    assert reader.get("late") is None
    row = reader.get("before")
    assert row is not None and row.state == "pending"
    assert [h["note"] for h in reader.history("before")] == ["submitted"]
    with pytest.raises(LeaderLost):  # and it stays deposed
        first.add([TaskRequest("later", "sleep")], 3.0)
        first.commit()
    second.add([TaskRequest("new", "sleep")], 3.0)
    second.commit()
    assert reader.counts() == {"pending": 2}


def test_a_deposed_leader_cannot_prune_either(ledger_url: str, open_ledgers: Open) -> None:
    first, second = open_ledgers(ledger_url), open_ledgers(ledger_url)
    first.take_lead()
    first.add([TaskRequest("old", "sleep")], 1.0)
    first.update("old", 2.0, state="succeeded", finished_at=2.0)
    first.commit()
    second.take_lead()
    assert first.prune_tasks(before=10.0, limit=10) == ["old"]  # in its transaction only
    with pytest.raises(LeaderLost):
        first.commit()
    assert second.get("old") is not None


def test_taking_the_lead_commits_what_was_batched_first(
    ledger_url: str, open_ledgers: Open
) -> None:
    ledger = open_ledgers(ledger_url)
    ledger.add([TaskRequest("a", "sleep")], 1.0)
    epoch = ledger.take_lead()
    assert open_ledgers(ledger_url, readonly=True).counts() == {"pending": 1}
    assert ledger.take_lead() == epoch + 1  # a reconnect takes a new epoch


# -- retention --------------------------------------------------------------------------


def _finished(ledger: TaskLedger, ids: list[str], at: float, state: str = "succeeded") -> None:
    ledger.add([TaskRequest(i, "sleep") for i in ids], at - 1)
    for i in ids:
        ledger.update(i, at, state=state, finished_at=at)
        ledger.transitions([(i, 1, state, "w1", at, None)])
    ledger.commit()


def test_pruning_deletes_old_finished_tasks_and_their_history_only(
    ledger_url: str, open_ledgers: Open
) -> None:
    ledger = open_ledgers(ledger_url)
    _finished(ledger, [f"old{n}" for n in range(25)], 10.0)
    _finished(ledger, ["dead"], 11.0, "dead")
    _finished(ledger, ["recent"], 100.0)
    ledger.add([TaskRequest("open", "sleep")], 1.0)  # submitted long ago, still pending
    ledger.commit()
    assert sorted(ledger.prune_tasks(before=50.0, limit=10))[:2] == ["old0", "old1"]
    ledger.commit()
    assert prune(ledger, before=50.0, batch=7) == 16  # 15 old and the dead one
    assert sorted(ledger.counts().items()) == [("pending", 1), ("succeeded", 1)]
    ids = {i for (i,) in ledger.query("SELECT DISTINCT id FROM transitions")}
    assert ids == {"recent", "open"}


def test_a_task_retried_after_it_was_chosen_is_not_pruned(
    ledger_url: str, open_ledgers: Open
) -> None:
    ledger = open_ledgers(ledger_url)
    _finished(ledger, ["a", "b"], 10.0, "dead")
    ledger.update("a", 20.0, state="pending", attempt=2, finished_at=None)
    ledger.commit()
    assert ledger.delete_finished(["a", "b"], before=50.0) == ["b"]
    ledger.commit()
    row = ledger.get("a")
    assert row is not None and row.state == "pending" and len(ledger.history("a")) == 2


def test_the_pruner_takes_bounded_steps_and_catches_up(ledger_url: str, open_ledgers: Open) -> None:
    ledger = open_ledgers(ledger_url)
    _finished(ledger, [f"t{n}" for n in range(25)], 10.0)  # 1970: long past any retention
    pruner = Pruner(retention=3600.0, batch=10, pause=3600.0)
    steps = []
    for _ in range(4):
        steps.append(pruner.step(ledger))
        ledger.commit()
    assert steps == [10, 10, 5, 0]  # a full batch: due again at once; a short one: a pause
    assert ledger.counts() == {}
    assert Pruner(retention=0).step(ledger) == 0  # 0 keeps everything


def test_the_archive_holds_what_it_deleted(
    ledger_url: str, open_ledgers: Open, tmp_path: Path
) -> None:
    ledger = open_ledgers(ledger_url)
    _finished(ledger, [f"t{n}" for n in range(5)], 10.0)
    _finished(ledger, ["recent"], 100.0)
    out = tmp_path / "archive.jsonl"
    assert archive(ledger, before=50.0, out=out, batch=2) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == [f"t{n}" for n in range(5)]
    assert [h["state"] for h in lines[0]["history"]] == ["pending", "succeeded"]
    assert lines[0]["state"] == "succeeded" and lines[0]["payload"] == {}
    assert out.stat().st_mode & 0o777 == 0o600
    assert ledger.counts() == {"succeeded": 1}
    assert archive(ledger, before=50.0, out=out) == 0


# -- migrations and read-only handles ---------------------------------------------------


def test_a_reader_neither_writes_nor_migrates(
    ledger_url: str, open_ledgers: Open, tmp_path: Path
) -> None:
    writer = open_ledgers(ledger_url)
    writer.add([TaskRequest("a", "sleep")], 1.0)
    writer.commit()
    reader = open_ledgers(ledger_url, readonly=True)
    assert reader.counts() == {"pending": 1}
    reader.add([TaskRequest("b", "sleep")], 1.0)
    with pytest.raises(Exception, match=r"(?i)read-?only"):
        reader.commit()
    assert writer.counts() == {"pending": 1}


def test_a_ledger_from_a_newer_version_is_refused(
    ledger_url: str, open_ledgers: Open, tmp_path: Path
) -> None:
    ledger = open_ledgers(ledger_url)
    if ledger_url.startswith("sqlite"):
        ledger.query(f"PRAGMA user_version = {migrations.LATEST + 1}")
    else:
        ledger.query("UPDATE schema_version SET version = ?", (migrations.LATEST + 1,))
    with pytest.raises(LedgerError, match="newer than this matchmaker"):
        open_url(ledger_url, tmp_path)


def test_migrations_are_numbered_and_applied_once(ledger_url: str, open_ledgers: Open) -> None:
    ledger = open_ledgers(ledger_url)
    ledger.take_lead()
    again = open_ledgers(ledger_url)  # a second writer finds it current: nothing applied twice
    assert again.leader()[0] == 1
    if ledger_url.startswith("sqlite"):
        assert again.query("PRAGMA user_version") == [(migrations.LATEST,)]
    else:
        assert again.query("SELECT version FROM schema_version") == [(migrations.LATEST,)]


def test_a_ledger_that_is_not_there_says_so(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        open_url(f"sqlite://{tmp_path}/none.sqlite", tmp_path, readonly=True)
    with pytest.raises(
        LedgerError, match=r"cannot reach the ledger at postgresql://u@127\.0\.0\.1:1/db"
    ):
        open_url("postgresql://u:secret@127.0.0.1:1/db", tmp_path)
    with pytest.raises(LedgerError, match="ledger_url must be"):
        open_url("mysql://x", tmp_path)


def test_attempt_logs_are_kept_replaced_and_pruned_with_their_task(
    ledger_url: str, open_ledgers: Open, tmp_path: Path
) -> None:
    ledger = open_ledgers(ledger_url)
    _finished(ledger, ["a"], 10.0)
    ledger.add_log("a", 1, "w1", 10.0, "first\x00try")
    ledger.add_log("a", 1, "w1", 10.5, "replaced")  # the same attempt again: the last one
    ledger.add_log("a", 2, "w2", 11.0, "second")
    ledger.commit()
    assert [(g["attempt"], g["text"]) for g in ledger.logs("a")] == [(1, "replaced"), (2, "second")]
    assert [g["worker"] for g in ledger.logs("a", attempt=2)] == ["w2"]
    out = tmp_path / "archive.jsonl"
    assert archive(ledger, before=50.0, out=out) == 1
    assert [g["text"] for g in json.loads(out.read_text())["logs"]] == ["replaced", "second"]
    assert ledger.logs("a") == [] and ledger.query("SELECT COUNT(*) FROM task_logs") == [(0,)]
