"""A queue that refuses every publish makes its publisher open a new connection: the
scheduler's dispatcher (``stuck``) and a worker's reports (``Reporter.settle``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from matchmaker.wire import amqp
from matchmaker.wire.dispatch import REFUSED_RECONNECT, Dispatcher
from workers import reports, runtime
from workers.config import WorkerConfig


class _Answers:
    """Stands for ``Confirms``: hands out the answers the test queues."""

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.nacked: list[Any] = []

    def confirmed(self) -> tuple[list[Any], list[Any]]:
        acked, nacked = self.acked, self.nacked
        self.acked, self.nacked = [], []
        return acked, nacked


def _dispatcher() -> tuple[Dispatcher, _Answers]:
    dispatcher = Dispatcher.__new__(Dispatcher)
    dispatcher.declared, dispatcher.refusals = set(), {}
    answers = _Answers()
    dispatcher.confirms = answers  # type: ignore[assignment]
    return dispatcher, answers


def test_refusals_in_a_row_make_the_connection_stuck() -> None:
    dispatcher, answers = _dispatcher()
    for _ in range(REFUSED_RECONNECT - 1):
        answers.nacked.append((["t1"], "w1"))
        answers.acked.append(((["t2"], "w2"), 1.0))  # another queue's success does not count
        dispatcher.confirmed()
        assert dispatcher.stuck() is None
    answers.nacked.append((["t1", "t3"], "w1"))
    assert dispatcher.confirmed()[1] == [("t1", "w1"), ("t3", "w1")]
    assert dispatcher.stuck() == f"dispatches to w1 refused {REFUSED_RECONNECT} times in a row"


def test_an_accepted_dispatch_resets_the_count() -> None:
    dispatcher, answers = _dispatcher()
    for _ in range(REFUSED_RECONNECT - 1):
        answers.nacked.append((["t1"], "w1"))
        dispatcher.confirmed()
    answers.acked.append(((["t1"], "w1"), 1.0))
    dispatcher.confirmed()
    answers.nacked.append((["t4"], "w1"))
    dispatcher.confirmed()
    assert dispatcher.stuck() is None


def test_a_worker_whose_reports_keep_being_refused_opens_a_new_connection() -> None:
    worker = runtime.Worker(WorkerConfig("w1", ("sleep",)), registry={})
    letter = reports.Letter(b"{}", "bad", "mm.worker.w1", None)
    refusing = SimpleNamespace(reports=SimpleNamespace(confirmed=lambda: ([], [letter])))
    try:
        for _ in range(reports.REFUSED_RECONNECT - 1):
            worker.reports.settle(refusing)  # type: ignore[arg-type]
        assert worker.reports.letters  # given back, to go again
        with pytest.raises(amqp.AMQPError, match="refused 3 times in a row"):
            worker.reports.settle(refusing)  # type: ignore[arg-type]
        accepted = SimpleNamespace(
            reports=SimpleNamespace(confirmed=lambda: ([(letter, 1.0)], [])),
            done_with=lambda deliveries: None,
        )
        worker.reports.settle(refusing)  # type: ignore[arg-type]
        worker.reports.settle(accepted)  # type: ignore[arg-type]
        for _ in range(reports.REFUSED_RECONNECT - 1):
            worker.reports.settle(refusing)  # type: ignore[arg-type]  # counted from the acceptance
    finally:
        worker.runner.shutdown()
