"""The ledger: writes merged per batch (on both backends: the ``ledger_url`` fixture runs a
test once on SQLite and once on PostgreSQL), and SQLite's write-ahead log (checkpointed by a
thread, restarted by the writer)."""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchmaker.book import Book
from matchmaker.config import Config
from matchmaker.ledger import DEAD_BODY_BYTES, Ledger, Letter, TaskLedger
from matchmaker.ledger.rows import TASK_COLUMNS
from matchmaker.messages import TaskRequest
from matchmaker.service import Scheduler


def log_restarts(path: Path) -> int:
    """How often the ledger's write-ahead log was started again from its head: the
    checkpoint sequence number in the log's header (bytes 12-15)."""
    with path.with_name(path.name + "-wal").open("rb") as log:
        return int.from_bytes(log.read(16)[12:16], "big")


def test_background_checkpoints_keep_the_log_short_and_lose_nothing(tmp_path: Path) -> None:
    """A writer that never pauses still gets its log started again from its head, again
    and again (with no checkpoints it never is, and the log only grows). How often
    depends on when the thread gets a core, so the writer goes on until three restarts,
    within a generous deadline."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, background_checkpoints=True)
    book = Book(ledger)
    checkpoints = ledger.checkpoints
    assert checkpoints is not None
    checkpoints.interval, checkpoints.restart_frames = 0.01, 64

    def write(start: int) -> None:
        book.submit([TaskRequest(f"t{i:06d}", "sleep") for i in range(start, start + 10)], 1.0)
        book.ledger.commit()

    write(0)
    first = log_restarts(path)
    written, deadline = 10, time.monotonic() + 60
    while log_restarts(path) < first + 3:
        assert time.monotonic() < deadline, "the log was not started again three times in 60 s"
        write(written)
        written += 10
    assert sum(1 for _ in book.ledger.history("t000000")) == 1
    book.ledger.close()
    reopened = Ledger(path, readonly=True)
    assert reopened.counts() == {"pending": written}


def test_the_writer_copies_the_last_frames_and_the_log_starts_again(tmp_path: Path) -> None:
    """Once the thread reports it caught up, the writer's next commit copies what is left,
    and its next write starts the log from its head."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, background_checkpoints=True)
    assert ledger.checkpoints is not None
    ledger.checkpoints.stop()  # the thread's part is played by hand here

    def write(task_id: str) -> None:
        ledger.add([TaskRequest(task_id, "sleep")], 1.0)
        ledger.commit()

    for n in range(20):
        write(f"t{n}")
    first = log_restarts(path)
    write("no-checkpoint-yet")
    assert log_restarts(path) == first
    ledger.checkpoints.caught_up.set()
    write("copies-the-rest")
    assert not ledger.checkpoints.caught_up.is_set()
    write("starts-the-log-again")
    assert log_restarts(path) == first + 1
    assert ledger.counts() == {"pending": 23}


# One write: ("update", task, columns), ("assign", task, worker), ("reason", task, text)
# or ("transition", task, state); each applied to two ledgers.
COLUMNS = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(["pending", "assigned", "running", "succeeded", "dead"]),
        "attempt": st.integers(1, 5),
        "worker": st.sampled_from([None, "w1", "w2"]),
        "started_at": st.floats(0, 100),
        "finished_at": st.one_of(st.none(), st.floats(0, 100)),
        "output": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(-9, 9))),
        "error": st.one_of(st.none(), st.text(max_size=5)),
    },
)
WRITE = st.one_of(
    st.tuples(st.just("update"), st.integers(0, 3), COLUMNS),
    st.tuples(st.just("assign"), st.integers(0, 3), st.sampled_from(["w1", "w2"])),
    st.tuples(st.just("reason"), st.integers(0, 3), st.text(max_size=5)),
    st.tuples(st.just("transition"), st.integers(0, 3), st.sampled_from(["running", "x"])),
)


def _apply(ledger: TaskLedger, write: tuple[str, int, Any], at: float) -> None:
    kind, n, value = write
    task_id = f"t{n}"
    if kind == "update":
        ledger.update(task_id, at, **value)
    elif kind == "assign":
        ledger.assign([(task_id, 1, value, at)])
    elif kind == "reason":
        ledger.set_reasons([(task_id, value)])
    else:
        ledger.transitions([(task_id, 1, value, None, at, None)])


def _tables(ledger: TaskLedger) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    ledger.commit()
    tasks = ledger.query(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY id")
    transitions = ledger.query(
        f"SELECT id, attempt, state, worker, at, note FROM transitions ORDER BY {ledger.ORDER}"
    )
    return [tuple(r) for r in tasks], [tuple(r) for r in transitions]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=st.lists(WRITE, max_size=30))
