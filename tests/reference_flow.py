"""A plain networkx formulation of one round, written independently of matchmaker.engine.

Model (the bipartite placement graph): ``source -> task -> worker -> sink``.
A task (or, aggregated, a class of tasks that share type and constraints,
with supply = its size) has an arc to every worker it is feasible on
(``Task.feasible_on``); a worker's arc to the sink has capacity = its free
slots. The max flow is the most tasks any plan can place.

For spread, the worker's sink arc is split into unit slots: the k-th new task
on a worker costs ``running + k`` (its load after placement). The min-cost
max flow of that graph is the least spread cost of any maximum placement.
Only used on small instances: networkx is exact but slow.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx

from matchmaker.models import Policy, Task, Worker

Node = tuple[str, ...]
SOURCE: Node = ("source",)
SINK: Node = ("sink",)


def feasible_workers(task: Task, workers: Iterable[Worker]) -> list[Worker]:
    """The workers that run the task's type and meet all its constraints."""
    return [w for w in workers if task.feasible_on(w)]


def _groups(tasks: Iterable[Task], aggregate: bool) -> dict[Node, list[Task]]:
    groups: dict[Node, list[Task]] = defaultdict(list)
    for task in tasks:
        key = ("class", task.type, *(c.describe() for c in task.constraints))
        groups[key if aggregate else ("task", task.id)].append(task)
    return groups


def placement_graph(
    tasks: Sequence[Task], workers: Sequence[Worker], *, aggregate: bool = True
) -> nx.DiGraph:
    """The plain bipartite graph with capacities (no costs)."""
    graph = nx.DiGraph()
    graph.add_node(SOURCE)
    graph.add_node(SINK)
    for worker in workers:
        if worker.free > 0:
            graph.add_edge(("worker", worker.name), SINK, capacity=worker.free)
    for node, members in _groups(tasks, aggregate).items():
        graph.add_edge(SOURCE, node, capacity=len(members))
        for worker in feasible_workers(members[0], workers):
            if worker.free > 0:
                graph.add_edge(node, ("worker", worker.name), capacity=len(members))
    return graph


def max_placeable(
    tasks: Sequence[Task], workers: Sequence[Worker], *, aggregate: bool = True
) -> int:
    """The most tasks any plan can place: the max flow of the bipartite graph."""
    if not tasks:
        return 0
    graph = placement_graph(tasks, workers, aggregate=aggregate)
    value: int = nx.maximum_flow_value(graph, SOURCE, SINK)
    return value


def band(task: Task, policy: Policy) -> int:
    """A task's effective priority: one band more per ``aging_interval`` seconds waited."""
    if policy.now is None or policy.aging_interval <= 0:
        return task.priority
    return task.priority + math.floor(
        max(0.0, policy.now - task.submitted_at) / policy.aging_interval
    )


def max_placeable_by_band(
    tasks: Sequence[Task], workers: Sequence[Worker], policy: Policy
) -> dict[int, int]:
    """For each band b present: the most tasks of band >= b any plan can place."""
    bands = {t.id: band(t, policy) for t in tasks}
    return {
        b: max_placeable([t for t in tasks if bands[t.id] >= b], workers)
        for b in sorted(set(bands.values()))
    }


def spread_cost(assignments: Mapping[str, str], workers: Sequence[Worker]) -> int:
    """Sum over workers of ``running + k`` for the k-th newly assigned task."""
    count = Counter(assignments.values())
    by_name = {w.name: w for w in workers}
    return sum(n * by_name[name].running + n * (n + 1) // 2 for name, n in count.items())


def min_spread_assignment(tasks: Sequence[Task], workers: Sequence[Worker]) -> dict[str, str]:
    """A maximum placement of least spread cost (min-cost max flow), task id -> worker name."""
    if not tasks:
        return {}
    graph = nx.DiGraph()
    graph.add_nodes_from([SOURCE, SINK])
    groups = _groups(tasks, aggregate=True)
    for worker in workers:
        for k in range(1, worker.free + 1):
            slot = ("slot", worker.name, str(k))
            graph.add_edge(("worker", worker.name), slot, capacity=1, weight=worker.running + k)
            graph.add_edge(slot, SINK, capacity=1, weight=0)
    for node, members in groups.items():
        graph.add_edge(SOURCE, node, capacity=len(members), weight=0)
        for worker in feasible_workers(members[0], workers):
            if worker.free > 0:
                graph.add_edge(node, ("worker", worker.name), capacity=len(members), weight=0)
    flow = nx.max_flow_min_cost(graph, SOURCE, SINK)
    assignments: dict[str, str] = {}
    for node, members in groups.items():
        queue = iter(sorted(members, key=lambda t: (t.submitted_at, t.id)))
        for target, units in sorted(flow.get(node, {}).items()):
            for _ in range(units):
                assignments[next(queue).id] = target[1]
    return assignments


def min_spread_cost(tasks: Sequence[Task], workers: Sequence[Worker]) -> int:
    """The least spread cost of any maximum placement."""
    return spread_cost(min_spread_assignment(tasks, workers), workers)
