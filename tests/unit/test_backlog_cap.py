"""A round considers at most ``classes`` groups: the best-ranked ones, planned as on their own."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker import Policy, Worker, plan
from matchmaker.backlog import Backlog, Key
from matchmaker.book import OpenTask, make_task
from matchmaker.messages import TaskRequest

NOW = 1000.0


def open_task(
    i: int, submitted: float, priority: int, cls: int, not_before: float = 0.0
) -> OpenTask:
    r = TaskRequest(f"t{i:03d}", "sleep", priority=priority, constraints={"gpu": {"<": 10 + cls}})
    t = OpenTask(r, make_task(r, submitted))
    t.not_before = not_before
    return t


def rank(tasks: list[OpenTask], aging: float) -> tuple[float, float, str]:
    """The group's rank, from its oldest task (due or not), written out independently."""
    head = min(tasks, key=lambda t: (t.task.submitted_at, t.task.id)).task
    if aging > 0:
        return (head.submitted_at - head.priority * aging, -head.priority, head.class_key)
    return (-head.priority, head.submitted_at, head.class_key)


def groups_of(held: dict[str, OpenTask]) -> dict[Key, list[OpenTask]]:
    out: dict[Key, list[OpenTask]] = {}
    for t in held.values():
        out.setdefault((t.task.class_key, t.task.priority), []).append(t)
    return out


def expected_groups(held: dict[str, OpenTask], now: float, k: int, aging: float) -> set[Key]:
    """Brute force: the k best-ranked groups that have a due task."""
    due = {
        key: tasks
        for key, tasks in groups_of(held).items()
        if any(t.not_before <= now for t in tasks)
    }
    return set(sorted(due, key=lambda key: rank(due[key], aging))[:k])


