"""Property tests for ``matchmaker.plan`` against the spec and an independent networkx reference.

Instances are small (<= 30 tasks, <= 8 workers, 3 types, attributes site and
gpu) so that the reference (tests/reference_flow.py) stays exact and fast.
Tasks are drawn from a few templates so that equivalence classes really form.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchmaker import plan
from matchmaker.engine import classes
from matchmaker.models import Plan, Policy, Reason, Task, Unplaced, Worker
from tests import reference_flow as ref

TYPES = ("env_setup", "data_staging", "job_submission")
SITES = ("iu", "tacc")
GPUS = (0, 1, 2)
NAMES = tuple(f"w{i}" for i in range(8))
NOW = 1000.0

# MM_EXAMPLES=2000 for a deeper search; the default keeps the file well under a minute.
SETTINGS = settings(
    max_examples=int(os.environ.get("MM_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- strategies

COMPARISONS: list[dict[str, int]] = [
    {">=": 1},
    {">": 0, "<=": 1},
    {"<": 2},
    {"!=": 1},
    {"==": 2},
    {">=": 1, "<": 3},
]

constraint_items = st.one_of(
    st.tuples(st.just("site"), st.sampled_from(["iu", "tacc", ["iu", "tacc"], ["iu"]])),
    st.tuples(st.just("gpu"), st.sampled_from(GPUS)),
    st.tuples(st.just("gpu"), st.lists(st.sampled_from(GPUS), min_size=1, max_size=2, unique=True)),
    st.tuples(st.just("gpu"), st.sampled_from(COMPARISONS)),
    st.tuples(
        st.just("name"), st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)
    ),
    st.tuples(st.just("rack"), st.just("r1")),  # an attribute no worker has
)
constraint_maps = st.lists(constraint_items, max_size=2).map(dict)
preference_items = st.one_of(
    st.tuples(st.just("site"), st.sampled_from(SITES)),
    st.tuples(
        st.just("name"), st.lists(st.sampled_from(NAMES), min_size=1, max_size=2, unique=True)
    ),
    st.tuples(st.just("gpu"), st.just({">=": 1})),
)
preference_maps = st.lists(preference_items, max_size=2).map(dict)


@st.composite
def worker_lists(draw: st.DrawFn, max_workers: int = 8) -> list[Worker]:
    workers = []
    for name in NAMES[: draw(st.integers(0, max_workers))]:
        caps = draw(
            st.sets(st.sampled_from(TYPES), min_size=min(1, draw(st.integers(0, 5))), max_size=3)
        )
        slots = draw(st.integers(0, 4))
        running = draw(st.integers(0, slots))
        attributes: dict[str, Any] = {}
        if draw(st.integers(0, 4)) > 0:
            attributes["site"] = draw(st.sampled_from(SITES))
        if draw(st.integers(0, 4)) > 0:
            attributes["gpu"] = draw(st.sampled_from(GPUS))
        workers.append(Worker(name, caps, slots, running, attributes))
    return workers


@st.composite
def instances(
    draw: st.DrawFn,
    *,
    priorities: bool = True,
    preferences: bool = True,
    ages: bool = True,
    max_tasks: int = 30,
) -> tuple[list[Task], list[Worker]]:
    """Tasks drawn from 1..6 templates (type, constraints, preferences, priority), and workers."""
    workers = draw(worker_lists())
    shared_priority = draw(st.integers(0, 9))
    templates = [
        (
            draw(st.sampled_from(TYPES)),
            draw(constraint_maps),
            draw(preference_maps) if preferences else {},
            draw(st.integers(0, 9)) if priorities else shared_priority,
        )
        for _ in range(draw(st.integers(1, 6)))
    ]
    shared_age = draw(st.integers(0, 5))
    tasks = []
    for i in range(draw(st.integers(0, max_tasks))):
        type_, constraints, prefs, priority = draw(st.sampled_from(templates))
        submitted = draw(st.integers(0, 5)) if ages else shared_age
        tasks.append(Task(f"t{i:02d}", type_, priority, constraints, prefs, NOW - submitted * 10))
    return tasks, workers


strategies = st.sampled_from(["spread", "binpack"])
aging_policies = st.builds(
    Policy,
    strategy=strategies,
    aging_interval=st.sampled_from([0.0, 10.0, 25.0, 60.0]),
    now=st.sampled_from([None, NOW]),
    priority_weight=st.sampled_from([1, 3]),
    preference_bonus=st.sampled_from([0, 1, 5, 100]),
)
static_policies = st.builds(
    Policy,
    strategy=strategies,
    now=st.just(None),
    preference_bonus=st.sampled_from([0, 1, 100]),
)

# ---------------------------------------------------------------- helpers


def new_load(result: Plan) -> Counter[str]:
    """Tasks newly assigned to each worker this round."""
    return Counter(result.assignments.values())


def remaining(worker: Worker, result: Plan) -> int:
    return worker.free - new_load(result)[worker.name]


def check_well_formed(tasks: Sequence[Task], workers: Sequence[Worker], result: Plan) -> None:
    """Partition, capacity and feasibility: the invariants every plan must keep."""
    ids = {t.id for t in tasks}
    assert set(result.assignments).isdisjoint(result.unplaced)
    assert set(result.assignments) | set(result.unplaced) == ids
    assert result.placed == len(result.assignments)
    by_name = {w.name: w for w in workers}
    by_id = {t.id: t for t in tasks}
    for task_id, name in result.assignments.items():
        assert name in by_name, f"{task_id} assigned to unknown worker {name!r}"
        assert by_id[task_id].feasible_on(by_name[name]), f"{task_id} is infeasible on {name}"
    for name, count in new_load(result).items():
        assert count <= by_name[name].free, f"{name} got {count} tasks for {by_name[name].free}"
    for task_id, why in result.unplaced.items():
        assert isinstance(why, Unplaced), f"{task_id}: {why!r}"
        assert isinstance(why.code, Reason)
        assert isinstance(why.message, str) and why.message.strip()


# ---------------------------------------------------------------- the reference itself


@SETTINGS
@given(instances())
def test_reference_aggregated_and_plain_max_flow_agree(
    instance: tuple[list[Task], list[Worker]],
) -> None:
    tasks, workers = instance
    plain = ref.max_placeable(tasks, workers, aggregate=False)
    assert ref.max_placeable(tasks, workers, aggregate=True) == plain
    assert plain <= min(len(tasks), sum(w.free for w in workers))
    best = ref.min_spread_assignment(tasks, workers)
    assert len(best) == plain
    for task in tasks:
        if task.id in best:
            assert task.feasible_on(next(w for w in workers if w.name == best[task.id]))


# ---------------------------------------------------------------- capacity, feasibility, optimum


@SETTINGS
@given(instances(), aging_policies)
def test_plan_is_a_partition_within_capacity_and_feasible(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    tasks, workers = instance
    check_well_formed(tasks, workers, plan(tasks, workers, policy))


@SETTINGS
@given(instances(priorities=False), static_policies)
def test_equal_priorities_place_the_max_flow(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    tasks, workers = instance
    result = plan(tasks, workers, policy)
    check_well_formed(tasks, workers, result)
    assert result.placed == ref.max_placeable(tasks, workers)


@SETTINGS
@given(instances(priorities=False, ages=False), strategies)
def test_equal_priorities_and_ages_place_the_max_flow_with_aging_on(
    instance: tuple[list[Task], list[Worker]], strategy: str
) -> None:
    tasks, workers = instance
    result = plan(tasks, workers, Policy(strategy=strategy, aging_interval=10.0, now=NOW + 5))
    assert result.placed == ref.max_placeable(tasks, workers)


def test_default_policy_is_spread_without_aging() -> None:
    tasks = [Task(f"t{i}", "a", priority=i % 3, submitted_at=i) for i in range(7)]
    workers = [Worker("w1", {"a"}, 3, running=1), Worker("w2", {"a"}, 2), Worker("w3", {"a"}, 1)]
    assert plan(tasks, workers) == plan(tasks, workers, Policy())


# ---------------------------------------------------------------- priorities


@SETTINGS
@given(instances(ages=False), st.sampled_from([None, NOW + 100]), strategies)
def test_no_lower_priority_task_holds_a_worker_a_waiting_higher_one_could_use(
    instance: tuple[list[Task], list[Worker]], now: float | None, strategy: str
) -> None:
    tasks, workers = instance
    result = plan(tasks, workers, Policy(strategy=strategy, now=now))
    by_id = {t.id: t for t in tasks}
    by_name = {w.name: w for w in workers}
    for waiting_id in result.unplaced:
        waiting = by_id[waiting_id]
        for placed_id, name in result.assignments.items():
            if by_id[placed_id].priority < waiting.priority:
                assert not waiting.feasible_on(by_name[name]), (
                    f"{placed_id} (p{by_id[placed_id].priority}) holds {name} "
                    f"while {waiting_id} (p{waiting.priority}) waits"
                )


@SETTINGS
@given(instances(), aging_policies)
def test_no_lower_band_task_holds_a_worker_a_waiting_higher_band_one_could_use(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    """The same with aging: a task's band is its priority plus one per interval waited."""
    tasks, workers = instance
    result = plan(tasks, workers, policy)
    bands = {t.id: ref.band(t, policy) for t in tasks}
    by_id = {t.id: t for t in tasks}
    by_name = {w.name: w for w in workers}
    for waiting_id in result.unplaced:
        for placed_id, name in result.assignments.items():
            if bands[placed_id] < bands[waiting_id]:
                assert not by_id[waiting_id].feasible_on(by_name[name]), (
                    f"{placed_id} (band {bands[placed_id]}) holds {name} "
                    f"while {waiting_id} (band {bands[waiting_id]}) waits"
                )


