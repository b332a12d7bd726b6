"""The whole scheduler loop without a broker: the in-memory transport and a fake clock.

Each test drives ``Scheduler.step`` (or ``serve``) on a ``MemoryBroker``; the
ledger is a real SQLite file. Time is the ``FakeClock``'s: a step that finds
nothing moves it by the wait the turn clock asked for, so "placed at once"
means in the step that received the request, at the same clock time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matchmaker.api.control import encode_drain
from matchmaker.api.snapshot import snapshot_of
from matchmaker.config import Config
from matchmaker.identity import ADMIN
from matchmaker.messages import TaskRequest, TaskResult, encode, encode_batch
from matchmaker.models import Worker
from matchmaker.scheduler.clock import TurnClock, Window
from matchmaker.scheduler.memory import FakeClock, MemoryBroker, MemoryTransport
from matchmaker.service import Scheduler
from membership.inventory import Change, LiveWorker
from membership.tags import Advertised

REQUESTS, RESULTS = "mm.requests", "mm.results"


def advertised(w: Worker) -> Advertised:
    """What ``w`` would advertise (the inventory's type)."""
    return Advertised(w.name, w.capabilities, w.slots, w.attributes, w.perf)


class Members:
    """The inventory as a test sets it."""

    def __init__(self, workers: list[Worker]) -> None:
        self.live = {w.name: LiveWorker(advertised(w), f"mm.worker.{w.name}") for w in workers}

    def snapshot(self) -> Mapping[str, LiveWorker]:
        return dict(self.live)


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(FakeClock())


@pytest.fixture
def make(tmp_path: Path, broker: MemoryBroker) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(*workers: Worker, lead: bool = True, **config: object) -> Scheduler:
        scheduler = Scheduler(
            Config(state_dir=tmp_path, **config),  # type: ignore[arg-type]
            connector=broker,
            clock=broker.clock,
        )
        scheduler.inventory = Members(list(workers))
        if lead:
            scheduler.lead(broker(lambda: False))
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.drop()
        scheduler.ledger.close()


def submit(broker: MemoryBroker, *tasks: TaskRequest, at: float | None = None) -> None:
    for task in tasks:
        broker.send(REQUESTS, encode(task), "alice", at)


def report(broker: MemoryBroker, *results: TaskResult, at: float | None = None) -> None:
    worker = results[0].worker
    body = encode_batch("results", [encode(r) for r in results])
    broker.send(RESULTS, body, f"mm-worker-{worker}", at)


def steps_until(scheduler: Scheduler, done: Callable[[], bool], limit: int = 200) -> int:
    for n in range(limit):
        if done():
            return n
        scheduler.step()
    raise AssertionError(f"not done after {limit} steps")


def transport(scheduler: Scheduler) -> MemoryTransport:
    assert isinstance(scheduler.transport, MemoryTransport)
    return scheduler.transport


def state(scheduler: Scheduler, task_id: str) -> str | None:
    row = scheduler.ledger.get(task_id)
    return None if row is None else row.state


def test_a_task_that_arrives_while_a_slot_is_free_is_dispatched_in_that_step(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 2))
    steps_until(scheduler, lambda: transport(scheduler).polls > 3)  # settled and idle
    arrival = broker.clock.now + 0.5
    submit(broker, TaskRequest("t1", "sleep"), at=arrival)
    steps_until(scheduler, lambda: bool(scheduler.requests) or broker.dispatched() != [])
    assert broker.dispatched("w1") == ["t1"]
    assert broker.clock.now == arrival  # the step that received it placed it
    assert state(scheduler, "t1") == "pending"  # committed; assigned once confirmed
    assert transport(scheduler).acked[REQUESTS] == 1  # acked after its commit
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")


def test_a_result_that_frees_a_slot_places_the_next_task_at_once(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1))
    submit(broker, TaskRequest("t1", "sleep"), TaskRequest("t2", "sleep"))
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")
    assert broker.dispatched() == ["t1"]
    steps_until(scheduler, lambda: transport(scheduler).polls > 20)  # t2 waits, idle
    finished = broker.clock.now + 1.0
    report(broker, TaskResult("t1", 1, "w1", "succeeded", finished - 1, finished), at=finished)
    steps_until(scheduler, lambda: broker.dispatched() == ["t1", "t2"])
    assert broker.clock.now == finished
    assert state(scheduler, "t1") == "succeeded"
    assert transport(scheduler).acked[RESULTS] == 1


