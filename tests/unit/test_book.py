"""The scheduler's state machine against a real SQLite ledger."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker import ledger
from matchmaker.book import Book
from matchmaker.ledger import Ledger
from matchmaker.messages import TaskRequest, TaskResult


def assign(book: Book, pairs: list[tuple[str, str]], now: float) -> None:
    """A round placed these and the broker confirmed their dispatches."""
    book.dispatching(pairs, now)
    book.assigned([(task_id, worker, now) for task_id, worker in pairs])


def make(tmp_path: Path) -> Book:
    return Book(Ledger(tmp_path / "ledger.sqlite"), retry_backoff=1.0, result_grace=5.0)


def test_submit_is_idempotent(tmp_path: Path) -> None:
    book = make(tmp_path)
    assert book.submit([TaskRequest("a", "sleep"), TaskRequest("a", "sleep")], 1.0) == 1
    assert book.submit([TaskRequest("a", "sleep", priority=9)], 2.0) == 0
    book.ledger.commit()
    assert book.ledger.counts() == {"pending": 1}
    assert book.pending["a"].request.priority == 0


def test_success_path_and_stale_results(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep")], 1.0)
    assign(book, [("a", "w1")], 2.0)
    assert book.running("w1") == 1
    assert book.result(TaskResult("a", 1, "w1", "running", 2.5), 3.0) == "running"
    assert book.result(TaskResult("a", 2, "w1", "succeeded"), 3.5) == "ignored"
    assert (
        book.result(TaskResult("a", 1, "w1", "succeeded", 2.5, 3.9, {"ok": 1}), 4.0) == "succeeded"
    )
    assert book.result(TaskResult("a", 1, "w1", "succeeded"), 5.0) == "ignored"
    book.ledger.commit()
    row = book.ledger.get("a")
    assert row is not None and row.state == "succeeded" and row.output == {"ok": 1}
    assert book.running("w1") == 0
    states = [h["state"] for h in book.ledger.history("a")]
    assert states.count("succeeded") == 1 and "ignored-succeeded" in states


def test_failure_retries_with_backoff_then_dead(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep", max_attempts=2)], 0.0)
    assign(book, [("a", "w1")], 1.0)
    assert book.result(TaskResult("a", 1, "w1", "failed", error="boom"), 2.0) == "retry"
    assert book.pending["a"].attempt == 2 and book.pending["a"].not_before == 3.0
    assert book.due(2.5) == [] and [t.id for t in book.due(3.0)] == ["a"]
    assign(book, [("a", "w2")], 3.0)
    assert book.result(TaskResult("a", 2, "w2", "failed", error="again"), 4.0) == "dead"
    book.ledger.commit()
    row = book.ledger.get("a")
    assert row is not None and row.state == "dead" and row.error == "again"


def test_lost_worker_moves_its_tasks_with_the_next_attempt(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest(i, "sleep") for i in "abc"], 0.0)
    assign(book, [("a", "w1"), ("b", "w1"), ("c", "w2")], 1.0)
    assert book.worker_lost("w1", 2.0, "failed") == 2
    assert sorted(book.pending) == ["a", "b"] and book.pending["a"].attempt == 2
    assert book.running("w1") == 0 and book.running("w2") == 1
    assert book.result(TaskResult("a", 1, "w1", "succeeded"), 3.0) == "ignored"


def test_restore_rebuilds_open_tasks(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest(i, "sleep") for i in "abc"], 0.0)
    assign(book, [("a", "w1"), ("b", "w1")], 1.0)
    assert book.result(TaskResult("b", 1, "w1", "succeeded"), 1.5) == "succeeded"
    book.ledger.commit()
    again = make(tmp_path)
    again.restore(again.ledger.open_tasks())
    assert sorted(again.pending) == ["c"] and sorted(again.in_flight) == ["a"]
    assert again.running("w1") == 1


def test_restore_keeps_a_retried_task_and_drops_finished_ones(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest(i, "sleep") for i in "abcd"], 0.0)
    assign(book, [("a", "w1"), ("b", "w1"), ("c", "w1")], 1.0)
    assert book.result(TaskResult("a", 1, "w1", "failed", error="boom"), 2.0) == "retry"
    book.result(TaskResult("b", 1, "w1", "succeeded"), 2.0)
    book.cancel("c", 2.0)
    book.ledger.commit()
    again = make(tmp_path)
    again.restore(again.ledger.open_tasks())
    assert sorted(again.pending) == ["a", "d"] and again.pending["a"].attempt == 2
    assert again.in_flight == {}


def test_a_ledger_from_before_the_unfinished_index_is_migrated(tmp_path: Path) -> None:
    """Old layout: open tasks indexed by state, a retry kept its failed attempt's finish."""
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        ledger.SCHEMA.replace(
            "CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(submitted_at)"
            " WHERE finished_at IS NULL;",
            "CREATE INDEX tasks_open ON tasks(state) WHERE state IN ('pending', 'assigned');",
        )
    )
    old.executemany(
        "INSERT INTO tasks (id, type, payload, priority, constraints, preferences, max_attempts,"
        " timeout, state, attempt, submitted_at, updated_at, finished_at)"
        " VALUES (?, 'sleep', '{\"x\": NaN}', 0, '{}', '{}', 3, 60, ?, ?, 0, 0, ?)",
        [
            ("retried", "pending", 2, 5.0),
            ("done", "succeeded", 1, 4.0),
            ("new", "pending", 1, None),
        ],
    )
    old.commit()
    old.close()
    opened = Ledger(path)
    rows = sorted(opened.open_tasks(), key=lambda row: row.id)
    assert [row.id for row in rows] == ["new", "retried"]
    assert math.isnan(rows[1].payload["x"])  # the standard library wrote NaN; still readable
    names = {name for (name,) in opened.db.execute("SELECT name FROM sqlite_master")}
    assert "tasks_unfinished" in names and "tasks_open" not in names