@SETTINGS
@given(instances(preferences=False), aging_policies)
def test_each_band_places_as_many_as_it_could_alone(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    """Penalties rise with the band and a slot holds one task, so placement is
    lexicographic: for every band b, the tasks of band >= b place as many as the
    max flow of those tasks alone (and the total is the overall max flow)."""
    tasks, workers = instance
    result = plan(tasks, workers, policy)
    bands = {t.id: ref.band(t, policy) for t in tasks}
    for band, best in ref.max_placeable_by_band(tasks, workers, policy).items():
        got = sum(1 for t in result.assignments if bands[t] >= band)
        assert got == best, f"band >= {band}: placed {got}, could place {best}"


# ---------------------------------------------------------------- oldest first, aging


@SETTINGS
@given(instances(), aging_policies)
def test_oldest_first_within_a_class(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    tasks, workers = instance
    result = plan(tasks, workers, policy)
    for waiting_id in result.unplaced:
        a = next(t for t in tasks if t.id == waiting_id)
        for b in tasks:
            same_class = b.class_key == a.class_key and b.priority == a.priority
            if same_class and b.id in result.assignments:
                assert b.submitted_at <= a.submitted_at, (
                    f"{b.id} (submitted {b.submitted_at}) placed before older {a.id} "
                    f"(submitted {a.submitted_at}) of the same class"
                )


def _contest(p: int, q: int, age: float, interval: float) -> Plan:
    """One free slot; an old priority-p task against a fresh priority-q one."""
    old = Task("old", "a", priority=p, constraints={"site": "iu"}, submitted_at=NOW - age)
    fresh = Task("fresh", "a", priority=q, submitted_at=NOW)
    workers = [Worker("w", {"a"}, 2, running=1, attributes={"site": "iu"})]
    return plan([fresh, old], workers, Policy(aging_interval=interval, now=NOW))


@SETTINGS
@given(
    st.integers(0, 8),
    st.integers(1, 9),
    st.sampled_from([1.0, 7.5, 60.0]),
    st.floats(0, 3, allow_nan=False),
)
def test_aging_outranks_fresh_work_at_the_documented_bound(
    p: int, gap: int, interval: float, extra: float
) -> None:
    q = min(9, p + gap)
    if q == p:
        q, p = p, p - 1
    bound = (q - p + 1) * interval
    won = _contest(p, q, bound + extra * interval, interval)
    assert won.assignments == {"old": "w"}
    assert won.unplaced["fresh"].code in (Reason.OUTRANKED, Reason.CONTENDED)
    lost = _contest(p, q, max(0.0, (q - p) * interval * (1 - extra / 3) - interval / 4), interval)
    assert lost.assignments == {"fresh": "w"}
    assert lost.unplaced["old"].code == Reason.OUTRANKED
    tie = _contest(p, q, (q - p) * interval + extra / 3 * interval * 0.99, interval)
    assert tie.placed == 1  # equal bands: either may win, but only one slot


def test_aging_interval_zero_disables_aging() -> None:
    result = _contest(0, 9, 1e9, 0.0)
    assert result.assignments == {"fresh": "w"}
    assert result.unplaced["old"].code == Reason.OUTRANKED


def test_no_aging_without_now() -> None:
    old = Task("old", "a", priority=0, submitted_at=-1e9)
    fresh = Task("fresh", "a", priority=9, submitted_at=NOW)
    result = plan([old, fresh], [Worker("w", {"a"}, 1)], Policy(aging_interval=1.0, now=None))
    assert result.assignments == {"fresh": "w"}


@pytest.mark.parametrize("arrivals", [1, 2, 3])
def test_nothing_starves_under_a_stream_of_fresh_top_priority_work(arrivals: int) -> None:
    """One slot frees per round and ``arrivals`` fresh priority-9 tasks come in each round.

    A priority-0 task ages one band per interval; once every priority-9 task older than
    ``(9 - 0 + 1)`` intervals has gone, it outranks everything newer, so it is placed
    within ``10 * arrivals`` rounds.
    """
    interval = 60.0
    workers = [Worker("w", {"a"}, 1)]
    pending = [Task("low", "a", priority=0, submitted_at=0.0)]
    for round_ in range(10 * arrivals + 1):
        now = round_ * interval
        pending += [
            Task(f"h{round_}.{i}", "a", priority=9, submitted_at=now) for i in range(arrivals)
        ]
        result = plan(pending, workers, Policy(aging_interval=interval, now=now))
        assert result.placed == 1
        if "low" in result.assignments:
            break
        pending = [t for t in pending if t.id not in result.assignments]
    else:
        raise AssertionError(f"the priority-0 task still waits after {10 * arrivals + 1} rounds")


@pytest.mark.parametrize(
    ("high", "low"),
    [
        pytest.param({}, {"site": "iu"}, id="constrained-low"),
        pytest.param({"site": "iu"}, {}, id="constrained-high"),
    ],
)
def test_nothing_starves_under_permanent_overload(
    high: dict[str, Any], low: dict[str, Any]
) -> None:
    """One slot per round, four priority-9 tasks arrive every round for ever (a backlog
    that only grows), and a priority-0 task of another class arrives at round 50.

    Aging one band per interval, it outranks every priority-9 task submitted after
    round 59 (and ties those of round 59), so at most 4 * 60 tasks can go before it:
    it must be placed by round 240, however long everything has waited by then.
    """
    start, arrivals = 50, 4
    bound = arrivals * (start + 10)
    workers = [Worker("w", {"a"}, 1, attributes={"site": "iu"})]
    pending: list[Task] = []
    for round_ in range(bound + 1):
        if round_ == start:
            pending.append(Task("low", "a", 0, low, submitted_at=float(start)))
        pending += [
            Task(f"h{round_}.{i}", "a", 9, high, submitted_at=float(round_))
            for i in range(arrivals)
        ]
        result = plan(pending, workers, Policy(aging_interval=1.0, now=float(round_)))
        assert result.placed == 1
        if "low" in result.assignments:
            break
        pending = [t for t in pending if t.id not in result.assignments]
    else:
        younger = sum(1 for t in pending if t.id != "low" and t.submitted_at > start)
        raise AssertionError(
            f"the priority-0 task submitted at round {start} still waits at round {bound}; "
            f"{arrivals * (bound - start + 1) - younger} tasks submitted after it were placed"
        )


# ---------------------------------------------------------------- determinism


@SETTINGS
@given(instances(), aging_policies, st.randoms(use_true_random=False))
def test_same_input_same_plan_in_any_input_order(
    instance: tuple[list[Task], list[Worker]], policy: Policy, rnd: random.Random
) -> None:
    tasks, workers = instance
    first = plan(tasks, workers, policy)
    assert plan(list(tasks), list(workers), policy) == first
    shuffled_tasks, shuffled_workers = list(tasks), list(workers)
    rnd.shuffle(shuffled_tasks)
    rnd.shuffle(shuffled_workers)
    again = plan(shuffled_tasks, shuffled_workers, policy)
    assert again.assignments == first.assignments
    assert again.unplaced == first.unplaced
    assert again == first


# ---------------------------------------------------------------- spread and binpack


@SETTINGS
@given(instances(preferences=False), st.sampled_from([None, NOW]))
def test_spread_leaves_no_eligible_worker_with_room_two_below(
    instance: tuple[list[Task], list[Worker]], now: float | None
) -> None:
    """For each placed task t on w: every other worker v that t could use and that still
    has room carries load(v) >= load(w) - 1 (load = running + newly assigned)."""
    tasks, workers = instance
    result = plan(tasks, workers, Policy(strategy="spread", aging_interval=10.0, now=now))
    got = new_load(result)
    load = {w.name: w.running + got[w.name] for w in workers}
    by_id = {t.id: t for t in tasks}
    for task_id, name in result.assignments.items():
        for other in workers:
            if (
                other.name != name
                and by_id[task_id].feasible_on(other)
                and remaining(other, result)
            ):
                assert load[other.name] >= load[name] - 1, (
                    f"{task_id} on {name} (load {load[name]}) while {other.name} "
                    f"has room at load {load[other.name]}"
                )


@SETTINGS
@given(instances(preferences=False), st.sampled_from([None, NOW]))
def test_spread_cost_is_least_for_the_tasks_it_placed(
    instance: tuple[list[Task], list[Worker]], now: float | None
) -> None:
    """Penalties depend only on which tasks are placed, so with no preferences the
    engine's placement of its chosen tasks must have the least spread cost
    (sum of ``running + k``) of any placement of those same tasks (networkx reference)."""
    tasks, workers = instance
    result = plan(tasks, workers, Policy(strategy="spread", aging_interval=10.0, now=now))
    chosen = [t for t in tasks if t.id in result.assignments]
    assert ref.max_placeable(chosen, workers) == len(chosen)
    assert ref.spread_cost(result.assignments, workers) == ref.min_spread_cost(chosen, workers)


@SETTINGS
@given(
    st.integers(1, 4),
    st.lists(st.integers(0, 4), min_size=1, max_size=8),
    st.integers(0, 30),
    st.booleans(),
)
def test_binpack_fills_workers_before_opening_new_ones(
    slots: int, running: list[int], n_tasks: int, ages: bool
) -> None:
    """One class, identical workers except for what already runs on them."""
    workers = [
        Worker(f"w{i}", {"a"}, slots, min(r, slots), {"site": "iu"}) for i, r in enumerate(running)
    ]
    tasks = [
        Task(f"t{j:02d}", "a", 3, {"site": "iu"}, submitted_at=j if ages else 0)
        for j in range(n_tasks)
    ]
    result = plan(tasks, workers, Policy(strategy="binpack"))
    check_well_formed(tasks, workers, result)
    assert result.placed == min(n_tasks, sum(w.free for w in workers))
    got = new_load(result)
    opened = [w for w in workers if got[w.name] > 0]
    partial = [w.name for w in opened if remaining(w, result) > 0]
    assert len(partial) <= 1, f"partially filled: {partial}"
    for used in opened:
        for busier in workers:
            if busier.running > used.running:
                assert remaining(busier, result) == 0, (
                    f"{used.name} (running {used.running}) got work while busier "
                    f"{busier.name} (running {busier.running}) has room"
                )


# ---------------------------------------------------------------- reasons


@SETTINGS
@given(instances(), aging_policies)
def test_every_unplaced_task_has_one_true_reason(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    """OUTRANKED: some worker it could use went to work of a strictly higher band
    (priority, plus aging); CONTENDED: all of them went to work of its band or lower."""
    tasks, workers = instance
    result = plan(tasks, workers, policy)
    check_well_formed(tasks, workers, result)
    by_id = {t.id: t for t in tasks}
    bands = {t.id: ref.band(t, policy) for t in tasks}
    for task_id, why in result.unplaced.items():
        task = by_id[task_id]
        typed = [w for w in workers if task.type in w.capabilities]
        feasible = [w for w in typed if task.feasible_on(w)]
        if not typed:
            expected = Reason.NO_WORKER_FOR_TYPE
            assert task.type in why.message
        elif not feasible:
            expected = Reason.CONSTRAINTS
            assert any(c.attribute in why.message for c in task.constraints), why.message
        elif all(w.free == 0 for w in feasible):
            expected = Reason.FULL
        else:
            names = {w.name for w in feasible}
            assert all(remaining(w, result) == 0 for w in feasible), (
                f"{task_id} waits ({why.code}) though a feasible worker has room"
            )
            takers = [bands[t] for t, name in result.assignments.items() if name in names]
            higher = any(b > bands[task_id] for b in takers)
            expected = Reason.OUTRANKED if higher else Reason.CONTENDED
        assert why.code == expected, f"{task_id}: {why.code} ({why.message}), expected {expected}"


@given(instances(max_tasks=2 * classes.FEW), aging_policies)
def test_few_and_many_tasks_form_the_same_classes(
    instance: tuple[list[Task], list[Worker]], policy: Policy
) -> None:
    tasks, _ = instance
    few, many = classes._few_classes(tasks, policy), classes._many_classes(tasks, policy)
    assert [(c.key, c.band, c.sample.id) for c in few] == [
        (c.key, c.band, c.sample.id) for c in many
    ]
    for a, b in zip(few, many, strict=True):
        assert a.members.tolist() == b.members.tolist()
        assert a.submitted.tolist() == b.submitted.tolist()
        assert a.oldest(len(tasks) // 2) == b.oldest(len(tasks) // 2)


@pytest.mark.parametrize(
    ("submitted", "band"),
    [
        (NOW, 3),
        (NOW - 25, 5),
        (NOW + 50, 3),
        (NOW - 1e300, classes.MAX_BAND),
        (NOW - 10 * classes.MAX_BAND + 10, classes.MAX_BAND),
        (NOW - 10 * classes.MAX_BAND - 10, classes.MAX_BAND),
    ],
)
def test_both_paths_band_a_task_alike(submitted: float, band: int) -> None:
    policy = Policy(aging_interval=10.0, now=NOW)
    task = Task("t", "env_setup", 3, submitted_at=submitted)
    assert classes.band_of(task, policy) == band
    assert [c.band for c in classes._many_classes([task], policy)] == [band]
