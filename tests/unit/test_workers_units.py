"""Unit tests of the worker runtime's pure parts: the runner's job states, acks, pull admission."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.messages import TaskDispatch, TaskRequest, TaskResult, decode_results
from matchmaker.models import Worker
from tests.workers_support import AckRecorder, wait_for
from workers.acks import Channels
from workers.config import WorkerConfig
from workers.pool import Pool
from workers.presence import PresenceError, worker_tags
from workers.pull import as_dispatch, refusal
from workers.reports import batches
from workers.runner import Delivery, Job, Report, Runner
from workers.tasks.base import TaskContext, TaskError


class Gate:
    """A task function that waits until released; records what ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: list[str] = []

    def __call__(self, payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        self.ran.append(context.task_id)
        if payload.get("block"):
            while not self.release.wait(0.01):
                if context.cancelled.is_set():
                    raise TaskError("gate: cancelled")
        return {"ok": True}


def job(task_id: str, payload: dict[str, Any] | None = None, deadline: float = 0) -> Job:
    deadline = deadline or time.time() + 60
    dispatch = TaskDispatch(task_id, 1, "gate", payload or {}, deadline)
    context = TaskContext(task_id, 1, "w1", Path("/nonexistent"), deadline)
    return Job(dispatch, context, [Delivery(1, len(task_id))])


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def runner(gate: Gate) -> Iterator[Runner]:
    r = Runner("w1", 1, {"gate": gate})
    yield r
    gate.release.set()
    r.shutdown()


def finals(runner: Runner) -> list[tuple[str, str, str | None]]:
    reports, _ = runner.take()
    runner.sent(reports)
    return [(r.result.id, r.result.state, r.result.error) for r in reports]


def test_a_short_task_reports_only_its_final_result(runner: Runner) -> None:
    runner.start(job("a"))
    wait_for(lambda: (a := runner.find(("a", 1))) is not None and a.final, what="a to finish")
    reports, due = runner.take(hold=10)
    assert [(r.result.state, r.result.output) for r in reports] == [("succeeded", {"ok": True})]
    assert due is None
    assert [j.key for j in runner.sent(reports)] == [("a", 1)]
    assert runner.seen(("a", 1)) and runner.busy() == 0


def test_a_redelivered_finished_task_sends_its_result_again(runner: Runner, gate: Gate) -> None:
    """A scheduler that restarted before recording a dispatch refuses its first report and
    dispatches it again: the worker answers with the same result, without running it again."""
    runner.start(job("r"))
    wait_for(lambda: (r := runner.find(("r", 1))) is not None and r.final, what="r to finish")
    first, _ = runner.take()
    runner.sent(first)
    again = Delivery(2, 7)
    assert runner.replay(("r", 1), again)
    reports, _ = runner.take()
    assert [(r.result.id, r.result.state) for r in reports] == [("r", "succeeded")]
    assert [j.deliveries for j in runner.sent(reports)] == [[again]]
    assert gate.ran == ["r"]  # ran once
    assert runner.replay(("r", 1), Delivery(3, 7))  # and again for a later redelivery
    assert not runner.replay(("never", 1), Delivery(4, 7))


def test_a_long_task_reports_running_after_the_hold(runner: Runner, gate: Gate) -> None:
    runner.start(job("b", {"block": True}))
    wait_for(lambda: gate.ran, what="b to start")
    reports, due = runner.take(hold=10)
    assert reports == [] and due is not None and 9 < due <= 10
    reports, _ = runner.take(hold=0)
    assert [r.result.state for r in reports] == ["running"]
    runner.sent(reports)
    gate.release.set()
    wait_for(lambda: runner.find(("b", 1)).final, what="b to finish")  # type: ignore[union-attr]
    assert finals(runner) == [("b", "succeeded", None)]


def test_an_output_that_cannot_travel_fails_the_task_with_a_reason() -> None:
    outputs: dict[str, dict[str, Any]] = {
        "set": {"s": {1, 2}},
        "big": {"x": "y" * 300_000},
        "fine": {"x": "y" * 1000},
    }
    runner = Runner("w1", 3, {"gate": lambda payload, _context: outputs[payload["which"]]})
    try:
        for which in outputs:
            runner.start(job(which, {"which": which}))
        wait_for(
            lambda: all(runner.find((w, 1)).final for w in outputs),  # type: ignore[union-attr]
            what="every task to finish",
        )
        got = {task_id: (state, error) for task_id, state, error in finals(runner)}
    finally:
        runner.shutdown()
    assert got["set"][0] == "failed" and "not JSON" in str(got["set"][1])
    assert got["big"][0] == "failed" and "over the" in str(got["big"][1])
    assert got["fine"] == ("succeeded", None)


def test_unknown_type_late_dispatch_and_deadline(runner: Runner, gate: Gate) -> None:
    unknown = job("u")
    unknown = Job(TaskDispatch("u", 1, "warp", {}, time.time() + 60), unknown.context, [])
    runner.start(unknown)
    runner.start(job("late", deadline=time.time() - 3))
    got = {task_id: (state, error) for task_id, state, error in finals(runner)}
    assert got["u"] == ("failed", "worker w1 does not run task type warp")
    assert got["late"][0] == "failed" and "deadline passed 3" in str(got["late"][1])
    runner.start(job("slow", {"block": True}, deadline=time.time() + 0.2))
    wait_for(lambda: gate.ran == ["slow"], what="slow to start")
    assert runner.expire() is not None
    wait_for(lambda: runner.expire() is None, what="the deadline to pass")
    [(task_id, state, error)] = finals(runner)
    assert (task_id, state) == ("slow", "failed") and str(error).startswith("timed out after 0.")


def test_withdrawn_and_cancelled_waiting_jobs_never_run(runner: Runner, gate: Gate) -> None:
    runner.start(job("first", {"block": True}))
    runner.start(job("second"))
    runner.start(job("third"))
    wait_for(lambda: gate.ran == ["first"], what="first to start")
    assert runner.cancel("third") == 1
    assert [j.key for j in runner.withdraw()] == [("second", 1)]
    runner.cancel_all()
    wait_for(lambda: runner.find(("first", 1)).final, what="first to stop")  # type: ignore[union-attr]
    got = sorted(finals(runner))
    assert got == [
        ("first", "failed", "gate: cancelled"),
        ("third", "failed", "cancelled before it started"),
    ]
    assert gate.ran == ["first"]


def test_acks_cover_the_done_prefix_in_one_frame() -> None:
    consume = AckRecorder()
    ch = Channels(1, consume, None, unacked={1, 2, 3, 4, 5, 6})  # type: ignore[arg-type]
    ch.ack([3, 1, 2, 5])
    assert consume.calls == [("ack", 3, True), ("ack", 5, False)]
    ch.nack(4)
    ch.ack([6])
    assert consume.calls[2:] == [("nack", 4, True), ("ack", 6, True)]
    assert ch.unacked == set()


def test_reports_are_packed_in_order_into_messages_within_the_limit() -> None:
    def report(task_id: str, size: int) -> Report:
        result = TaskResult(task_id, 1, "w1", "succeeded", 1.0, 2.0, {"x": "y" * size})
        return Report(job(task_id), result)

    reports = [report(f"t{i}", 300) for i in range(10)] + [report("big", 5000), report("z", 10)]
    packed = batches(reports, limit=1500)
    assert [r for b in packed for r in b.reports] == reports  # all of them, in order
    for b in packed:
        assert [r.result for r in b.reports] == list(decode_results(b.body).items)
        assert len(b.body) <= 1500 or b.reports == [reports[10]]  # only the big one goes over
    assert [len(b.reports) for b in packed] == [3, 3, 3, 1, 1, 1]
    assert batches([]) == []


def test_pull_admission_checks_type_and_constraints() -> None:
    worker = Worker("p1", {"sleep"}, 2, attributes={"site": "iu", "gpu": "2"})

    def request(**kw: Any) -> TaskRequest:
        return TaskRequest(id="t", type=kw.pop("type", "sleep"), **kw)

    assert refusal(request(), worker) is None
    assert refusal(request(constraints={"gpu": {">=": 1}, "site": ["iu", "x"]}), worker) is None
    assert refusal(request(type="data_staging"), worker) == (
        "worker p1 does not run task type data_staging"
    )
    assert refusal(request(constraints={"site": "tacc", "name": ["p1"]}), worker) == (
        "constraint not met: site=tacc"
    )
    dispatch = as_dispatch(request(timeout=30.0), now=100.0)
    assert (dispatch.attempt, dispatch.deadline) == (1, 130.0)


def test_tags_fit_serf_limit_or_refuse() -> None:
    config = WorkerConfig("w1", ("sleep", "env_setup"), 4, attributes={"site": "iu"})
    assert worker_tags(config) == {
        "role": "worker",
        "q": "mm.worker.w1",
        "caps": "env_setup,sleep",
        "slots": "4",
        "site": "iu",
    }
    big = WorkerConfig("w1", ("sleep",), 4, attributes={f"a{i}": "x" * 100 for i in range(6)})
    with pytest.raises(PresenceError, match="512-byte limit"):
        worker_tags(big)


def test_pool_runs_at_most_its_size_at_once_in_order_and_drops_the_rest_on_shutdown() -> None:
    pool = Pool(2, "t")
    gate = threading.Event()
    lock = threading.Lock()
    running = peak = 0
    order: list[int] = []

    def call(n: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(5)
        with lock:
            running -= 1
            order.append(n)

    def pool_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("t-")]

    for n in range(6):
        pool.submit(call, n)
    wait_for(lambda: running == 2, what="two calls to run")
    assert len(pool_threads()) == 2
    gate.set()
    wait_for(lambda: len(order) == 6, what="all six calls to end")
    assert sorted(order) == list(range(6)) and peak == 2  # never more than two at once
    gate.clear()
    for n in range(6, 10):
        pool.submit(call, n)
    wait_for(lambda: running == 2, what="6 and 7 to run")
    pool.shutdown()  # 6 and 7 run on; 8 and 9 never start
    gate.set()
    wait_for(lambda: not pool_threads(), what="the pool's threads to end")
    assert sorted(order[6:]) == [6, 7]
    pool.submit(call, 10)  # closed: ignored, and no thread is left to run it
    assert 10 not in order and not pool_threads()