def test_deadline_without_result_is_a_failed_attempt(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep", timeout=10)], 0.0)
    assign(book, [("a", "w1")], 0.0)
    assert book.expire(14.0) == 0
    assert book.expire(16.0) == 1
    assert book.pending["a"].attempt == 2


def test_cancel(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep"), TaskRequest("b", "sleep")], 0.0)
    assign(book, [("b", "w1")], 0.0)
    assert book.cancel("a", 1.0) == (True, None)
    assert book.cancel("b", 1.0) == (True, "w1")
    assert book.cancel("b", 1.0) == (False, None)
    assert not book.pending and not book.in_flight


def test_unconfirmed_dispatches_go_back_to_pending(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep"), TaskRequest("b", "sleep")], 0.0)
    book.dispatching([("a", "w1"), ("b", "w1")], 1.0)
    assert book.running("w1") == 2 and not book.pending
    book.undispatched([("a", "w1")])
    book.assigned([("a", "w1", 1.5), ("b", "w1", 1.5)])
    book.ledger.commit()
    assert sorted(book.pending) == ["a"] and book.pending["a"].attempt == 1
    assert book.ledger.counts() == {"pending": 1, "assigned": 1}


def test_a_result_that_overtakes_the_confirm_records_the_assignment(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep")], 0.0)
    book.dispatching([("a", "w1")], 1.0)
    assert book.result(TaskResult("a", 1, "w1", "succeeded", 1.2, 1.3), 1.4) == "succeeded"
    book.assigned([("a", "w1", 1.5)])  # the confirm, late: changes nothing
    book.ledger.commit()
    row = book.ledger.get("a")
    assert row is not None and row.state == "succeeded" and row.assigned_at == 1.2
    states = [h["state"] for h in book.ledger.history("a")]
    assert states == ["pending", "assigned", "succeeded"]


def test_expire_skips_tasks_that_landed_and_takes_the_current_deadline(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest(i, "sleep", timeout=10) for i in "abc"], 0.0)
    assign(book, [("a", "w1"), ("b", "w1"), ("c", "w1")], 0.0)  # deadlines 15
    book.result(TaskResult("a", 1, "w1", "succeeded"), 1.0)  # landed
    book.worker_lost("w1", 2.0, "failed")  # b and c: pending again, attempt 2
    assign(book, [("b", "w2")], 12.0)  # a new deadline: 27
    assert book.expire(16.0) == 0
    assert book.expire(28.0) == 1 and book.pending["b"].attempt == 3
    assert not book.deadlines


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("drlfenx"), st.integers(0, 2)), max_size=40))
def test_deadlines_and_running_count_match_a_full_scan(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Whatever happens, expire() fails exactly the tasks a scan would find late, and
    running_count is the number of tasks in flight that reported running."""
    book = make(tmp_path_factory.mktemp("book"))
    ids = ["t0", "t1", "t2"]
    book.submit([TaskRequest(i, "sleep", timeout=5 + n) for n, i in enumerate(ids)], 0.0)
    now = 0.0
    for op, k in ops:
        now += 1.0
        task_id, worker = ids[k], f"w{k % 2}"
        t = book.in_flight.get(task_id)
        if op == "d" and task_id in book.pending:
            book.dispatching([(task_id, worker)], now)
        elif op == "r" and t is not None:
            book.result(TaskResult(task_id, t.attempt, t.worker or worker, "running"), now)
        elif op == "f" and t is not None:
            book.result(TaskResult(task_id, t.attempt, t.worker or worker, "failed"), now)
        elif op == "l":
            book.worker_lost(worker, now, "failed")
        elif op == "n" and t is not None and t.state == "dispatching":
            book.undispatched([(task_id, t.worker or worker)])
        elif op == "x":
            book.cancel(task_id, now)
        elif op == "e":
            now += k * 3
            late = {i for i, f in book.in_flight.items() if f.deadline < now}
            assert book.expire(now) == len(late)
            assert not late & set(book.in_flight)
        running = sum(1 for f in book.in_flight.values() if f.state == "running")
        assert book.running_count == running


def test_a_result_counts_only_from_the_worker_of_the_attempt_in_flight(tmp_path: Path) -> None:
    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep"), TaskRequest("p", "sleep")], 1.0)
    assign(book, [("a", "w1")], 2.0)
    forged = [
        TaskResult("a", 1, "mallory", "succeeded", output={"x": 1}),  # another worker
        TaskResult("a", 2, "w1", "succeeded"),  # not the current attempt
        TaskResult("p", 1, "w1", "succeeded"),  # pending, never dispatched
        TaskResult("nope", 1, "w1", "succeeded"),  # unknown
    ]
    assert [book.result(r, 3.0) for r in forged] == ["ignored"] * 4
    assert book.in_flight["a"].worker == "w1" and "mallory" not in book.by_worker
    assert "p" in book.pending and book.pending["p"].attempt == 1
    done = TaskResult("a", 1, "w1", "succeeded", 2.5, 3.5, {"real": True})
    assert book.result(done, 4.0) == "succeeded"
    book.ledger.commit()
    row = book.ledger.get("a")
    assert row is not None and row.output == {"real": True} and row.worker == "w1"
    notes = [(h["state"], h["worker"], h["note"]) for h in book.ledger.history("a")]
    assert ("ignored-succeeded", "mallory", "attempt 1 was dispatched to w1, not to mallory") in (
        notes
    )
    assert ("ignored-succeeded", "w1", "stale: attempt 2, current attempt 1") in notes
    pending = book.ledger.history("p")
    assert pending[-1]["note"] == "the task is pending: no attempt of it is in flight"
    assert book.ledger.history("nope")[0]["note"] == "unknown task"
    assert book.ledger.counts() == {"pending": 1, "succeeded": 1}


def test_a_dead_or_cancelled_task_runs_again_as_one_more_attempt(tmp_path: Path) -> None:
    from matchmaker.messages import MessageError

    book = make(tmp_path)
    book.submit([TaskRequest("a", "sleep", max_attempts=1), TaskRequest("b", "sleep")], 0.0)
    assign(book, [("a", "w1")], 1.0)
    assert book.result(TaskResult("a", 1, "w1", "failed", error="boom"), 2.0) == "dead"
    book.cancel("b", 2.0)
    book.ledger.commit()
    for task_id in ("a", "b"):
        row = book.ledger.get(task_id)
        assert row is not None
        book.retry(row, 3.0)
    assert book.pending["a"].attempt == 2 and book.pending["b"].attempt == 2
    assign(book, [("a", "w2")], 4.0)
    assert book.result(TaskResult("a", 2, "w2", "succeeded"), 5.0) == "succeeded"
    book.ledger.commit()
    row = book.ledger.get("a")
    assert row is not None and row.state == "succeeded" and row.error is None
    assert "retried" in [h["note"] for h in book.ledger.history("a")]
    with pytest.raises(MessageError, match="only a dead or cancelled task"):
        book.retry(row, 6.0)  # succeeded: done
    reopened = Book(book.ledger, retry_backoff=1.0, result_grace=5.0)
    reopened.restore(book.ledger.open_tasks())
    assert sorted(reopened.pending) == ["b"]  # a restart keeps the retried task open
