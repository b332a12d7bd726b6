"""The backlog hands a round the oldest tasks of each group, and the plan is as good."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker import Policy, Worker, plan
from matchmaker.backlog import Backlog
from matchmaker.book import OpenTask, make_task
from matchmaker.messages import TaskRequest


def open_task(i: int, submitted: float, priority: int = 0, site: str | None = None) -> OpenTask:
    constraints = {"site": site} if site else {}
    r = TaskRequest(f"t{i:03d}", "sleep", priority=priority, constraints=constraints)
    return OpenTask(r, make_task(r, submitted))


def test_groups_stay_oldest_first_when_old_work_comes_back() -> None:
    backlog = Backlog()
    tasks = [open_task(i, float(i)) for i in range(10)]
    for t in tasks[3:]:
        backlog.add(t)
    for t in reversed(tasks[:3]):  # retries of older tasks arrive last, newest first
        backlog.add(t)
    assert [t.id for t in backlog.oldest(100.0, limit=4)] == ["t000", "t001", "t002", "t003"]
    backlog.pop("t001")
    backlog.pop("t002")
    tasks[2].not_before = 200.0  # back, with a backoff
    backlog.add(tasks[2])
    assert [t.id for t in backlog.oldest(100.0, limit=3)] == ["t000", "t003", "t004"]
    assert len(backlog) == 9 and "t001" not in backlog
    assert not backlog.backoff_ended(199.0)
    assert backlog.backoff_ended(200.0) and not backlog.backoff_ended(300.0)


def check_oldest_first(backlog: Backlog, held: dict[str, OpenTask], limit: int | None) -> None:
    """Against sorting everything: the same tasks, per group, oldest first."""
    got = [t.id for t in backlog.oldest(100.0, limit)]
    want = []
    for priority in (0, 1):
        group = sorted(
            (t for t in held.values() if t.task.priority == priority),
            key=lambda t: (t.task.submitted_at, t.task.id),
        )
        want.append([t.task.id for t in group][:limit])
    assert sorted(got) == sorted(i for g in want for i in g)
    for g in want:
        assert [i for i in got if i in set(g)] == g
    assert len(backlog) == len(held)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "pop", "round"]), st.integers(0, 29), st.integers(0, 20)
        ),
        max_size=120,
    ),
    limit=st.one_of(st.none(), st.integers(0, 12)),
)
def test_any_order_of_arrivals_departures_and_rounds_comes_out_oldest_first(
    steps: list[tuple[str, int, int]], limit: int | None
) -> None:
    """Rounds in between settle returned tasks into runs; every round sees them in order."""
    backlog = Backlog()
    held: dict[str, OpenTask] = {}
    for op, i, age in steps:
        t = open_task(i, float(age), priority=i % 2)
        if op == "add" and t.task.id not in held:
            backlog.add(t)
            held[t.task.id] = t
        elif op == "pop" and t.task.id in held:
            assert backlog.pop(t.task.id) is held.pop(t.task.id)
        elif op == "round":
            check_oldest_first(backlog, held, limit)
    check_oldest_first(backlog, held, limit)


def test_returns_after_returns_stay_in_a_few_runs() -> None:
    """A thousand single retries, a round after each: runs stay O(log n), order holds."""
    backlog = Backlog()
    newest = open_task(5000, 5000.0)
    backlog.add(newest)
    for i in range(1000):
        backlog.add(open_task(i, float(1000 - i)))  # each older than all before it
        assert backlog.oldest(1e9, limit=1)[0].id == f"t{i:03d}"
        group = next(iter(backlog.groups.values()))
        assert len(group.runs) <= 11
    assert [t.id for t in backlog.oldest(1e9)][:3] == ["t999", "t998", "t997"]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    slots=st.lists(st.integers(0, 3), min_size=1, max_size=4),
)
def test_limited_to_the_free_slots_the_plan_is_as_good(seed: int, slots: list[int]) -> None:
    """Same count, same bands placed (ties between equal bands may break differently)."""
    rng = random.Random(seed)
    backlog = Backlog()
    for i in range(40):
        backlog.add(open_task(i, rng.uniform(0, 50), rng.choice([0, 5]), rng.choice([None, "iu"])))
    workers = [
        Worker(f"w{k}", {"sleep"}, s, attributes={"site": rng.choice(["iu", "tacc"])})
        for k, s in enumerate(slots)
    ]
    policy = Policy(now=60.0, aging_interval=30.0)
    free = sum(w.free for w in workers)
    everything = backlog.oldest(60.0)
    full = plan(everything, workers, policy)
    limited = plan(backlog.oldest(60.0, limit=free), workers, policy)
    band = {t.id: t.priority + int((60.0 - t.submitted_at) // 30.0) for t in everything}
    assert sorted(band[i] for i in limited.assignments) == sorted(band[i] for i in full.assignments)