def test_a_free_slot_goes_to_the_higher_priority_task_not_to_the_one_that_arrived(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1))
    submit(broker, TaskRequest("busy", "sleep"))
    steps_until(scheduler, lambda: broker.dispatched() == ["busy"])
    submit(broker, TaskRequest("high", "sleep", priority=7))
    steps_until(scheduler, lambda: transport(scheduler).polls > 20)
    now = broker.clock.now
    submit(broker, TaskRequest("low", "sleep", priority=0), at=now + 0.1)
    report(broker, TaskResult("busy", 1, "w1", "succeeded", now, now + 0.1), at=now + 0.1)
    steps_until(scheduler, lambda: len(broker.dispatched()) == 2)
    assert broker.dispatched() == ["busy", "high"]
    assert state(scheduler, "low") == "pending"


def test_invalid_requests_are_dead_lettered_acked_and_marked_sent_once_confirmed(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make()
    broker.send(REQUESTS, b"not json", "alice")
    submit(broker, TaskRequest("ok", "sleep"))
    steps_until(scheduler, lambda: broker.letters != [])
    assert [letter.source for letter in broker.letters] == [REQUESTS]
    assert transport(scheduler).acked[REQUESTS] == 2
    steps_until(scheduler, lambda: scheduler.ledger.unsent_letters() == [])
    assert state(scheduler, "ok") == "pending"


def test_refused_dispatches_go_back_to_pending_and_are_placed_again(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1))
    broker.refuse = True
    submit(broker, TaskRequest("t1", "sleep"))
    steps_until(scheduler, lambda: broker.dispatched() == ["t1"])
    broker.refuse = False
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")
    assert broker.dispatched() == ["t1", "t1"]


def test_a_sweep_fails_a_task_past_its_deadline_and_its_retry_runs_after_the_backoff(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1), result_grace=1.0, retry_backoff=2.0)
    submit(broker, TaskRequest("t1", "sleep", timeout=5.0, max_attempts=2))
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")
    dispatched = broker.clock.now
    steps_until(scheduler, lambda: len(broker.dispatched()) == 2, limit=1000)
    history = scheduler.ledger.history("t1")
    failed = next(h["at"] for h in history if h["state"] == "failed")
    assert dispatched + 6.0 <= failed <= dispatched + 6.0 + 0.25 + 1e-6  # deadline, one sweep
    assert broker.clock.now >= failed + 2.0  # the backoff waited out
    assert scheduler.ledger.get("t1").attempt == 2  # type: ignore[union-attr]


def test_a_lost_worker_s_tasks_are_placed_on_another_at_once(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1))
    submit(broker, TaskRequest("t1", "sleep"))
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")
    members = scheduler.inventory
    assert isinstance(members, Members)
    gone = members.live.pop("w1").worker
    members.live["w2"] = LiveWorker(advertised(Worker("w2", ["sleep"], 1)), "mm.worker.w2")
    scheduler.changes.put(Change("failed", "w1", gone))
    scheduler.changes.put(Change("joined", "w2", members.live["w2"].worker))
    steps_until(scheduler, lambda: broker.dispatched("w2") == ["t1"])
    assert broker.purged == ["w1"]
    assert scheduler.ledger.get("t1").attempt == 2  # type: ignore[union-attr]


