"""Speed-aware placement: property tests against the spec and the networkx reference.

Workers get speeds from {0.25, 0.5, 1, 2, 4} (as ``perf``, and sometimes a
learned speed for one type), so two different speeds are always at least a
factor of 2 apart: several speed tiers (``engine.speed.STEP``) apart.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matchmaker import plan
from matchmaker.engine.speed import MAX_TIER, STEP, tier
from matchmaker.models import MAX_SPEED, MIN_SPEED, Policy, Task, Worker
from tests import reference_flow as ref
from tests.unit.test_engine_properties import (
    SETTINGS,
    TYPES,
    aging_policies,
    check_well_formed,
    instances,
    new_load,
    strategies,
)

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)


@st.composite
def fast_and_slow(
    draw: st.DrawFn, **options: bool
) -> tuple[list[Task], list[Worker], list[Worker]]:
    """An instance, and the same workers with speeds: (tasks, plain workers, fast/slow ones)."""
    tasks, workers = draw(instances(**options))
    timed = []
    for w in workers:
        learned = {}
        if draw(st.booleans()):
            learned[draw(st.sampled_from(TYPES))] = draw(st.sampled_from(SPEEDS))
        perf = draw(st.sampled_from(SPEEDS))
        timed.append(
            Worker(w.name, w.capabilities, w.slots, w.running, w.attributes, perf, learned)
        )
    return tasks, workers, timed


@pytest.mark.parametrize("strategy", ["spread", "binpack"])
@pytest.mark.parametrize(("first", "second"), [(1.0, 2.0), (2.0, 1.0), (0.5, 0.625)])
def test_the_faster_of_two_equal_workers_gets_a_single_task(
    strategy: str, first: float, second: float
) -> None:
    workers = [Worker("a", {"x"}, 4, perf=first), Worker("b", {"x"}, 4, perf=second)]
    result = plan([Task("t", "x")], workers, Policy(strategy=strategy))
    assert result.assignments == {"t": "a" if first > second else "b"}


def test_a_learned_speed_overrides_perf_for_its_type_only() -> None:
    workers = [
        Worker("a", {"x", "y"}, 4, perf=2.0, speeds={"x": 0.5}),
        Worker("b", {"x", "y"}, 4, perf=1.0),
    ]
    result = plan([Task("t", "x"), Task("u", "y")], workers, Policy())
    assert result.assignments == {"t": "b", "u": "a"}


def test_a_faster_worker_takes_work_even_when_busier_under_spread() -> None:
    workers = [Worker("fast", {"x"}, 4, running=3, perf=2.0), Worker("slow", {"x"}, 4)]
    result = plan([Task("t", "x")], workers, Policy(strategy="spread"))
    assert result.assignments == {"t": "fast"}


def test_equal_speeds_keep_spread_and_binpack() -> None:
    workers = [
        Worker("a", {"x"}, 4, running=2, perf=2.0),
        Worker("b", {"x"}, 4, running=0, perf=2.0),
        Worker("c", {"x"}, 4, running=0, perf=0.5),
    ]
    tasks = [Task("t", "x")]
    assert plan(tasks, workers, Policy(strategy="spread")).assignments == {"t": "b"}
    assert plan(tasks, workers, Policy(strategy="binpack")).assignments == {"t": "a"}


def test_bad_speeds_are_refused_with_a_sentence() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan, MAX_SPEED * 2, "2", True):
        with pytest.raises(ValueError, match="perf must be a number"):
            Worker("w", {"x"}, 1, perf=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="speed of 'x'"):
        Worker("w", {"x"}, 1, speeds={"x": 0.0})
    assert Worker("w", {"x"}, 1, perf=MIN_SPEED).with_running(1).perf == MIN_SPEED


def test_tiers_round_by_factors_of_the_step() -> None:
    assert tier(2.0, 2.0) == 0
    assert tier(3.0, 2.0) == 0
    assert tier(2.0 / STEP, 2.0) == 1
    assert tier(1.0, 2.0) == round(math.log(2) / math.log(STEP))
    assert tier(MIN_SPEED, MAX_SPEED) == MAX_TIER


@SETTINGS
@given(fast_and_slow(), aging_policies)
def test_speeds_keep_plans_well_formed_and_maximal(
    instance: tuple[list[Task], list[Worker], list[Worker]], policy: Policy
) -> None:
    tasks, plain, timed = instance
    result = plan(tasks, timed, policy)
    check_well_formed(tasks, timed, result)
    assert result.placed == plan(tasks, plain, policy).placed
    bands = {t.id: ref.band(t, policy) for t in tasks}
    for band, best in ref.max_placeable_by_band(tasks, timed, policy).items():
        got = sum(1 for t in result.assignments if bands[t] >= band)
        assert got == best, f"band >= {band}: placed {got}, could place {best}"


@SETTINGS
@given(fast_and_slow(), aging_policies)
def test_speeds_never_let_a_lower_band_hold_a_slot_a_higher_one_could_use(
    instance: tuple[list[Task], list[Worker], list[Worker]], policy: Policy
) -> None:
    tasks, _, workers = instance
    result = plan(tasks, workers, policy)
    bands = {t.id: ref.band(t, policy) for t in tasks}
    by_id = {t.id: t for t in tasks}
    by_name = {w.name: w for w in workers}
    for waiting_id in result.unplaced:
        for placed_id, name in result.assignments.items():
            if bands[placed_id] < bands[waiting_id]:
                assert not by_id[waiting_id].feasible_on(by_name[name])


@SETTINGS
@given(fast_and_slow(), strategies)
def test_no_task_runs_slower_than_an_eligible_slot_left_free(
    instance: tuple[list[Task], list[Worker], list[Worker]], strategy: str
) -> None:
    tasks, _, workers = instance
    result = plan(tasks, workers, Policy(strategy=strategy))
    load = new_load(result)
    by_id = {t.id: t for t in tasks}
    left = [w for w in workers if w.free > load[w.name]]
    for task_id, name in result.assignments.items():
        task = by_id[task_id]
        mine = next(w for w in workers if w.name == name).speed(task.type)
        for w in left:
            if task.feasible_on(w):
                assert w.speed(task.type) <= mine, (
                    f"{task_id} runs on {name} at {mine} while {w.name} "
                    f"({w.speed(task.type)}) keeps a free slot"
                )


def test_workers_of_nearly_the_same_learned_speed_form_one_group() -> None:
    """Learned rates differ in every worker; on the speed grid they fall into a few groups,
    so a round's network does not grow with the cluster."""
    workers = [
        Worker(f"w{i:03d}", {"x"}, 4).with_speeds({"x": base * (0.97 + 0.0006 * i)})
        for i, base in enumerate([1.0] * 100 + [2.0] * 100)
    ]
    result = plan([Task("t", "x")], workers, Policy())
    assert result.worker_groups == 2
    assert int(result.assignments["t"][1:]) >= 100  # one of the twice-as-fast workers
    slow = [w for w in workers if w.speed("x") < 1.5]
    assert plan([Task("t", "x")], slow, Policy()).worker_groups == 1
