"""The push/pull simulation: determinism, conservation, constraints, failures."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.pull import PullParams, simulate_pull
from benchmarks.push import PushParams, simulate_push
from benchmarks.record import RunRecord, metrics
from benchmarks.scenarios import BUILDERS, Scenario, ScenarioParams

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