def test_after_the_connection_is_lost_the_loop_reconnects_and_nothing_is_lost(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 8), lead=False)
    submit(broker, *(TaskRequest(f"t{n}", "sleep") for n in range(3)))
    polls = 0

    def poll_then_maybe_lose(timeout: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:  # the first connection dies before anything is acked
            transport(scheduler).lose()
        elif all(state(scheduler, f"t{n}") == "assigned" for n in range(3)):
            scheduler.stop()
        original(timeout)

    original = scheduler._poll
    scheduler._poll = poll_then_maybe_lose  # type: ignore[method-assign]
    broker.down = True
    broker.send(REQUESTS, encode(TaskRequest("t0", "sleep")), "alice")  # a duplicate
    down_at = broker.clock.now

    def come_back(seconds: float, stopping: Callable[[], bool]) -> bool:
        broker.clock.advance(seconds)
        broker.down = False  # the first attempt failed; the broker is back for the next
        return stopping()

    broker.clock.pause = come_back  # type: ignore[method-assign]
    scheduler.serve()
    assert broker.connections == 2 and broker.clock.now > down_at
    assert sorted(broker.dispatched()) == ["t0", "t1", "t2"]
    assert broker.acked == {REQUESTS: 4, RESULTS: 0}  # the duplicate acked too
    assert all(not queue for queue in broker.queues.values())
    assert scheduler.transport is None  # dropped when it stopped


def test_a_second_scheduler_stands_by_until_the_leader_is_gone(
    make: Callable[..., Scheduler], broker: MemoryBroker, tmp_path: Path
) -> None:
    leader = make(Worker("w1", ["sleep"], 1))
    standby = Scheduler(
        Config(state_dir=tmp_path / "standby"), connector=broker, clock=broker.clock
    )
    standby.inventory = Members([Worker("w1", ["sleep"], 1)])
    attempts = 0

    def pause(seconds: float, stopping: Callable[[], bool]) -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            transport(leader).lose()  # the leader dies while the standby waits
        return False

    broker.clock.pause = pause  # type: ignore[method-assign]
    original = standby.step

    def one_step() -> None:
        original()
        standby.stop()

    standby.step = one_step  # type: ignore[method-assign]
    try:
        standby.serve()
        assert attempts == 2 and broker.connections == 2
        assert broker.leader is None or broker.leader.lost  # dropped on stop
    finally:
        standby.ledger.close()


def test_a_cancel_waits_for_a_full_turn_and_reaches_the_worker(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    scheduler = make(Worker("w1", ["sleep"], 1))
    submit(broker, TaskRequest("t1", "sleep"))
    steps_until(scheduler, lambda: state(scheduler, "t1") == "assigned")
    broker.send(REQUESTS, b'{"v":1,"kind":"cancel","id":"t1"}', "alice")
    steps_until(scheduler, lambda: broker.cancels != [])
    assert broker.cancels == [("w1", "t1")]
    assert state(scheduler, "t1") == "cancelled"


# -- the turn clock's policy ----------------------------------------------------


def test_turns_at_low_load_start_as_soon_as_work_arrives() -> None:
    turns = TurnClock(round_interval=0.015, batch=3.0)
    now = 10.0
    for _ in range(5):
        assert turns.turn_due(now, owed=1, round_due=False)
        turns.turned(now, now + 0.001, owed=1)  # a turn costs 1 ms
        now += 0.020  # the next arrival comes 20 ms later, after the window of 3 ms
    assert turns.sweep_due(now)
    idle = turns.wait(now, owed=0, round_wanted=False, buffered=False, events=False, changes=False)
    assert idle == pytest.approx(turns.idle_wait)


def test_a_turn_that_carried_one_delivery_leaves_no_window() -> None:
    turns = TurnClock(round_interval=0.015, batch=3.0, ramp=8)
    turns.turned(0.0, 0.001, owed=1)  # the loop keeps up: the next turn may start at once
    assert turns.turn_due(0.001, owed=1, round_due=False)
    turns.rounded(0.001, 0.002, owed=0)
    assert turns.round_due(0.002, wanted=True)


def test_the_batch_window_grows_with_the_load_and_the_cost_of_turns_and_is_capped() -> None:
    turns = TurnClock(round_interval=0.015, batch=3.0, ramp=8)
    assert turns.sweep_due(0.0)
    turns.turned(0.0, 0.002, owed=9)  # 8 beyond the first: half of 3 x 2 ms, 3 ms
    assert not turns.turn_due(0.0049, owed=1, round_due=False)
    assert turns.turn_due(0.005, owed=1, round_due=False)
    turns.turned(0.005, 0.007, owed=25)  # 24 beyond: 3 x 24/32 x 2 ms = 4.5 ms
    assert not turns.turn_due(0.0114, owed=3, round_due=False)
    assert turns.turn_due(0.0115, owed=3, round_due=False)
    turns.turned(0.012, 0.032, owed=300)  # 20 ms: the window is capped at the interval
    assert not turns.turn_due(0.0465, owed=300, round_due=False)
    assert turns.turn_due(0.047, owed=300, round_due=False)
    wait = turns.wait(
        0.040, owed=5, round_wanted=False, buffered=False, events=False, changes=False
    )
    assert wait == pytest.approx(0.007)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_the_batch_factor_rises_with_the_load_towards_the_batch(a: int, b: int) -> None:
    window = Window(cap=1.0, batch=3.0, ramp=8)
    low, high = sorted((a, b))
    assert 0.0 <= window.factor(low) <= window.factor(high) < 3.0
    assert window.factor(1) == 0.0 and window.factor(9) == pytest.approx(1.5)


def test_a_backlog_turns_at_once_and_rounds_keep_their_own_window() -> None:
    turns = TurnClock(round_interval=0.015, batch=3.0, backlog=500)
    turns.turned(0.0, 0.010, owed=500)
    assert turns.turn_due(0.010, owed=500, round_due=False)  # at once: free the prefetch
    assert (
        turns.wait(0.010, owed=500, round_wanted=True, buffered=True, events=False, changes=False)
        == 0
    )
    turns.rounded(0.005, 0.010, owed=500)  # 5 ms: the next one no sooner than ~15 ms later
    assert not turns.round_due(0.020, wanted=True)
    assert turns.round_due(0.025, wanted=True)
    assert not turns.round_due(0.025, wanted=False)


def test_nothing_is_due_when_nothing_waits() -> None:
    turns = TurnClock(round_interval=0.015)
    assert not turns.turn_due(5.0, owed=0, round_due=False)
    assert (
        turns.wait(5.0, owed=0, round_wanted=False, buffered=False, events=False, changes=True) == 0
    )
    assert turns.sweep_due(5.0) and not turns.sweep_due(5.1) and turns.sweep_due(5.25)
    assert turns.intake_due(5.0) and not turns.intake_due(5.001) and turns.intake_due(5.002)
    assert turns.events_due(5.0) and not turns.events_due(5.01) and turns.events_due(5.03)


def test_the_in_process_loop_benchmark_dispatches_every_task_once() -> None:
    from benchmarks import loop

    report = loop.measure(rate=500.0, count=40, run=0.001, workers=1, slots=4)
    assert report["tasks"] == 40 and report["steps"] >= 1
    assert 0 <= report["to_round"]["p50"] <= report["to_sent"]["max"]


def test_the_api_snapshot_reads_the_loop_through_its_public_readers(
    make: Callable[..., Scheduler], broker: MemoryBroker
) -> None:
    """Workers with their load and drains, the book's sizes and totals, the rounds run."""
    scheduler = make(
        Worker("w1", ["sleep"], 2, attributes={"site": "iu"}), Worker("w2", ["sleep"], 1)
    )
    submit(broker, TaskRequest("t1", "sleep"), TaskRequest("t2", "sleep", priority=1))
    broker.send(REQUESTS, encode_drain("w2", True, 60.0), ADMIN)
    steps_until(scheduler, lambda: state(scheduler, "t2") == "assigned")
    assert state(scheduler, "t1") == "assigned"
    now = broker.clock.time()
    snap = snapshot_of(scheduler, now)
    assert [(w["name"], w["running"], w["status"]) for w in snap.workers] == [
        ("w1", 2, "alive"),
        ("w2", 0, "drained"),
    ]
    assert snap.workers[0]["attributes"] == {"site": "iu"} and snap.workers[0]["slots"] == 2
    assert snap.workers[0]["drain_deadline"] is None
    assert snap.workers[1]["drain_deadline"] == pytest.approx(60.0, abs=1.0)
    assert (snap.pending, snap.in_flight, snap.running) == (0, 2, 0)
    assert snap.counters["submitted"] == 2 and snap.rounds >= 1
