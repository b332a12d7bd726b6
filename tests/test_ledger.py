"""The ledger's write-ahead log: checkpointed by a thread, restarted by the writer."""

from __future__ import annotations

from pathlib import Path

from matchmaker.book import Book
from matchmaker.ledger import Ledger
from matchmaker.messages import TaskRequest


def test_background_checkpoints_keep_the_log_short_and_lose_nothing(tmp_path: Path) -> None:
    """A writer that never pauses still gets its log started again from its head."""
    path = tmp_path / "ledger.sqlite"
    book = Book(Ledger(path, background_checkpoints=True))
    checkpoints = book.ledger.checkpoints
    assert checkpoints is not None
    checkpoints.interval, checkpoints.restart_frames = 0.01, 64
    wal = path.with_name(path.name + "-wal")
    largest = 0
    for start in range(0, 3000, 10):
        book.submit([TaskRequest(f"t{i:05d}", "sleep") for i in range(start, start + 10)], 1.0)
        book.ledger.commit()
        largest = max(largest, wal.stat().st_size)
    written = sum(1 for _ in book.ledger.history("t00000"))
    book.ledger.close()
    assert written == 1
    assert largest < 8 * 64 * 4096  # with no checkpoints it grows past 8 MB
    reopened = Ledger(path, readonly=True)
    assert reopened.counts() == {"pending": 3000}


def test_the_writer_copies_the_last_frames_and_the_log_starts_again(tmp_path: Path) -> None:
    """Once the thread reports it caught up, the writer's next commit copies what is left,
    and its next write starts the log from its head (the log header's checkpoint sequence
    number, bytes 12-15, counts those restarts)."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, background_checkpoints=True)
    assert ledger.checkpoints is not None
    ledger.checkpoints.stop()  # the thread's part is played by hand here

    def restarts() -> int:
        return int.from_bytes(path.with_name(path.name + "-wal").read_bytes()[12:16], "big")

    def write(task_id: str) -> None:
        ledger.add([TaskRequest(task_id, "sleep")], 1.0)
        ledger.commit()

    for n in range(20):
        write(f"t{n}")
    first = restarts()
    write("no-checkpoint-yet")
    assert restarts() == first
    ledger.checkpoints.caught_up.set()
    write("copies-the-rest")
    assert not ledger.checkpoints.caught_up.is_set()
    write("starts-the-log-again")
    assert restarts() == first + 1
    assert ledger.counts() == {"pending": 23}