def handed_groups(backlog: Backlog, now: float, k: int | None, aging: float) -> set[Key]:
    return {(t.class_key, t.priority) for t in backlog.oldest(now, 3, k, aging)}


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "pop", "round", "retry"]),
            st.integers(0, 59),
            st.integers(0, 300),
        ),
        min_size=10,
        max_size=150,
    ),
    seed=st.integers(0, 100_000),
    k=st.integers(1, 8),
    aging=st.sampled_from([0.0, 60.0]),
)
def test_the_best_ranked_groups_are_considered_through_any_history(
    steps: list[tuple[str, int, int]], seed: int, k: int, aging: float
) -> None:
    """Against a brute-force ranking after adds, pops, retries (backoffs) and rounds."""
    backlog = Backlog()
    held: dict[str, OpenTask] = {}
    now = NOW
    rng = random.Random(seed)
    for i in rng.sample(range(60), 30):  # twelve groups to start with, more than k
        t = open_task(i, rng.uniform(0, 300), priority=i % 3, cls=i % 12)
        backlog.add(t)
        held[t.task.id] = t
    for op, i, when in steps:
        t = open_task(i, float(when), priority=i % 3, cls=i % 12)
        if op == "add" and t.task.id not in held:
            backlog.add(t)
            held[t.task.id] = t
        elif op in ("pop", "retry") and t.task.id in held:
            popped = backlog.pop(t.task.id)
            assert popped is held.pop(t.task.id)
            if op == "retry":  # back with a backoff, as a failed attempt comes back
                popped.not_before = now + when % 7
                backlog.add(popped)
                held[popped.task.id] = popped
        elif op == "round":
            now += 1.0
            assert handed_groups(backlog, now, k, aging) == expected_groups(held, now, k, aging)
    now += 1.0
    assert handed_groups(backlog, now, k, aging) == expected_groups(held, now, k, aging)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    k=st.integers(1, 10),
    slots=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    aging=st.sampled_from([0.0, 30.0]),
)
def test_the_considered_classes_are_placed_as_on_their_own(
    seed: int, k: int, slots: list[int], aging: float
) -> None:
    """The capped round's plan is the uncapped plan of the same groups' tasks, and no group
    of a higher band (priority after aging) is left out for one of a lower band."""
    rng = random.Random(seed)
    held = {}
    for i in range(60):
        t = open_task(i, rng.uniform(800, NOW), rng.randint(0, 9), rng.randint(0, 25))
        if rng.random() < 0.1:
            t.not_before = NOW + 5
        held[t.task.id] = t
    backlog = Backlog()
    for t in held.values():
        backlog.add(t)
    workers = [
        Worker(f"w{n}", {"sleep"}, s, attributes={"gpu": rng.randint(0, 30)})
        for n, s in enumerate(slots)
    ]
    policy = Policy(now=NOW, aging_interval=aging)
    limit = max(sum(w.free for w in workers), 1)
    capped = backlog.oldest(NOW, limit, k, aging)
    chosen = {(t.class_key, t.priority) for t in capped}
    alone = Backlog()
    for t in held.values():
        if (t.task.class_key, t.task.priority) in chosen:
            alone.add(t)
    uncapped = alone.oldest(NOW, limit)
    assert sorted(t.id for t in capped) == sorted(t.id for t in uncapped)
    got, want = plan(capped, workers, policy), plan(uncapped, workers, policy)
    assert got.assignments == want.assignments
    assert {i: u.message for i, u in got.unplaced.items()} == {
        i: u.message for i, u in want.unplaced.items()
    }

    def band(tasks: list[OpenTask]) -> int:
        head = min(tasks, key=lambda t: (t.task.submitted_at, t.task.id)).task
        waited = int((NOW - head.submitted_at) // aging) if aging else 0
        return head.priority + waited

    due = {
        key: tasks
        for key, tasks in groups_of(held).items()
        if any(t.not_before <= NOW for t in tasks)
    }
    assert len(chosen) == min(k, len(due))
    left_out = [band(tasks) for key, tasks in due.items() if key not in chosen]
    if left_out:
        assert min(band(due[key]) for key in chosen) >= max(left_out)


def test_a_flood_of_unique_classes_cannot_starve_older_or_higher_work() -> None:
    backlog = Backlog()
    backlog.add(open_task(0, 500.0, priority=0, cls=0))  # old, low priority
    backlog.add(open_task(1, 900.0, priority=9, cls=1))  # new, high priority
    for i in range(2, 500):  # the flood: newer, a class each
        backlog.add(open_task(i, 600.0 + i, priority=0, cls=i))
    first = {t.id for t in backlog.oldest(NOW, 10, 3)}
    assert first == {"t001", "t000", "t002"}
    for task_id in first:
        backlog.pop(task_id)
    assert {t.id for t in backlog.oldest(NOW, 10, 3)} == {"t003", "t004", "t005"}
    assert len(backlog.oldest(NOW, 10)) == 497  # nothing was lost, only left for later


def test_a_group_in_backoff_comes_back_when_due_or_when_work_arrives() -> None:
    backlog = Backlog()
    backlog.add(open_task(0, 100.0, priority=5, cls=0, not_before=NOW + 10))
    backlog.add(open_task(1, 200.0, priority=1, cls=1))
    backlog.add(open_task(2, 300.0, priority=1, cls=2))
    assert {t.id for t in backlog.oldest(NOW, 10, 1)} == {"t001"}
    assert {t.id for t in backlog.oldest(NOW + 10, 10, 1)} == {"t000"}
    backlog.pop("t000")
    backlog.add(open_task(3, 50.0, priority=4, cls=3, not_before=NOW + 100))
    assert {t.id for t in backlog.oldest(NOW + 20, 10, 1)} == {"t001"}  # t003 set aside
    backlog.add(open_task(4, 400.0, priority=4, cls=3))  # due work joins that group
    assert {t.id for t in backlog.oldest(NOW + 20, 10, 1)} == {"t004"}


def test_a_group_whose_oldest_left_is_ranked_by_its_next_oldest() -> None:
    backlog = Backlog()
    for i, (submitted, cls) in enumerate([(100.0, 0), (300.0, 0), (200.0, 1)]):
        backlog.add(open_task(i, submitted, priority=0, cls=cls))
    assert [t.id for t in backlog.oldest(NOW, 10, 1)] == ["t000", "t001"]
    backlog.pop("t000")  # placed: group 0 now starts at 300, after group 1's 200
    assert [t.id for t in backlog.oldest(NOW, 10, 1)] == ["t002"]
    backlog.add(open_task(3, 50.0, priority=0, cls=0))  # a retry older than everything
    assert [t.id for t in backlog.oldest(NOW, 10, 1)] == ["t003", "t001"]
