"""Push mode in the simulation: the real ``matchmaker.plan()``, in event-driven rounds.

Messages (DESIGN.md, "The round"). Every message crosses the broker: a hop
to it, the broker's per-message cost ``broker``, a hop from it. A request
reaches the scheduler ``2 * latency + broker`` after it is submitted; a
dispatch reaches its worker as long after its round ends, and a result the
scheduler as long after the task ends. A worker starts a dispatch at once
(the scheduler never gives it more than ``slots`` tasks, ``slots + k`` when
pipelining, below).

The scheduler is one loop that does one thing at a time, and pays for each:
taking in a request or a result costs ``intake``; a turn that runs a round
costs ``plan()`` plus the rest of the turn (``TURN_BASE + TURN_PER_WORKER *
workers``: the commit, the events, the views of the workers) plus
``dispatch`` per task placed, and its dispatches leave when it ends; a turn
with nothing to place (results only, or no free slot) costs ``BARE_TURN``.

When turns run (``rounds="event"``, the service's policy,
``matchmaker.scheduler.clock``): something new (a request, a result, a worker
declared failed) makes a turn due, and it runs once the loop is idle and the
batch window since the last turn has passed: the service's own ``Window``,
which grows with the messages that turn took in and its cost, towards
``batch_window`` times the cost, at most ``interval`` (its
``round_interval``, 15 ms). A turn that took in one message leaves no window,
so a request that finds an eligible slot free is placed at once, and so is
the next task when a result frees a slot; when work comes faster than turns
complete, what arrives waits for the next turn, and the batch and its window
grow with the load. Intake never holds a turn back more than ``interval`` after the
first change it is to see. ``rounds="clock"`` is the earlier policy: at most
one round per ``interval``. An immediate placement is a full round:
``plan()`` over everything the loop has taken in, so it keeps every
guarantee of a round (no lower-priority task takes a slot that a pending
higher-priority one could use); what it cannot see is what is still on its
way to the scheduler.

Each round hands ``plan()`` what the service's backlog hands it: for each
(class, priority) group, its oldest tasks, at most as many as there are
free slots. ``plan()`` costs, with ``round_cost="model"`` (the default, so
runs are deterministic), ``PLAN_BASE + PLAN_PER_WORKER * workers +
PLAN_PER_LOG * log2(1 + tasks)``; with ``round_cost="measured"``, its own
wall time. Every constant of the loop is fitted to the real scheduler's turns
(``python -m benchmarks.roundcost``: its loop on the in-memory transport,
cold between trials as between arrivals).

Speeds (``speeds``): ``advertised`` gives each worker its true speed as
``perf`` and learns per-type rates from results on top
(``matchmaker.rates.ServiceRates``); ``learned`` starts every worker at 1.0
and learns; ``ignored`` leaves every worker at 1.0 (the speed-blind plan).

A crashed worker stops: its running tasks are lost, and tasks dispatched to
it wait in its queue. ``detection`` seconds later the scheduler drops the
worker and puts all of its in-flight tasks back in the pending set. By
default that is the broker's own speed (``BROKER_DETECTION``: the consumer
event of the closed connection is one message leg to the scheduler,
``matchmaker.liveness``, the same event that requeues pull's messages);
``--detection 5`` is Serf alone (the plugin off).

Pipelining (``pipeline`` = the service's ``pipeline_depth`` k): a worker's
view has ``slots + k`` places, so a round may hand it up to k tasks beyond
its slots; the worker runs at most ``slots`` at once and starts the next of
its own queue (oldest first) the moment one ends, without a round trip. A
task so queued is committed to that worker: it cannot move to one that frees
sooner.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

from benchmarks.progress import Progress
from benchmarks.record import RunRecord, check_placement
from benchmarks.scenarios import Scenario
from matchmaker import Policy, Task, Worker, plan
from matchmaker.rates import ServiceRates
from matchmaker.scheduler.clock import BATCH, Window

ARRIVE, ROUND, START, COMPLETE, RESULT, FAIL, DETECT = range(7)

# The loop's costs in seconds, the medians of eight fits (python -m benchmarks.roundcost).
PLAN_BASE = 77e-6
PLAN_PER_WORKER = 0.39e-6
PLAN_PER_LOG = 39e-6
TURN_BASE = 467e-6
TURN_PER_WORKER = 0.0  # the turn remakes only the views of workers whose load moved
BARE_TURN = 321e-6
INTAKE = 28e-6
DISPATCH = 0.0  # a request's intake and dispatch together cost no more than a result's intake
BROKER_DETECTION = 2 * 0.0003 + 0.0001  # a consumer event's leg: hop, broker, hop
ROUND_POLICIES = ("event", "clock")
ROUND_COSTS = ("model", "measured")
SPEED_MODES = ("advertised", "learned", "ignored")


@dataclass(frozen=True)
class PushParams:
    interval: float = 0.015
    batch_window: float = BATCH
    latency: float = 0.0003
    broker: float = 0.0001
    intake: float = INTAKE
    dispatch: float = DISPATCH
    detection: float = BROKER_DETECTION
    strategy: str = "spread"
    aging_interval: float = 60.0
    rounds: str = "event"
    round_cost: str = "model"
    speeds: str = "advertised"
    pipeline: int = 0


def modelled_plan(tasks: int, workers: int) -> float:
    """Seconds one call of ``plan()`` takes, by the fitted model."""
    return PLAN_BASE + PLAN_PER_WORKER * workers + PLAN_PER_LOG * math.log2(1 + tasks)


class Backlog:
    """Pending tasks by (class key, priority), oldest first, as the service's backlog."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.groups: dict[tuple[str, int], list[tuple[float, int]]] = {}
        self.pending: set[int] = set()

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, i: int) -> None:
        t = self.tasks[i]
        self.pending.add(i)
        heapq.heappush(self.groups.setdefault((t.class_key, t.priority), []), (t.submitted_at, i))

    def take(self, limit: int) -> list[int]:
        """The oldest ``limit`` of every group, out of the backlog (put back what stays)."""
        out: list[int] = []
        for heap in self.groups.values():
            taken = 0
            while heap and taken < limit:
                _, i = heapq.heappop(heap)
                if i in self.pending:
                    self.pending.discard(i)
                    out.append(i)
                    taken += 1
        return out


