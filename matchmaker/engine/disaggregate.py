"""Stage 5: turn class-to-group flows back into task-to-worker assignments.

A group's slot arcs say how many tasks each of its workers takes: for spread,
worker i (in name order) takes one task per level whose flow exceeds i; for
binpack, each worker's own arc carries its count. Classes then draw on those
quotas in class order (highest band first), each class handing out its
oldest tasks first. Any such matching is valid: the workers of a group are
interchangeable for every class that sends flow to it.

Cost: O(placed tasks + arcs), whatever the size of the groups.
"""

from __future__ import annotations

from matchmaker.engine.classes import TaskClass, WorkerGroup
from matchmaker.engine.network import Network


def taking(arcs: list[tuple[int, int]], flows: list[int], spread: bool) -> list[tuple[int, int]]:
    """(worker index, tasks) for the workers of a group that take tasks, in worker order:
    as many as the group places, not as many as it has."""
    amounts = [flows[arc] for arc, _ in arcs]
    if spread:
        return [(i, sum(f > i for f in amounts)) for i in range(max(amounts, default=0))]
    quotas: dict[int, int] = {}
    for (_, worker), amount in zip(arcs, amounts, strict=True):
        if amount:
            quotas[worker] = quotas.get(worker, 0) + amount
    return sorted(quotas.items())


def disaggregate(
    classes: list[TaskClass],
    groups: list[WorkerGroup],
    network: Network,
    flows: list[int],
    spread: bool,
) -> tuple[dict[str, str], list[list[str]]]:
    """Assignments (task id -> worker name) and, per class, the ids it left waiting."""
    flow_of = [0] * len(classes)
    used = [False] * len(groups)
    for arc, i, j in network.placement_arcs:
        if flows[arc]:
            flow_of[i] += flows[arc]
            used[j] = True

    pools: list[list[str]] = []
    for j, g in enumerate(groups):
        names: list[str] = []
        if used[j]:  # a group no class sends flow to hands out nothing
            for w, quota in taking(network.slot_arcs[j], flows, spread):
                names.extend([g.workers[w].name] * quota)
        pools.append(names)
    chosen = [c.oldest(k) for c, k in zip(classes, flow_of, strict=True)]

    assignments: dict[str, str] = {}
    handed = [0] * len(classes)
    taken = [0] * len(groups)
    for arc, i, j in network.placement_arcs:
        amount = flows[arc]
        if amount:
            ids = chosen[i][0][handed[i] : handed[i] + amount]
            assignments.update(zip(ids, pools[j][taken[j] : taken[j] + amount], strict=True))
            handed[i] += amount
            taken[j] += amount
    return assignments, [rest for _, rest in chosen]
