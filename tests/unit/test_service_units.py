"""The scheduler loop's pure helpers, on a real ledger file and no broker."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from matchmaker.config import Config
from matchmaker.ledger import Owned
from matchmaker.messages import TaskRequest, TaskResult, encode, encode_batch
from matchmaker.models import Worker
from matchmaker.service import Delivery, Scheduler


def test_round_workers_follow_the_in_flight_counts(tmp_path: Path) -> None:
    scheduler = Scheduler(Config(state_dir=tmp_path))
    try:
        scheduler.live = {"a": Worker("a", ["sleep"], 4), "b": Worker("b", ["sleep"], 2)}
        scheduler.book.by_worker = {"a": {"t1", "t2"}}
        first, free = scheduler._loaded_workers()
        assert [(w.name, w.running, w.free) for w in first] == [("a", 2, 2), ("b", 0, 2)]
        assert free == 4
        scheduler.book.by_worker["b"] = {"t3"}
        scheduler.book.by_worker["a"].discard("t1")
        second, free = scheduler._loaded_workers()
        assert [(w.name, w.running, w.free) for w in second] == [("a", 1, 3), ("b", 1, 1)]
        assert free == 4
        assert scheduler._loaded_workers()[0][1] is second[1]  # unchanged count: the same view
        scheduler.book.by_worker["b"] = {"t3", "t4", "t5"}  # beyond its slots: none free
        scheduler.drained.add("a")
        third, free = scheduler._loaded_workers()
        assert [w.name for w in third] == ["b"]
        assert free == 0
    finally:
        scheduler.ledger.close()


def test_round_workers_kept_by_difference_match_workers_made_afresh(tmp_path: Path) -> None:
    """Random turns of load, drain, speed and inventory changes: the workers a turn hands
    ``plan()``, kept up to date by difference, are those made from scratch."""
    rng = random.Random(7)
    scheduler = Scheduler(Config(state_dir=tmp_path))
    names = [f"w{i}" for i in range(12)]

    def inventory() -> dict[str, Worker]:
        return {n: Worker(n, ["sleep"], rng.randint(0, 4)) for n in names if rng.random() < 0.8}

    try:
        scheduler.live = inventory()
        for turn in range(400):
            change = rng.random()
            worker = rng.choice(names)
            if change < 0.5:
                tasks = {f"t{turn}-{k}" for k in range(rng.randint(0, 6))}
                scheduler.book.by_worker[worker] = tasks
            elif change < 0.6:
                scheduler.drained ^= {worker}
            elif change < 0.75:
                scheduler._observe_run(
                    TaskResult("t", 1, worker, "succeeded", 0.0, rng.uniform(0.5, 8.0)), "sleep"
                )
                scheduler._refresh_speeds()
            elif change < 0.8:  # as ``_refresh_live`` does
                scheduler.live = inventory()
            workers, free = scheduler._loaded_workers()
            fresh = [
                live.with_running(scheduler.book.running(name)).with_speeds(live.speeds)
                for name, live in scheduler.live.items()
                if name not in scheduler.drained
            ]
            assert [(w.name, w.running, w.slots, w.speeds) for w in workers] == [
                (w.name, w.running, w.slots, w.speeds) for w in fresh
            ]
            assert free == sum(w.free for w in fresh)
    finally:
        scheduler.ledger.close()


def test_a_message_whose_handling_fails_is_dead_lettered_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(Config(state_dir=tmp_path))
    try:
        submit, result = scheduler.book.submit_owned, scheduler.book.result

        def fragile_submit(items: list[Owned], now: float) -> tuple[int, list[Owned]]:
            if any(r.id == "boom" for r, _ in items):
                raise KeyError([[[["a value too deep to show"]]]])
            return submit(items, now)

        def fragile_result(r: TaskResult, now: float) -> str:
            if r.id == "boom":
                raise RuntimeError("x" * 10_000)
            return result(r, now)

        monkeypatch.setattr(scheduler.book, "submit_owned", fragile_submit)
        monkeypatch.setattr(scheduler.book, "result", fragile_result)
        requests = [
            TaskRequest("a", "sleep"),
            TaskRequest("boom", "sleep"),
            TaskRequest("b", "sleep"),
        ]
        scheduler.requests = [Delivery(n, encode(r), "alice") for n, r in enumerate(requests, 1)]
        results = [TaskResult("boom", 1, "w", "succeeded"), TaskResult("c", 1, "w", "succeeded")]
        batch = encode_batch("results", [encode(r) for r in results])
        scheduler.results = [Delivery(1, batch, "mm-worker-w")]
        with caplog.at_level(logging.ERROR):
            scheduler._take_requests(False)
            scheduler._take_results()
        assert sorted(scheduler.book.pending) == ["a", "b"]
        assert [(source, reason[:40]) for source, _, reason, _ in scheduler.rejects] == [
            ("mm.requests", "internal error: KeyError: [[[['a value t"),
            ("mm.results", "internal error: RuntimeError: xxxxxxxxxx"),
        ]
        assert all(len(reason) < 400 for _, _, reason, _ in scheduler.rejects)
        assert scheduler.rejects[0][1] == encode(requests[1])
        assert scheduler.rejects[1][1] == encode(results[0])  # the one item, not the batch
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2 and all(r.exc_info for r in errors)
        assert scheduler.request_acks.due() == 3 and scheduler.result_acks.due() == 1
        scheduler._outbox()
        scheduler.ledger.commit()
        assert [letter.body for letter in scheduler.letters] == [
            encode(requests[1]),
            encode(results[0]),
        ]
        assert history(scheduler, "c") == ["ignored-succeeded"]
    finally:
        scheduler.ledger.close()


def history(scheduler: Scheduler, task_id: str) -> list[str]:
    return [h["state"] for h in scheduler.ledger.history(task_id)]


def test_refused_items_of_different_batches_are_different_letters(tmp_path: Path) -> None:
    """Two batches whose too-deep items are described alike still make two dead letters,
    and a redelivery of one of them makes none more."""
    scheduler = Scheduler(Config(state_dir=tmp_path))
    try:
        deep = "[" * 300 + "]" * 300
        batches = [
            b'{"v":1,"kind":"results","results":[%s],"n":%d}' % (deep.encode(), n)
            for n in (1, 2, 1)
        ]
        scheduler.results = [Delivery(n, body, "mm-worker-w") for n, body in enumerate(batches, 1)]
        scheduler._take_results()
        origins = [origin for _, _, _, origin in scheduler.rejects]
        assert len(scheduler.rejects) == 3 and len(set(origins)) == 2
        assert scheduler.rejects[0][1] == scheduler.rejects[1][1]  # described alike
    finally:
        scheduler.ledger.close()


def test_run_times_teach_the_round_each_worker_s_speed(tmp_path: Path) -> None:
    scheduler = Scheduler(Config(state_dir=tmp_path))
    try:
        scheduler.live = {
            "slow": Worker("slow", ["sleep"], 1),
            "fast": Worker("fast", ["sleep"], 1),
        }
        for worker, seconds in (("slow", 4.0), ("fast", 1.0)) * 5:
            scheduler._observe_run(
                TaskResult("t", 1, worker, "succeeded", 10.0, 10.0 + seconds), "sleep"
            )
        scheduler._observe_run(TaskResult("t", 1, "fast", "succeeded", 10.0, 9.0), "sleep")  # no
        scheduler._refresh_speeds()
        views = {w.name: w for w in scheduler._loaded_workers()[0]}
        assert views["fast"].speed("sleep") > views["slow"].speed("sleep")
        assert not scheduler.timed
        fast = scheduler.live["fast"]
        scheduler.timed.add("fast")  # a result that left its grid speeds where they were
        scheduler._refresh_speeds()
        assert scheduler.live["fast"] is fast  # no copy, and its view stays
        assert scheduler.views is not None and "fast" not in scheduler.views.stale
    finally:
        scheduler.ledger.close()
