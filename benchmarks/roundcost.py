"""``python -m benchmarks.roundcost``: what one turn of the real scheduler loop costs, and the
cost model the simulation charges (``benchmarks.push``), fitted to it.

The real ``Scheduler`` (its SQLite ledger, its commits, ``plan()``) runs on the
in-memory transport (``matchmaker.scheduler.memory``), on ``W`` idle workers
of 4 slots. One trial hands it ``N`` requests at once, after a pause as long
as the service's round interval (so every window is open and the loop starts
cold, as it does between arrivals), and times the steps until all ``N`` are
dispatched: the turn (intake, commit, events, ``plan()``, dispatch). Inside
it, ``plan()``'s own time. Then the ``N`` results come back, together, and
the turn that takes them in is timed too. The median of ``--trials`` trials
per size is fitted, by least squares of the relative error, to

    plan(N, W)        = a + b W + c log2(1 + N)
    turn(N, W) - plan = A + B W + E N
    results(N)        = k + r N

which become the simulation's constants: ``(a, b, c)`` its ``plan()`` model,
``(A, B)`` the rest of a round's turn (commit, events, bookkeeping), ``r``
its ``intake`` per message, ``E - r`` its ``dispatch`` per task placed, and
``k`` a turn that takes in results with nothing to place. What the fit leaves
out is the broker and the network, which the simulation charges as its own
legs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import matchmaker.scheduler.rounds as rounds_module
from benchmarks.loop import Members
from matchmaker.config import Config
from matchmaker.messages import TaskRequest, TaskResult, encode, encode_batch
from matchmaker.models import Worker
from matchmaker.scheduler.memory import FakeClock, MemoryBroker, MemoryTransport
from matchmaker.service import Scheduler
from matchmaker.wire.broker import REQUESTS, RESULTS

SLOTS = 4
WORKERS = (2, 16, 64, 256, 1000)
TASKS = (1, 4, 16, 64, 256, 1000)
MAX_STEPS = 10_000


@contextmanager
def timed_plan(spent: list[float]) -> Iterator[None]:
    """``plan()`` as the loop calls it, with each call's wall time appended to ``spent``."""
    inner = rounds_module.plan

    def timing(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    rounds_module.plan = timing
    try:
        yield
    finally:
        rounds_module.plan = inner


def _dispatched(broker: MemoryBroker) -> int:
    return sum(len(ids) for sent in broker.dispatches.values() for ids, _ in sent)


def _steps_until(scheduler: Scheduler, done: Callable[[], bool]) -> float:
    """Seconds of ``step()`` until ``done()``."""
    started = time.perf_counter()
    for _ in range(MAX_STEPS):
        scheduler.step()
        if done():
            return time.perf_counter() - started
    raise RuntimeError(f"the loop did not finish a trial in {MAX_STEPS} steps")


def measure_size(workers: int, tasks: int, trials: int, pause: float) -> dict[str, Any]:
    """Median turn, ``plan()`` and result-intake seconds for ``tasks`` requests on ``workers``."""
    turn: list[float] = []
    planned: list[float] = []
    results: list[float] = []
    with tempfile.TemporaryDirectory() as state:
        broker = MemoryBroker(FakeClock())
        transport: MemoryTransport | None = None

        def connect(stopping: Callable[[], bool]) -> MemoryTransport:
            nonlocal transport
            transport = broker(stopping)
            return transport

        config = Config(state_dir=Path(state), authenticated_senders=False)
        scheduler = Scheduler(config, connector=connect)
        scheduler.inventory = Members(
            [Worker(f"w{n:04d}", ["sleep"], SLOTS) for n in range(workers)]
        )
        scheduler.lead(connect(lambda: False))
        made = 0
        try:
            for trial in range(trials + 1):  # the first warms the process up and is dropped
                time.sleep(pause)
                ids = [f"t{made + i:07d}" for i in range(tasks)]
                made += tasks
                for task_id in ids:
                    broker.send(REQUESTS, encode(TaskRequest(task_id, "sleep")), "client")
                spent: list[float] = []
                with timed_plan(spent):
                    seconds = _steps_until(scheduler, lambda: _dispatched(broker) >= tasks)
                if trial:
                    turn.append(seconds)
                    planned.append(sum(spent))
                by_worker: dict[str, list[bytes]] = {}
                for worker, batches in broker.dispatches.items():
                    for task_ids, _ in batches:
                        for task_id in task_ids:
                            now = time.time()
                            result = TaskResult(task_id, 1, worker, "succeeded", now, now)
                            by_worker.setdefault(worker, []).append(encode(result))
                broker.dispatches.clear()
                for worker, bodies in by_worker.items():
                    broker.send(RESULTS, encode_batch("results", bodies), f"mm-worker-{worker}")
                time.sleep(pause)
                seconds = _steps_until(scheduler, lambda: not any(scheduler.book.sizes()))
                if trial:
                    results.append(seconds)
        finally:
            scheduler.drop()
            scheduler.ledger.close()
    return {
        "workers": workers,
        "tasks": tasks,
        "turn": statistics.median(turn),
        "plan": statistics.median(planned),
        "results": statistics.median(results),
    }


def fit(points: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The least-squares constants of the three models (module docstring)."""
    w = np.array([p["workers"] for p in points], dtype=np.float64)
    n = np.array([p["tasks"] for p in points], dtype=np.float64)
    plan = np.array([p["plan"] for p in points], dtype=np.float64)
    turn = np.array([p["turn"] for p in points], dtype=np.float64)
    results = np.array([p["results"] for p in points], dtype=np.float64)
    ones = np.ones_like(w)

    def solve(columns: list[np.ndarray], y: np.ndarray) -> list[float]:
        """Least squares of the relative error: a one-task turn counts as much as a big one."""
        scale = 1.0 / y
        solution, *_ = np.linalg.lstsq(np.column_stack(columns) * scale[:, None], y * scale)
        return [float(x) for x in solution]

    a, b, c = solve([ones, w, np.log2(1 + n)], plan)
    big_a, big_b, e = solve([ones, w, n], turn - plan)
    k, r = solve([ones, n], results)
    return {
        "plan_base": a,
        "plan_per_worker": b,
        "plan_per_log": c,
        "turn_base": big_a,
        "turn_per_worker": big_b,
        "intake": r,
        "dispatch": max(0.0, e - r),
        "result_turn": k,
    }


def modelled_turn(model: dict[str, float], tasks: int, workers: int) -> float:
    """A turn that places ``tasks`` requests on ``workers``, by the fitted model."""
    plan = (
        model["plan_base"]
        + model["plan_per_worker"] * workers
        + model["plan_per_log"] * math.log2(1 + tasks)
    )
    rest = model["turn_base"] + model["turn_per_worker"] * workers
    return plan + rest + (model["intake"] + model["dispatch"]) * tasks


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.roundcost", description=__doc__)
    p.add_argument("--trials", type=int, default=9, help="trials per size (median)")
    p.add_argument(
        "--pause", type=float, default=0.015, help="seconds between trials (a round interval)"
    )
    p.add_argument("--out", type=Path, default=Path("results/roundcost.json"))
    args = p.parse_args(argv)
    if args.trials < 1 or not args.pause >= 0:
        p.error("--trials must be at least 1 and --pause not negative")
    points = []
    print(f"{'workers':>7} {'tasks':>5} {'turn ms':>8} {'plan ms':>8} {'results ms':>10}")
    for workers in WORKERS:
        for tasks in TASKS:
            if tasks > SLOTS * workers:
                continue
            point = measure_size(workers, tasks, args.trials, args.pause)
            points.append(point)
            print(
                f"{workers:>7} {tasks:>5} {point['turn'] * 1e3:>8.3f} "
                f"{point['plan'] * 1e3:>8.3f} {point['results'] * 1e3:>10.3f}"
            )
    model = fit(points)
    errors = [modelled_turn(model, p["tasks"], p["workers"]) / p["turn"] - 1 for p in points]
    print("fit (seconds): " + ", ".join(f"{k} {v:.3g}" for k, v in model.items()))
    print(
        f"turn model against the medians: {min(errors):+.0%} to {max(errors):+.0%} "
        f"over {len(points)} sizes"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"points": points, "model": model}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
