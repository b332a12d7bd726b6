"""Unit tests for the edges of ``matchmaker.plan``: empty and degenerate inputs, bad input,
the constraint forms, preferences, the strategies and the reasons on small hand-made cases."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchmaker import plan
from matchmaker.engine import classes
from matchmaker.models import Plan, Policy, Reason, Task, Worker


def codes(result: Plan) -> dict[str, Reason]:
    return {task_id: why.code for task_id, why in result.unplaced.items()}


# ---------------------------------------------------------------- empty and degenerate


def test_no_workers_leaves_every_task_without_a_worker_for_its_type() -> None:
    tasks = [Task("a1", "data_staging"), Task("b1", "job_submission", priority=9)]
    result = plan(tasks, [])
    assert result.assignments == {}
    assert result.placed == 0
    assert codes(result) == {"a1": Reason.NO_WORKER_FOR_TYPE, "b1": Reason.NO_WORKER_FOR_TYPE}
    assert "data_staging" in result.unplaced["a1"].message
    assert "job_submission" in result.unplaced["b1"].message


@pytest.mark.parametrize("workers", [[], [Worker("w1", {"a"}, 3)]])
def test_no_tasks_is_an_empty_plan(workers: list[Worker]) -> None:
    result = plan([], workers)
    assert (result.assignments, result.unplaced, result.placed) == ({}, {}, 0)


def test_zero_free_slots_means_full() -> None:
    workers = [
        Worker("none", {"a"}, 0),
        Worker("busy", {"a"}, 2, running=2),
        Worker("over", {"a"}, 1, running=5),  # more running than slots: still just full
    ]
    result = plan([Task(f"t{i}", "a", priority=i) for i in range(4)], workers)
    assert result.placed == 0
    assert set(codes(result).values()) == {Reason.FULL}


def test_nothing_feasible_names_the_constraint() -> None:
    workers = [Worker(f"w{i}", {"a"}, 4, attributes={"site": "tacc", "gpu": 0}) for i in range(3)]
    result = plan([Task("t1", "a", constraints={"site": "iu"})], workers)
    assert result.assignments == {}
    assert result.unplaced["t1"].code == Reason.CONSTRAINTS
    assert "site" in result.unplaced["t1"].message


def test_constraint_on_an_attribute_no_worker_has() -> None:
    workers = [Worker("w1", {"a"}, 4, attributes={"site": "iu"}), Worker("w2", {"a"}, 4)]
    tasks = [Task("t1", "a", constraints={"rack": "r7"}), Task("t2", "a")]
    result = plan(tasks, workers)
    assert result.assignments.keys() == {"t2"}
    assert result.unplaced["t1"].code == Reason.CONSTRAINTS
    assert "rack" in result.unplaced["t1"].message


def test_type_only_on_a_full_worker_is_full_not_missing() -> None:
    workers = [Worker("w1", {"a"}, 1, running=1), Worker("w2", {"b"}, 4)]
    result = plan([Task("t1", "a")], workers)
    assert codes(result) == {"t1": Reason.FULL}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["spread", "binpack"])
def test_one_worker_with_a_million_slots_takes_ten_thousand_tasks(strategy: str) -> None:
    worker = Worker("big", {"a", "b"}, 1_000_000, running=17, attributes={"site": "iu"})
    tasks = [
        Task(f"t{i:05d}", "ab"[i % 2], priority=i % 10, constraints={"site": "iu"} if i % 3 else {})
        for i in range(10_000)
    ]
    result = plan(tasks, [worker], Policy(strategy=strategy))
    assert result.placed == 10_000
    assert result.unplaced == {}
    assert set(result.assignments.values()) == {"big"}


def test_many_tasks_few_slots_place_exactly_the_slots() -> None:
    workers = [Worker(f"w{i}", {"a"}, 3, running=i % 3) for i in range(10)]
    tasks = [Task(f"t{i:04d}", "a", submitted_at=i) for i in range(5_000)]
    result = plan(tasks, workers)
    assert result.placed == sum(w.free for w in workers)
    assert Counter(result.assignments.values()) == {w.name: w.free for w in workers if w.free}
    assert set(codes(result).values()) == {Reason.CONTENDED}
    oldest = {f"t{i:04d}" for i in range(result.placed)}
    assert set(result.assignments) == oldest


# ---------------------------------------------------------------- bad input


def test_duplicate_task_ids_are_a_clear_error() -> None:
    tasks = [Task("dup", "a"), Task("other", "a"), Task("dup", "b", priority=3)]
    with pytest.raises(ValueError, match="dup") as error:
        plan(tasks, [Worker("w1", {"a", "b"}, 4)])
    assert "\n" not in str(error.value)


def test_duplicate_ids_within_one_class_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="same"):
        plan([Task("same", "a"), Task("same", "a")], [Worker("w1", {"a"}, 4)])


def test_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="strategy"):
        Policy(strategy="x")


@pytest.mark.parametrize("priority", [-1, 10, 100, True, "5", 2.0])
def test_priority_out_of_range_is_a_clear_error(priority: Any) -> None:
    with pytest.raises(ValueError, match="priority"):
        Task("t1", "a", priority=priority)


@pytest.mark.parametrize(
    "constraints",
    [
        {"gpu": {"~": 1}},  # unknown operator
        {"gpu": {">=": "one"}},  # comparison with a string
        {"gpu": {}},  # empty comparison
        {"site": []},  # empty any-of
        {"": "iu"},  # empty attribute name
        {"site": None},  # not a scalar
        {"site": ["iu", None]},  # not a scalar inside any-of
        {"gpu": {">=": float("nan")}},  # not a finite number
    ],
)
def test_malformed_constraint_is_a_clear_error(constraints: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="t1"):
        Task("t1", "a", constraints=constraints)


@pytest.mark.parametrize(
    "policy",
    [
        {"priority_weight": 0},
        {"aging_interval": -1.0},
        {"aging_interval": float("inf")},
        {"preference_bonus": -1},
    ],
)
def test_bad_policy_is_a_clear_error(policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Policy(**policy)


# ---------------------------------------------------------------- constraint forms


WORKERS = [
    Worker("w0", {"a"}, 4, attributes={"site": "iu", "gpu": 0}),
    Worker("w1", {"a"}, 4, attributes={"site": "iu", "gpu": 1}),
    Worker("w2", {"a"}, 4, attributes={"site": "tacc", "gpu": 2}),
    Worker("w3", {"a"}, 4, attributes={"site": "tacc", "gpu": "2"}),  # numbers may come as text
    Worker("w4", {"a"}, 4, attributes={"site": "tacc"}),  # no gpu at all
]


@pytest.mark.parametrize(
    ("constraints", "allowed"),
    [
        ({"site": "iu"}, {"w0", "w1"}),
        ({"site": ["tacc"]}, {"w2", "w3", "w4"}),
        ({"gpu": 2}, {"w2", "w3"}),
        ({"gpu": [0, 1]}, {"w0", "w1"}),
        ({"gpu": {">=": 1}}, {"w1", "w2", "w3"}),
        ({"gpu": {">": 0, "<": 2}}, {"w1"}),
        ({"gpu": {"!=": 1}}, {"w0", "w2", "w3"}),
        ({"site": "tacc", "gpu": {">=": 1}}, {"w2", "w3"}),
        ({"name": "w4"}, {"w4"}),
        ({"name": ["w0", "w3"]}, {"w0", "w3"}),
    ],
)
def test_constraint_forms_are_honoured(constraints: dict[str, Any], allowed: set[str]) -> None:
    tasks = [Task(f"t{i:02d}", "a", constraints=constraints) for i in range(12)]
    result = plan(tasks, WORKERS)
    assert set(result.assignments.values()) == allowed  # spread: each allowed worker gets some
    assert result.placed == min(12, 4 * len(allowed))


# ---------------------------------------------------------------- preferences


def test_a_preference_picks_among_equals() -> None:
    workers = [
        Worker("t", {"a"}, 2, attributes={"site": "tacc"}),
        Worker("i", {"a"}, 2, attributes={"site": "iu"}),
    ]
    for site, where in (("iu", "i"), ("tacc", "t")):
        result = plan([Task("t1", "a", preferences={"site": site})], workers)
        assert result.assignments == {"t1": where}


def test_a_preferred_worker_by_name() -> None:
    workers = [Worker(f"w{i}", {"a"}, 2) for i in range(4)]
    result = plan([Task("t1", "a", preferences={"name": ["w2"]})], workers)
    assert result.assignments == {"t1": "w2"}


def test_a_preference_never_leaves_a_task_waiting() -> None:
    workers = [Worker("i", {"a"}, 1, running=1, attributes={"site": "iu"}), Worker("t", {"a"}, 1)]
    result = plan([Task("t1", "a", preferences={"site": "iu"})], workers)
    assert result.assignments == {"t1": "t"}


def test_a_preference_never_beats_priority() -> None:
    workers = [Worker("i", {"a"}, 1, attributes={"site": "iu"})]
    tasks = [
        Task("low", "a", priority=2, preferences={"site": "iu", "name": "i"}),
        Task("high", "a", priority=3, preferences={"site": "tacc"}),
    ]
    result = plan(tasks, workers, Policy(preference_bonus=50))
    assert result.assignments == {"high": "i"}
    assert codes(result) == {"low": Reason.OUTRANKED}


# ---------------------------------------------------------------- strategies


def test_spread_balances_idle_workers() -> None:
    workers = [Worker("w1", {"a"}, 4), Worker("w2", {"a"}, 4)]
    result = plan([Task(f"t{i}", "a") for i in range(4)], workers, Policy(strategy="spread"))
    assert Counter(result.assignments.values()) == {"w1": 2, "w2": 2}


def test_spread_counts_what_already_runs() -> None:
    workers = [Worker("busy", {"a"}, 5, running=3), Worker("idle", {"a"}, 5)]
    result = plan([Task(f"t{i}", "a") for i in range(3)], workers)
    assert Counter(result.assignments.values()) == {"idle": 3}
    result = plan([Task(f"t{i}", "a") for i in range(5)], workers)
    assert Counter(result.assignments.values()) == {"idle": 4, "busy": 1}


def test_binpack_fills_one_worker_first() -> None:
    workers = [Worker("w1", {"a"}, 4), Worker("w2", {"a"}, 4)]
    result = plan([Task(f"t{i}", "a") for i in range(4)], workers, Policy(strategy="binpack"))
    assert sorted(Counter(result.assignments.values()).values()) == [4]


def test_binpack_fills_an_open_worker_before_an_idle_one() -> None:
    workers = [Worker("idle", {"a"}, 4), Worker("open", {"a"}, 4, running=2)]
    result = plan([Task(f"t{i}", "a") for i in range(3)], workers, Policy(strategy="binpack"))
    assert Counter(result.assignments.values()) == {"open": 2, "idle": 1}


# ---------------------------------------------------------------- order and reasons


def test_oldest_first_within_a_class() -> None:
    tasks = [Task(f"t{i}", "a", submitted_at=s) for i, s in enumerate([30.0, 10.0, 20.0])]
    result = plan(tasks, [Worker("w1", {"a"}, 1)])
    assert result.assignments == {"t1": "w1"}
    assert codes(result) == {"t0": Reason.CONTENDED, "t2": Reason.CONTENDED}


def test_outranked_and_contended() -> None:
    workers = [Worker("w1", {"a"}, 2)]
    tasks = [
        Task("hi1", "a", priority=7),
        Task("hi2", "a", priority=7, submitted_at=1.0),
        Task("hi3", "a", priority=7, submitted_at=2.0),
        Task("low", "a", priority=1),
    ]
    result = plan(tasks, workers)
    assert result.assignments == {"hi1": "w1", "hi2": "w1"}
    assert codes(result) == {"hi3": Reason.CONTENDED, "low": Reason.OUTRANKED}


def test_each_task_gets_its_own_reason() -> None:
    workers = [
        Worker("w1", {"a"}, 1, attributes={"site": "iu"}),
        Worker("w2", {"b"}, 2, running=2, attributes={"site": "iu"}),
    ]
    tasks = [
        Task("placed", "a", priority=5),
        Task("outranked", "a", priority=4),
        Task("full", "b"),
        Task("constrained", "a", constraints={"site": "tacc"}),
        Task("missing", "c"),
    ]
    result = plan(tasks, workers)
    assert result.assignments == {"placed": "w1"}
    assert codes(result) == {
        "outranked": Reason.OUTRANKED,
        "full": Reason.FULL,
        "constrained": Reason.CONSTRAINTS,
        "missing": Reason.NO_WORKER_FOR_TYPE,
    }
    assert isinstance(result.cost, int)


# ---------------------------------------------------------------- aggregation and scale


def test_tasks_of_one_class_form_one_node_and_identical_workers_one_group() -> None:
    templates: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = [
        ("a", 0, {}, {}),
        ("a", 5, {"site": "iu"}, {}),
        ("b", 5, {"gpu": {">=": 1}}, {"site": "tacc"}),
    ]
    tasks = [
        Task(f"t{i:05d}", kind, priority, cons, prefs, submitted_at=i % 7)
        for i in range(3_000)
        for kind, priority, cons, prefs in [templates[i % 3]]
    ]
    workers = [
        Worker(f"w{i:03d}", {"a", "b"}, 4, attributes={"site": ("iu", "tacc")[i % 2], "gpu": 1})
        for i in range(100)
    ]
    result = plan(tasks, workers)
    assert result.classes == 3
    assert 1 <= result.worker_groups <= 2
    assert result.placed == 400


def test_a_big_worker_next_to_a_small_one_under_spread() -> None:
    workers = [Worker("big", {"a"}, 1_000_000), Worker("small", {"a"}, 2)]
    result = plan([Task(f"t{i}", "a") for i in range(10)], workers)
    assert Counter(result.assignments.values()) == {"big": 8, "small": 2}


def test_very_old_tasks_are_placed() -> None:
    tasks = [Task("ancient", "a", submitted_at=-1e15), Task("fresh", "a", priority=9)]
    result = plan(tasks, [Worker("w", {"a"}, 2)], Policy(aging_interval=1.0, now=0.0))
    assert result.assignments == {"ancient": "w", "fresh": "w"}


def test_a_worker_with_another_load_equals_one_made_afresh() -> None:
    w = Worker("w1", ["sleep", "data_staging"], 4, 1, {"site": "iu", "gpu": 2})
    again = w.with_running(3)
    assert again == Worker("w1", ["sleep", "data_staging"], 4, 3, {"site": "iu", "gpu": 2})
    assert (again.profile, again.free, w.running) == (w.profile, 1, 1)
    with pytest.raises(ValueError, match="running must be a non-negative integer"):
        w.with_running(-1)


@pytest.mark.parametrize("perf", [1.0, 2.0])
@pytest.mark.parametrize("speeds", [{}, {"sleep": 0.5}, {"sleep": 1.0, "data_staging": 4}])
def test_a_worker_with_other_speeds_equals_one_made_afresh(
    perf: float, speeds: dict[str, float]
) -> None:
    w = Worker("w1", ["sleep", "data_staging"], 4, 1, {"site": "iu"}, perf, {"sleep": 3.0})
    again = w.with_speeds(speeds)
    fresh = Worker("w1", ["sleep", "data_staging"], 4, 1, {"site": "iu"}, perf, speeds)
    assert again == fresh
    assert (again.timed, again.profile, again.speeds) == (fresh.timed, fresh.profile, speeds)
    with pytest.raises(ValueError, match="speed of 'sleep' must be a number"):
        w.with_speeds({"sleep": 0.0})


def test_a_worker_with_more_places_equals_one_made_afresh() -> None:
    w = Worker("w1", ["sleep"], 4, 1, {"site": "iu"}, 2.0, {"sleep": 3.0})
    assert w.with_slots(6) == Worker("w1", ["sleep"], 6, 1, {"site": "iu"}, 2.0, {"sleep": 3.0})
    assert (w.with_slots(6).profile, w.with_slots(6).timed) == (w.profile, True)
    with pytest.raises(ValueError, match="slots must be a non-negative integer"):
        w.with_slots(-1)


# ---------------------------------------------------------------- a class's oldest tasks


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # reset per example
@given(
    stamps=st.lists(st.sampled_from([0.0, 1.0, 2.5, 7.0]), min_size=1, max_size=20),
    ids=st.permutations([f"t{i:02d}" for i in range(20)]),
    k=st.integers(0, 22),
)
def test_oldest_in_python_matches_oldest_in_numpy(
    stamps: list[float], ids: list[str], k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small class hands out all or none of its tasks in Python: the same ids, in the
    same order, as the vectorised way (oldest first, ties by id)."""
    tasks = [Task(i, "sleep", submitted_at=s) for i, s in zip(ids, stamps, strict=False)]
    (small,) = classes.task_classes(tasks, Policy())
    got = small.oldest(k)
    with monkeypatch.context() as patch:
        patch.setattr(classes, "FEW", 0)
        assert got == small.oldest(k)
    ranked = sorted(tasks, key=lambda t: (t.submitted_at, t.id))
    assert got[0] == [t.id for t in ranked[:k]]
