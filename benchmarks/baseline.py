"""Two points of comparison for ``plan()``: a greedy first-fit and a networkx reference.

Greedy first-fit: tasks by priority (highest first), then oldest first; each
goes to the first worker, in list order, that runs its type, meets its
constraints and has a free slot. It never moves an earlier choice, so it can
place fewer tasks than the max flow. Cost O(m + C * n) with a pointer per class.

networkx reference: the plain, unaggregated formulation. One node per task
and per worker; source -> task (capacity 1), task -> every feasible worker
(capacity 1), worker -> sink (capacity = free slots). ``maximum_flow`` (the
default preflow-push) gives the most tasks any plan can place. This is what a
scheduler without equivalence classes solves each round; it ignores costs, so
it is a lower bound on the work of a min-cost reference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from matchmaker.models import Task, Worker


def greedy_first_fit(tasks: Sequence[Task], workers: Sequence[Worker]) -> int:
    """How many tasks greedy first-fit places."""
    free = [w.free for w in workers]
    feasible: dict[str, list[int]] = {}
    cursor: dict[str, int] = {}
    placed = 0
    for task in sorted(tasks, key=lambda t: (-t.priority, t.submitted_at, t.id)):
        key = task.class_key
        if key not in feasible:
            feasible[key] = [i for i, w in enumerate(workers) if task.feasible_on(w)]
            cursor[key] = 0
        options, at = feasible[key], cursor[key]
        while at < len(options) and free[options[at]] == 0:
            at += 1
        cursor[key] = at
        if at < len(options):
            free[options[at]] -= 1
            placed += 1
    return placed


def bipartite_arcs(tasks: Sequence[Task], workers: Sequence[Worker]) -> int:
    """Task -> worker arcs of the unaggregated graph (workers with free slots only)."""
    per_class: dict[str, int] = {}
    total = 0
    for task in tasks:
        key = task.class_key
        if key not in per_class:
            per_class[key] = sum(1 for w in workers if w.free and task.feasible_on(w))
        total += per_class[key]
    return total


def networkx_reference(tasks: Sequence[Task], workers: Sequence[Worker]) -> dict[str, Any]:
    """Build and solve the unaggregated max-flow with networkx; times and placed count."""
    import networkx as nx

    started = time.perf_counter()
    graph = nx.DiGraph()
    feasible: dict[str, list[str]] = {}
    for w in workers:
        if w.free:
            graph.add_edge(("w", w.name), "sink", capacity=w.free)
    for task in tasks:
        key = task.class_key
        if key not in feasible:
            feasible[key] = [w.name for w in workers if w.free and task.feasible_on(w)]
        node = ("t", task.id)
        graph.add_edge("source", node, capacity=1)
        graph.add_edges_from(((node, ("w", name)) for name in feasible[key]), capacity=1)
    built = time.perf_counter()
    value = nx.maximum_flow_value(graph, "source", "sink") if feasible else 0
    solved = time.perf_counter()
    return {
        "placed": int(value),
        "build_s": built - started,
        "solve_s": solved - built,
        "arcs": graph.number_of_edges(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.baseline TASKS WORKERS``: the reference's JSON on stdout."""
    import json
    import sys

    from benchmarks.workload import make_tasks, make_workers

    args = list(sys.argv[1:] if argv is None else argv)
    tasks, workers = make_tasks(int(args[0])), make_workers(int(args[1]))
    print(json.dumps(networkx_reference(tasks, workers)))


if __name__ == "__main__":
    main()
