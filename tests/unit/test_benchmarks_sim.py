"""The push/pull simulation: determinism, conservation, constraints, failures, and the
event-driven push (placement at once, batching under load, speeds)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.pull import PullParams, simulate_pull
from benchmarks.push import (
    BARE_TURN,
    TURN_BASE,
    TURN_PER_WORKER,
    PushParams,
    modelled_plan,
    simulate_push,
)
from benchmarks.record import RunRecord, metrics
from benchmarks.scenarios import BUILDERS, Scenario, ScenarioParams, SimWorker, Workload
from matchmaker.models import Task

SMALL = ScenarioParams(tasks=1_500, workers=24, seed=7)


def both(scenario: Scenario) -> list[RunRecord]:
    return [simulate_push(scenario, PushParams()), simulate_pull(scenario, PullParams())]


def max_concurrency(record: RunRecord, worker: int) -> int:
    mine = record.worker == worker
    edges = sorted(
        [(t, 1) for t in record.start[mine]] + [(t, -1) for t in record.finish[mine]],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, delta in edges:
        level += delta
        peak = max(peak, level)
    return peak


def test_same_seed_same_run_and_other_seed_other_run() -> None:
    a = BUILDERS["constraints"](SMALL)
    b = BUILDERS["constraints"](SMALL)
    for first, second in zip(both(a), both(b), strict=True):
        assert np.array_equal(first.start, second.start)
        assert np.array_equal(first.finish, second.finish)
        assert np.array_equal(first.worker, second.worker)
        assert first.requeues == second.requeues and first.rounds == second.rounds
    other = BUILDERS["constraints"](ScenarioParams(SMALL.tasks, SMALL.workers, seed=8))
    assert not np.array_equal(other.workload.arrival, a.workload.arrival)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_task_completes_exactly_once(name: str) -> None:
    scenario = BUILDERS[name](SMALL)
    for record in both(scenario):
        finished = ~np.isnan(record.finish)
        assert finished.all(), f"{record.mode} lost {int((~finished).sum())} tasks"
        assert record.completions == len(scenario.workload)
        assert (record.start >= scenario.workload.arrival).all()
        assert (record.finish >= record.start).all()
        assert record.duplicates == 0 or record.mode != "push"


def test_no_worker_runs_more_than_its_slots() -> None:
    scenario = BUILDERS["priorities"](SMALL)  # a backlog keeps every slot contended
    for record in both(scenario):
        for k, w in enumerate(scenario.workers):
            assert max_concurrency(record, k) <= w.slots, (record.mode, w.name)


def test_failure_loses_no_task_and_reruns_the_lost_work() -> None:
    scenario = BUILDERS["failure"](SMALL)
    crashed = {k for k, w in enumerate(scenario.workers) if w.fails_at is not None}
    crash_at = scenario.notes["crash_at"]
    assert crashed
    for record in both(scenario):
        assert record.completions == len(scenario.workload)
        assert record.lost_runs > 0, record.mode
        late = np.isin(record.worker, list(crashed)) & (record.finish > crash_at)
        assert not late.any(), f"{record.mode}: a crashed worker finished a task"


def test_push_detection_delay_shows_in_the_waits_of_rescheduled_tasks() -> None:
    scenario = BUILDERS["failure"](SMALL)
    push = simulate_push(scenario, PushParams(detection=5.0))
    assert metrics(push, scenario)["wait"]["max"] >= 5.0


def test_constraints_pull_requeues_push_never_violates() -> None:
    scenario = BUILDERS["constraints"](SMALL)
    push = simulate_push(scenario, PushParams())
    pull = simulate_pull(scenario, PullParams())
    naive = simulate_pull(scenario, PullParams(naive=True))
    assert push.requeues == 0 and not push.violation.any()
    assert pull.requeues > 0 and not pull.violation.any()
    assert naive.requeues == 0 and naive.violation.any()
    m = metrics(push, scenario)
    assert m["constraint_violations"] == 0
    assert m["locality_rate"] > metrics(pull, scenario)["locality_rate"]


def test_priority_queues_serve_high_priority_first_under_contention() -> None:
    scenario = BUILDERS["priorities"](SMALL)
    for record in (
        simulate_push(scenario, PushParams()),
        simulate_pull(scenario, PullParams(priority_queues=True)),
    ):
        by = metrics(record, scenario)["wait_by_priority"]
        assert by["9"]["p95"] < by["0"]["p95"], record.mode


# ---------------------------------------------------------------- the event-driven push


def tiny(arrivals: list[float], durations: list[float], workers: list[SimWorker]) -> Scenario:
    arrival = np.asarray(arrivals, dtype=np.float64)
    tasks = [Task(f"t{i}", "a", submitted_at=float(t)) for i, t in enumerate(arrivals)]
    return Scenario("tiny", "", workers, Workload(tasks, arrival, np.asarray(durations)))


def one_round(params: PushParams, tasks: int, workers: int) -> float:
    rest = TURN_BASE + TURN_PER_WORKER * workers
    return modelled_plan(tasks, workers) + rest + params.dispatch * tasks


def test_an_arrival_with_a_free_slot_is_placed_at_once() -> None:
    params = PushParams()
    leg = 2 * params.latency + params.broker
    scenario = tiny([0.0, 1.0, 2.5], [0.1] * 3, [SimWorker("w", ("a",), 1)])
    record = simulate_push(scenario, params)
    wait = record.start - scenario.workload.arrival
    expected = leg + params.intake + one_round(params, 1, 1) + leg
    assert wait == pytest.approx([expected] * 3)
    assert record.rounds == 3


def test_a_result_that_frees_a_slot_places_the_next_task_at_once() -> None:
    params = PushParams()
    leg = 2 * params.latency + params.broker
    scenario = tiny([0.0, 0.0], [0.5, 0.5], [SimWorker("w", ("a",), 1)])
    record = simulate_push(scenario, params)
    second = int(np.argmax(record.start))
    first = 1 - second
    result_in = record.finish[first] + leg + params.intake
    assert record.start[second] == pytest.approx(result_in + one_round(params, 1, 1) + leg)


def test_a_turn_with_nothing_to_place_holds_the_loop() -> None:
    params = PushParams()
    leg = 2 * params.latency + params.broker
    first_start = leg + params.intake + one_round(params, 1, 1) + leg
    result_in = first_start + 0.5 + leg  # the first task's result reaches the scheduler
    # the second request reaches it just after: while the result's bare turn runs
    second = result_in + params.intake + 1e-6 - leg
    scenario = tiny([0.0, second], [0.5, 0.5], [SimWorker("w", ("a",), 1)])
    record = simulate_push(scenario, params)
    turn_done = result_in + params.intake + BARE_TURN  # it carried one message: no window
    expected = turn_done + params.intake + one_round(params, 1, 1) + leg  # then the request
    assert record.start[1] == pytest.approx(expected)


def test_rounds_batch_only_when_work_outpaces_them() -> None:
    params = PushParams()
    workers = [SimWorker(f"w{k}", ("a",), 4) for k in range(50)]
    burst = tiny([0.0] * 200, [1.0] * 200, workers)
    record = simulate_push(burst, params)
    assert record.rounds < 10  # 200 arrivals taken in while rounds run: a few big rounds
    wait = record.start - burst.workload.arrival
    assert wait.max() < params.interval + 3 * one_round(params, 200, 50)
    sparse = tiny([0.1 * i for i in range(50)], [0.05] * 50, workers)
    assert simulate_push(sparse, params).rounds == 50  # idle loop: one round per arrival


def test_clock_rounds_wait_for_the_clock() -> None:
    workers = [SimWorker(f"w{k}", ("a",), 4) for k in range(10)]
    scenario = tiny([0.002 * i for i in range(40)], [0.01] * 40, workers)
    event = simulate_push(scenario, PushParams(rounds="event"))
    clock = simulate_push(scenario, PushParams(rounds="clock", interval=0.05))
    arrival = scenario.workload.arrival
    assert np.median(clock.start - arrival) > 5 * np.median(event.start - arrival)


def test_pull_pays_two_hops_and_the_broker() -> None:
    params = PullParams()
    scenario = tiny([0.0, 1.0], [0.1, 0.1], [SimWorker("w", ("a",), 1)])
    record = simulate_pull(scenario, params)
    wait = record.start - scenario.workload.arrival
    assert wait == pytest.approx([2 * params.latency + params.broker] * 2)


def test_push_places_work_on_faster_workers_and_finishes_it_sooner() -> None:
    scenario = BUILDERS["heterogeneous"](SMALL)
    speed = np.array([w.speed for w in scenario.workers])
    runs = {
        mode: simulate_push(scenario, PushParams(speeds=mode))
        for mode in ("advertised", "learned", "ignored")
    }
    pull = simulate_pull(scenario, PullParams())

    def on_fast(record: RunRecord) -> float:
        return float((speed[record.worker] == 2.0).mean())

    def completion(record: RunRecord) -> float:
        return float(metrics(record, scenario)["completion"]["mean"])

    assert on_fast(runs["advertised"]) > on_fast(pull) + 0.05
    assert on_fast(runs["learned"]) > on_fast(runs["ignored"])
    assert completion(runs["advertised"]) < 0.95 * completion(pull)
    assert completion(runs["advertised"]) < completion(runs["ignored"])


def test_bad_push_settings_are_refused_with_a_sentence() -> None:
    scenario = tiny([0.0], [0.1], [SimWorker("w", ("a",), 1)])
    with pytest.raises(ValueError, match="rounds must be one of"):
        simulate_push(scenario, PushParams(rounds="sometimes"))
    with pytest.raises(ValueError, match="speeds must be one of"):
        simulate_push(scenario, PushParams(speeds="fast"))


def test_a_pipelined_worker_starts_its_held_task_the_moment_a_slot_frees() -> None:
    params = PushParams(pipeline=1)
    scenario = tiny([0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [SimWorker("w", ("a",), 1)])
    record = simulate_push(scenario, params)
    order = np.argsort(record.start)
    first, second = int(order[0]), int(order[1])
    assert record.start[second] == pytest.approx(record.finish[first])  # no round trip
    assert max_concurrency(record, 0) == 1  # held, not run beside the first


def test_pipelining_keeps_every_worker_within_its_slots() -> None:
    scenario = BUILDERS["priorities"](SMALL)
    record = simulate_push(scenario, PushParams(pipeline=2))
    assert record.completions == len(scenario.workload)
    for k, w in enumerate(scenario.workers):
        assert max_concurrency(record, k) <= w.slots, w.name
