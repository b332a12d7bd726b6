"""``python -m benchmarks.flood``: round time under a flood of unique task classes.

A backlog of ``--tasks`` pending tasks, each with a constraint of its own
(``gpu < 1000 + i``: every one a class of its own, every one placeable; with
``--unplaceable``, ``nonce = i``, which no worker has), and
``--workers`` workers of ``benchmarks.workload``. Each round is what the
scheduler's round does: the backlog hands over the due tasks (at most the free
slots per group, and with ``--classes`` at most that many groups), then
``plan()``; the placed tasks leave the backlog and the workers' slots free
again. Reported per cap: the first round (which, capped, builds the rank heap)
and the min / median / max of the others, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.workload import NOW, make_workers
from matchmaker import plan
from matchmaker.backlog import Backlog
from matchmaker.book import OpenTask, make_task
from matchmaker.messages import TaskRequest
from matchmaker.models import Policy

MIN_CONSIDERED = 64  # as the service's round


def flooded(count: int, placeable: bool = True) -> Backlog:
    backlog = Backlog()
    for i in range(count):
        constraint = {"gpu": {"<": 1000 + i}} if placeable else {"nonce": i}
        r = TaskRequest(f"flood-{i}", "job_submission", priority=i % 3, constraints=constraint)
        backlog.add(OpenTask(r, make_task(r, NOW - count + i)))
    return backlog


def rounds(
    count: int, workers: int, classes: int | None, n: int, placeable: bool = True
) -> list[float]:
    backlog = flooded(count, placeable)
    pool = make_workers(workers)
    policy = Policy("spread", 1, 60.0, 1, NOW)
    free = sum(w.free for w in pool)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        tasks = backlog.oldest(NOW, max(free, MIN_CONSIDERED), classes, policy.aging_interval)
        result = plan(tasks, pool, policy)
        times.append(1000 * (time.perf_counter() - started))
        for task_id in result.assignments:
            backlog.pop(task_id)
    return times


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--classes", type=int, action="append", help="caps to try (0: none)")
    p.add_argument("--unplaceable", action="store_true", help="constraints no worker meets")
    args = p.parse_args()
    shape = "unplaceable" if args.unplaceable else "placeable"
    for cap in args.classes or [0, 1000]:
        times = rounds(args.tasks, args.workers, cap or None, args.rounds, not args.unplaceable)
        rest = times[1:] or times
        print(
            f"classes cap {cap or 'none'}: {args.tasks} {shape} unique-class tasks, "
            f"{args.workers} workers; first round {times[0]:.1f} ms, then "
            f"{min(rest):.1f} / {statistics.median(rest):.1f} / {max(rest):.1f} ms"
        )


if __name__ == "__main__":
    main()
