"""Unit tests of a worker's reports: a dispatch is acked only once the broker confirmed its
result, what a dropped connection left unconfirmed goes again, and pull hand-backs wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.messages import TaskDispatch, TaskRequest, decode_results
from matchmaker.wire.broker import DEAD, RESULTS
from tests.workers_support import AckRecorder, wait_for
from workers.acks import Channels
from workers.pull import HandBack
from workers.reports import Letter, Outgoing, Reporter
from workers.runner import Delivery, Job, Runner
from workers.stats import Stats
from workers.tasks.base import TaskContext


class Broker:
    """Stands for ``Confirms``: keeps what was published until the test answers it."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Outgoing]] = []
        self.pending: dict[int, Outgoing] = {}
        self.acked: list[tuple[Outgoing, float]] = []
        self.nacked: list[Outgoing] = []

    def publish(self, exchange: str, key: str, body: bytes, props: Any, item: Outgoing) -> None:
        self.published.append((exchange, key, item))
        self.pending[len(self.published)] = item

    def answer(self, accept: bool = True) -> None:
        for item in self.pending.values():
            if accept:
                self.acked.append((item, time.time()))
            else:
                self.nacked.append(item)
        self.pending.clear()

    def outstanding(self) -> bool:
        return bool(self.pending or self.acked or self.nacked)

    def confirmed(self) -> tuple[list[tuple[Outgoing, float]], list[Outgoing]]:
        acked, nacked = self.acked, self.nacked
        self.acked, self.nacked = [], []
        return acked, nacked


def channels(
    session: int = 1, tags: set[int] | None = None
) -> tuple[Channels, AckRecorder, Broker]:
    consume, broker = AckRecorder(), Broker()
    ch = Channels(session, consume, broker, unacked=set(tags or ()))  # type: ignore[arg-type]
    return ch, consume, broker


def job(task_id: str, delivery: Delivery) -> Job:
    deadline = time.time() + 60
    dispatch = TaskDispatch(task_id, 1, "echo", {}, deadline)
    context = TaskContext(task_id, 1, "w1", Path("/nonexistent"), deadline)
    return Job(dispatch, context, [delivery])


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner("w1", 2, {"echo": lambda payload, context: {"ok": True}})
    yield r
    r.shutdown()


def finished(runner: Runner, *task_ids: str) -> None:
    def done(task_id: str) -> bool:
        held = runner.find((task_id, 1))
        return held is not None and held.final is not None

    wait_for(lambda: all(done(t) for t in task_ids), what=f"{task_ids} to finish")


def test_a_dispatch_is_acked_only_once_its_result_is_confirmed(runner: Runner) -> None:
    stats = Stats()
    reports = Reporter(runner, stats, "w1")
    ch, consume, broker = channels(tags={7, 8})
    batch = Delivery(1, 7, parts=2)  # one dispatches message with two tasks
    runner.start(job("a", batch))
    runner.start(job("b", batch))
    finished(runner, "a", "b")
    assert reports.waiting()
    reports.flush(ch)
    [(exchange, key, item)] = broker.published
    assert (exchange, key) == (RESULTS, RESULTS)
    assert [r.id for r in decode_results(item.body).items] == ["a", "b"]
    reports.settle(ch)
    assert consume.calls == []  # published, not yet in the broker
    assert not reports.idle(ch)
    broker.answer()
    reports.settle(ch)
    assert consume.calls == [("ack", 7, True)]
    assert ch.unacked == {8}
    assert stats.succeeded == 2 and reports.idle(ch)


def test_a_refused_report_goes_again_and_its_dispatch_waits(runner: Runner) -> None:
    reports = Reporter(runner, Stats(), "w1")
    ch, consume, broker = channels(tags={3})
    runner.start(job("a", Delivery(1, 3)))
    finished(runner, "a")
    reports.flush(ch)
    broker.answer(accept=False)
    reports.settle(ch)
    assert consume.calls == [] and reports.waiting()
    assert reports.flush_in() > 0.5  # the pause after a refusal
    reports.flush(ch)
    broker.answer()
    reports.settle(ch)
    assert consume.calls == [("ack", 3, True)]


def test_what_a_dropped_connection_left_unconfirmed_goes_on_the_next(runner: Runner) -> None:
    stats = Stats()
    reports = Reporter(runner, stats, "w1")
    old, _, lost = channels(session=1, tags={1})
    runner.start(job("a", Delivery(1, 1)))
    finished(runner, "a")
    dead = Letter(b"x", "bad", "mm.worker.w1", Delivery(1, 2))
    handed_back = Letter(b"y", "not here", "mm.pull.echo", Delivery(1, 3), requeue=True)
    reports.add(dead)
    reports.flush(old)
    reports.add(handed_back)
    reports.lost(old)  # nothing was confirmed
    assert not lost.pending
    assert reports.letters == [dead]  # the hand-back is the broker's again: it redelivers it
    new, consume, broker = channels(session=2, tags={1})
    reports.flush(new)
    assert [(e, k) for e, k, _ in broker.published] == [(RESULTS, RESULTS), (RESULTS, DEAD)]
    broker.answer()
    reports.settle(new)
    assert consume.calls == []  # the old session's tags are gone: the redelivery is acked
    assert (stats.succeeded, stats.dead_lettered) == (1, 1)


def test_a_hand_back_waits_its_delay_when_there_is_a_connection(runner: Runner) -> None:
    stats = Stats()
    reports = Reporter(runner, stats, "w1")
    scheduled: list[tuple[float, Callable[[], None]]] = []

    def later(delay: float, callback: Callable[[], None]) -> bool:
        scheduled.append((delay, callback))
        return True

    request = TaskRequest("t1", "echo", {})
    letter = Letter(b"{}", "no", "mm.pull.echo", Delivery(1, 1), requeue=True)
    HandBack(stats, reports, 0.5, later)(request, "no", letter)
    assert reports.letters == [] and 0.25 <= scheduled[0][0] <= 0.75
    scheduled[0][1]()
    assert reports.letters == [letter]
    HandBack(stats, reports, 0.5, lambda delay, callback: False)(request, "no", letter)
    assert reports.letters == [letter, letter]  # no connection: at once
    assert stats.requeued == 2 and stats.requeues_by_task == {"t1": 2}


def test_hand_backs_wait_jittered_delays(runner: Runner) -> None:
    """Two refused requests going round together must not fall into step with the broker's
    round robin: their delays differ from one hand-back to the next."""
    delays: list[float] = []

    def later(delay: float, callback: Callable[[], None]) -> bool:
        delays.append(delay)
        return True

    hand_back = HandBack(Stats(), Reporter(runner, Stats(), "w1"), 0.05, later)
    request = TaskRequest("t1", "echo", {})
    for tag in range(1, 51):
        letter = Letter(b"{}", "no", "mm.pull.echo", Delivery(1, tag), requeue=True)
        hand_back(request, "no", letter)
    assert all(0.025 <= d <= 0.075 for d in delays)
    assert len(set(delays)) > 40