def test_writes_merged_in_one_batch_leave_what_writes_one_by_one_leave(
    new_ledger_url: Callable[[], str],
    open_ledgers: Callable[..., TaskLedger],
    writes: list[tuple[str, int, Any]],
) -> None:
    """The batch merges each task's changes into one row; the tables must not tell."""
    batched, single = open_ledgers(new_ledger_url()), open_ledgers(new_ledger_url())
    requests = [TaskRequest(f"t{n}", "sleep") for n in range(4)]
    for ledger in (batched, single):
        ledger.add(requests, 0.0)
        ledger.commit()
    for at, write in enumerate(writes, 1):
        _apply(batched, write, float(at))
        _apply(single, write, float(at))
        single.commit()
    assert _tables(batched) == _tables(single)


def test_an_id_added_again_is_not_new_before_or_after_the_commit(
    ledger_url: str, open_ledgers: Callable[..., TaskLedger]
) -> None:
    """The idempotency check sees the adds not yet written as well as the committed rows."""
    ledger = open_ledgers(ledger_url)
    a, b = TaskRequest("a", "sleep"), TaskRequest("b", "sleep")
    assert [r.id for r in ledger.add([a, a], 1.0)] == ["a"]
    assert [r.id for r in ledger.add([a, b], 2.0)] == ["b"]  # "a" still waits in memory
    ledger.commit()
    assert ledger.add([b, a], 3.0) == []
    ledger.commit()
    rows = ledger.query("SELECT id, submitted_at FROM tasks ORDER BY id")
    assert [tuple(r) for r in rows] == [("a", 1.0), ("b", 2.0)]


def test_a_ledger_from_before_received_at_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = Ledger(path)
    old.add([TaskRequest("a", "sleep")], 1.0)
    old.commit()
    old.db.execute("ALTER TABLE tasks DROP COLUMN received_at")  # as an older version made it
    old.db.execute("PRAGMA user_version = 0")  # from before numbered migrations
    old.close()
    ledger = Ledger(path)
    row = ledger.get("a")
    assert row is not None and row.received_at is None
    ledger.update("a", 2.0, state="running", received_at=1.5)
    ledger.commit()
    assert (got := ledger.get("a")) is not None and got.received_at == 1.5
    ledger.close()


def test_a_state_dir_named_like_a_uri_query_still_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "odd?mode=rwc#x%41" / "ledger.sqlite"
    writer = Ledger(path)
    writer.add([TaskRequest("a", "sleep")], 1.0)
    writer.commit()
    reader = Ledger(path, readonly=True)
    try:
        assert reader.counts() == {"pending": 1}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM tasks")
    finally:
        reader.close()
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd?mode=rwc#x%41"]


def test_the_ledger_files_and_the_state_dir_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old = state / "ledger.sqlite"
    sqlite3.connect(old).close()
    old.chmod(0o644)  # left by an older version
    scheduler = Scheduler(Config(state_dir=state))
    try:
        scheduler.ledger.add([TaskRequest("a", "sleep")], 1.0)
        scheduler.ledger.commit()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        assert set(files) == {"ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"}
        assert set(files.values()) == {0o600}
    finally:
        scheduler.ledger.close()
    fresh = tmp_path / "new" / "deeper"
    Scheduler(Config(state_dir=fresh)).ledger.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "ledger.sqlite").stat().st_mode) == 0o600


def test_the_outbox_holds_each_letter_once(
    ledger_url: str, open_ledgers: Callable[..., TaskLedger]
) -> None:
    ledger = open_ledgers(ledger_url)
    big = b"x" * 10_000
    first = Letter.of("mm.requests", big, "why", 1.0)
    assert len(first.body) == DEAD_BODY_BYTES and first.size == 10_000
    assert ledger.outbox([first, Letter.of("mm.requests", big, "again", 2.0)]) == [first]
    assert ledger.outbox([first]) == []  # pending in this batch
    ledger.commit()
    assert ledger.outbox([Letter.of("mm.requests", big, "redelivered", 3.0)]) == []
    other = Letter.of("mm.results", big, "same body, other queue", 3.0)
    assert ledger.outbox([other]) == [other]
    ledger.commit()
    assert [letter.key for letter in ledger.unsent_letters()] == [first.key, other.key]
    ledger.letters_sent([first.key])
    ledger.commit()
    assert ledger.unsent_letters() == [other]
    ledger.prune_letters(before=2.0)  # the sent one is forgotten, the unsent one kept
    ledger.commit()
    assert ledger.query("SELECT COUNT(*) FROM dead_letters") == [(1,)]
