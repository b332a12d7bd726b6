"""The scheduler loop's pure helpers, on a real ledger file and no broker."""

from __future__ import annotations

from pathlib import Path

from matchmaker.config import Config
from matchmaker.models import Worker
from matchmaker.service import Scheduler


def test_round_workers_follow_the_in_flight_counts(tmp_path: Path) -> None:
    scheduler = Scheduler(Config(state_dir=tmp_path))
    try:
        scheduler.live = {"a": Worker("a", ["sleep"], 4), "b": Worker("b", ["sleep"], 2)}
        scheduler.book.by_worker = {"a": {"t1", "t2"}}
        first = scheduler._loaded_workers()
        assert [(w.name, w.running, w.free) for w in first] == [("a", 2, 2), ("b", 0, 2)]
        scheduler.book.by_worker["b"] = {"t3"}
        scheduler.book.by_worker["a"].discard("t1")
        second = scheduler._loaded_workers()
        assert [(w.name, w.running, w.free) for w in second] == [("a", 1, 3), ("b", 1, 1)]
        assert scheduler._loaded_workers()[1] is second[1]  # unchanged count: the same view
        scheduler.drained.add("a")
        assert [w.name for w in scheduler._loaded_workers()] == ["b"]
    finally:
        scheduler.ledger.close()