def simulate_push(
    scenario: Scenario, params: PushParams, progress: Progress | None = None
) -> RunRecord:
    if params.rounds not in ROUND_POLICIES or params.round_cost not in ROUND_COSTS:
        raise ValueError(f"rounds must be one of {ROUND_POLICIES}, round_cost of {ROUND_COSTS}")
    if params.speeds not in SPEED_MODES:
        raise ValueError(f"speeds must be one of {', '.join(SPEED_MODES)}")
    wall = time.perf_counter()
    load = scenario.workload
    tasks, arrival, duration = load.tasks, load.arrival, load.duration
    sims = scenario.workers
    n = len(sims)
    record = RunRecord("push", len(tasks))
    index = {t.id: i for i, t in enumerate(tasks)}
    by_name = {w.name: k for k, w in enumerate(sims)}
    rates = ServiceRates()
    learn = params.speeds != "ignored"
    perf = [w.speed if params.speeds == "advertised" else 1.0 for w in sims]
    for w, p in zip(sims, perf, strict=True):
        rates.advertise(w.name, p)
    version = [0] * n
    cache: dict[tuple[int, int, int], Worker] = {}
    inflight: list[set[int]] = [set() for _ in range(n)]
    running_on: list[set[int]] = [set() for _ in range(n)]
    queued: list[list[int]] = [[] for _ in range(n)]  # delivered, waiting for a free slot
    extra = params.pipeline
    dead = [False] * n
    known = list(range(n))  # workers the scheduler believes alive
    backlog = Backlog(tasks)
    checks: dict[tuple[str, int], tuple[bool, bool]] = {}
    leg = 2 * params.latency + params.broker  # one message, sender -> broker -> receiver

    events: list[tuple[float, int, int, int, int, float]] = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0, c: float = 0.0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, a, b, c))

    for i in range(len(tasks)):
        push(float(arrival[i]) + leg, ARRIVE, i)
    for k, w in enumerate(sims):
        record.capacity(0.0, w.slots)
        if w.fails_at is not None:
            push(w.fails_at, FAIL, k)

    busy_until = 0.0  # the loop is busy until then
    window = Window(params.interval, params.batch_window)  # the service's, per turn
    carried = 0  # messages taken in since the last turn
    round_at: float | None = None
    first_change: float | None = None
    last_round = -math.inf

    def take_in(t: float) -> None:
        """The loop takes in one message (request, result, failure) that arrived at t."""
        nonlocal busy_until, round_at, first_change, carried
        carried += 1
        busy_until = max(busy_until, t) + params.intake
        if first_change is None:
            first_change = t
        if round_at is None:
            round_at = max(t, busy_until)
            if params.rounds == "clock":
                round_at = max(round_at, last_round + params.interval)
            push(round_at, ROUND)

    def worker_view(k: int) -> Worker:
        count = len(inflight[k])
        key = (k, count, version[k])
        view = cache.get(key)
        if view is None:
            w = sims[k]
            speeds = rates.speeds(w.name) if learn else {}
            places = w.slots + extra if w.slots else 0
            view = Worker(w.name, w.capabilities, places, count, w.attributes, perf[k], speeds)
            cache[key] = view
        return view

    def run_round(t: float) -> None:
        nonlocal last_round, busy_until, first_change, carried
        last_round, took, carried = t, carried, 0
        first_change = None
        free = sum(max(0, sims[k].slots + extra - len(inflight[k])) for k in known)
        if not free or not backlog:
            busy_until = max(busy_until, t + BARE_TURN)
            window.done(t, t + BARE_TURN, took)
            return
        handed = backlog.take(free)
        workers = [worker_view(k) for k in known]
        policy = Policy(strategy=params.strategy, aging_interval=params.aging_interval, now=t)
        started = time.perf_counter()
        result = plan([tasks[i] for i in handed], workers, policy)
        spent = time.perf_counter() - started
        if params.round_cost == "model":
            spent = modelled_plan(len(handed), len(workers))
        record.plan_seconds += spent
        record.round_seconds.append(spent)
        record.rounds += 1
        rest = TURN_BASE + TURN_PER_WORKER * len(workers)
        done = t + spent + rest + params.dispatch * result.placed
        busy_until = max(busy_until, done)
        window.done(t, done, took)
        for i in handed:
            if tasks[i].id not in result.assignments:
                backlog.add(i)
        for task_id, worker_name in result.assignments.items():
            i, k = index[task_id], by_name[worker_name]
            inflight[k].add(i)
            push(done + leg, START, i, k)

    while events:
        t, _, kind, a, b, c = heapq.heappop(events)
        if kind == ARRIVE:
            backlog.add(a)
            take_in(t)
        elif kind == ROUND:
            cap = (first_change if first_change is not None else t) + params.interval
            ready = max(busy_until, window.at) if params.rounds == "event" else busy_until
            if t < ready and t < cap:
                round_at = min(ready, cap)
                push(round_at, ROUND)
                continue
            round_at = None
            run_round(t)
            if progress:
                progress.update(record.completions)
        elif kind == START:
            if dead[b]:
                continue  # waits in the crashed worker's queue until detection
            if len(running_on[b]) >= sims[b].slots:
                queued[b].append(a)  # pipelined: starts when a slot of its own frees
                continue
            running_on[b].add(a)
            record.busy(t, 1)
            push(t + float(duration[a]) / sims[b].speed, COMPLETE, a, b, t)
        elif kind == COMPLETE:
            if dead[b]:
                continue
            running_on[b].discard(a)
            record.busy(t, -1)
            if queued[b]:
                push(t, START, queued[b].pop(0), b)
            key = (tasks[a].class_key, b)
            check = checks.get(key)
            if check is None:
                check = checks[key] = check_placement(tasks[a], worker_view(b))
            record.complete(a, c, t, b, *check)
            push(t + leg, RESULT, a, b, t - c)
        elif kind == RESULT:
            inflight[b].discard(a)
            if learn:
                rates.observe(sims[b].name, tasks[a].type, c)
                version[b] += 1
            take_in(t)
        elif kind == FAIL:
            dead[a] = True
            record.busy(t, -len(running_on[a]))
            record.lost_runs += len(running_on[a])
            record.capacity(t, -sims[a].slots)
            running_on[a].clear()
            queued[a].clear()  # back in the pending set with the rest, at detection
            push(t + params.detection, DETECT, a)
        elif kind == DETECT:
            known.remove(a)
            for i in sorted(inflight[a]):
                backlog.add(i)
            inflight[a].clear()
            take_in(t)
    record.wall_seconds = time.perf_counter() - wall
    return record
