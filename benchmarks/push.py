"""Push mode in the simulation: the real ``matchmaker.plan()`` in rounds.

Model (DESIGN.md, "The round"): a task reaches the scheduler ``latency``
after it arrives and waits in the pending set. A round runs when there is
pending work, some worker has a free slot in the scheduler's view, and
something changed (an arrival, a result, a worker declared failed), at most
once per ``interval``. The round calls ``plan(pending, live workers, policy)``
with each worker's ``running`` = the tasks the scheduler has dispatched to it
and not yet seen a result for; each assignment reaches the worker
``latency`` later and starts at once (the worker never has more than
``slots`` tasks). The result reaches the scheduler ``latency`` after the task
ends and frees the slot.

A crashed worker stops: its running tasks are lost, and tasks dispatched to
it wait in its queue. ``detection`` seconds later (Serf's failure detector)
the scheduler drops the worker and puts all of its in-flight tasks back in
the pending set (attempt + 1).

The wall time of ``plan()`` is measured (scheduler CPU per task) but not
charged to simulated time, so the simulation stays deterministic.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from benchmarks.progress import Progress
from benchmarks.record import RunRecord, check_placement
from benchmarks.scenarios import Scenario
from matchmaker import Policy, Task, Worker, plan

ARRIVE, ROUND, START, COMPLETE, RESULT, FAIL, DETECT = range(7)


@dataclass(frozen=True)
class PushParams:
    interval: float = 0.05
    latency: float = 0.001
    detection: float = 5.0
    strategy: str = "spread"
    aging_interval: float = 60.0


def simulate_push(
    scenario: Scenario, params: PushParams, progress: Progress | None = None
) -> RunRecord:
    wall = time.perf_counter()
    load = scenario.workload
    tasks, arrival, duration = load.tasks, load.arrival, load.duration
    sims = scenario.workers
    n = len(sims)
    record = RunRecord("push", len(tasks))
    index = {t.id: i for i, t in enumerate(tasks)}
    by_name = {w.name: k for k, w in enumerate(sims)}
    base = [Worker(w.name, w.capabilities, w.slots, 0, w.attributes) for w in sims]
    cache: dict[tuple[int, int], Worker] = {}
    inflight: list[set[int]] = [set() for _ in range(n)]
    running_on: list[set[int]] = [set() for _ in range(n)]
    dead = [False] * n
    known = list(range(n))  # workers the scheduler believes alive
    pending: dict[int, Task] = {}
    checks: dict[tuple[str, int], tuple[bool, bool]] = {}

    events: list[tuple[float, int, int, int, int, float]] = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0, c: float = 0.0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, a, b, c))

    for i in range(len(tasks)):
        push(float(arrival[i]) + params.latency, ARRIVE, i)
    for k, w in enumerate(sims):
        record.capacity(0.0, w.slots)
        if w.fails_at is not None:
            push(w.fails_at, FAIL, k)

    round_at: float | None = None
    last_round = -params.interval

    def changed(t: float) -> None:
        nonlocal round_at
        if round_at is None and pending:
            round_at = max(t, last_round + params.interval)
            push(round_at, ROUND)

    def worker_view(k: int) -> Worker:
        count = len(inflight[k])
        if count == 0:
            return base[k]
        key = (k, count)
        view = cache.get(key)
        if view is None:
            w = sims[k]
            view = cache[key] = Worker(w.name, w.capabilities, w.slots, count, w.attributes)
        return view

    def run_round(t: float) -> None:
        nonlocal last_round
        last_round = t
        live = [k for k in known if len(inflight[k]) < sims[k].slots]
        if not live or not pending:
            return
        workers = [worker_view(k) for k in known]
        policy = Policy(strategy=params.strategy, aging_interval=params.aging_interval, now=t)
        started = time.perf_counter()
        result = plan(list(pending.values()), workers, policy)
        spent = time.perf_counter() - started
        record.plan_seconds += spent
        record.round_seconds.append(spent)
        record.rounds += 1
        for task_id, worker_name in result.assignments.items():
            i, k = index[task_id], by_name[worker_name]
            del pending[i]
            inflight[k].add(i)
            push(t + params.latency, START, i, k)

    while events:
        t, _, kind, a, b, c = heapq.heappop(events)
        if kind == ARRIVE:
            pending[a] = tasks[a]
            changed(t)
        elif kind == ROUND:
            round_at = None
            run_round(t)
            if progress:
                progress.update(record.completions)
        elif kind == START:
            if dead[b]:
                continue  # waits in the crashed worker's queue until detection
            running_on[b].add(a)
            record.busy(t, 1)
            push(t + float(duration[a]) / sims[b].speed, COMPLETE, a, b, t)
        elif kind == COMPLETE:
            if dead[b]:
                continue
            running_on[b].discard(a)
            record.busy(t, -1)
            key = (tasks[a].class_key, b)
            check = checks.get(key)
            if check is None:
                check = checks[key] = check_placement(tasks[a], base[b])
            record.complete(a, c, t, b, *check)
            push(t + params.latency, RESULT, a, b)
        elif kind == RESULT:
            inflight[b].discard(a)
            changed(t)
        elif kind == FAIL:
            dead[a] = True
            record.busy(t, -len(running_on[a]))
            record.lost_runs += len(running_on[a])
            record.capacity(t, -sims[a].slots)
            running_on[a].clear()
            push(t + params.detection, DETECT, a)
        elif kind == DETECT:
            known.remove(a)
            for i in sorted(inflight[a]):
                pending[i] = tasks[i]
            inflight[a].clear()
            changed(t)
    record.wall_seconds = time.perf_counter() - wall
    return record
