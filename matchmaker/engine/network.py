"""Stage 3: the flow network of a round (after Quincy and Firmament, with slots).

Nodes: one per task class (supply = its size), one per worker group, one
``unscheduled`` node and the sink (demand = all tasks). Arcs:

- class -> group, for every eligible group with free slots: capacity
  min(class size, the group's free slots), cost ``P - bonus * matches +
  U * tier``, where P is the largest possible preference bonus (so costs
  stay >= 0), ``tier`` says how much slower the group runs the class's type
  than the fastest group the class could use (``engine.speed``: 0 for the
  fastest, +1 per factor of 1.25) and ``U = P + S + 1``;
- class -> unscheduled: capacity = class size, cost = the waiting penalty
  ``W + step * band``;
- unscheduled -> sink: capacity = all tasks, cost 0;
- group -> sink, the strategy's slot arcs (costs in [0, S]):
  spread: level k (k = 1..K) of a group of g workers has capacity g and cost
  ``running + k``, the load a worker reaches with its k-th task, so the
  convex sum balances load; binpack: one arc per worker with capacity = its
  free slots and cost = its rank (open and fullest workers first), so a
  worker fills before the next opens.

A task's expected completion is its run time on the worker it gets (a free
slot starts it at once), so speed is what the costs compare first among the
slots a task may take; preferences and the strategy decide among equally
fast workers. When every worker has the same speed every tier is 0 and the
network is the plain one.

Why the constants make the answer right. Every placement arc costs at most
``A = P + U * T`` (T the largest tier of the round), every slot arc at most
S. An augmenting cycle that places one more task passes the sink once and at
most C placement arcs forward, so its cost is at most ``C * A + S - W``;
with ``W > C * A + S`` it is negative, hence the optimum places the maximum
number of tasks. A cycle that swaps an unplaced higher band for a placed
lower band on the same worker costs ``-step * (band gap) + A``; with
``step > A`` it is negative, hence no lower band keeps a slot a higher band
could use. Moving one placed task to a slot of a faster tier that the round
leaves free changes its preference cost by at most P and its slot cost by
at most S, and saves at least U: negative, hence no task runs a tier slower
than an eligible slot left free. Costs stay below ``step * (MAX_BAND + 1) +
W``, about 10^12 for 10^4 workers under binpack, far inside int64.

Size: C + G + 2 nodes and at most C * G + C + G * K + 1 arcs.
"""

from __future__ import annotations

from dataclasses import dataclass

from matchmaker.engine.classes import TaskClass, WorkerGroup
from matchmaker.engine.feasibility import preference_matches
from matchmaker.engine.speed import group_speed, tier
from matchmaker.models import Policy


@dataclass
class Network:
    """The arcs and supplies handed to the solver, and what each arc means."""

    num_nodes: int
    tails: list[int]
    heads: list[int]
    capacities: list[int]
    costs: list[int]
    supplies: list[int]
    placement_arcs: list[tuple[int, int, int]]  # (arc, class index, group index)
    slot_arcs: list[list[tuple[int, int]]]  # per group: (arc, level or worker index)


def slot_levels(group: WorkerGroup, demand: int) -> int:
    """How many spread levels a group needs: never more than its free slots."""
    return min(group.free, -(-demand // group.size))


def build(
    classes: list[TaskClass],
    groups: list[WorkerGroup],
    eligible: list[list[int]],
    policy: Policy,
) -> Network:
    num_classes, num_groups = len(classes), len(groups)
    unscheduled, sink = num_classes + num_groups, num_classes + num_groups + 1
    total = sum(c.size for c in classes)

    max_prefs = max((len(c.sample.preferences) for c in classes), default=0)
    top = policy.preference_bonus * max_prefs

    tails: list[int] = []
    heads: list[int] = []
    caps: list[int] = []
    costs: list[int] = []

    def arc(tail: int, head: int, capacity: int, cost: int) -> int:
        tails.append(tail)
        heads.append(head)
        caps.append(capacity)
        costs.append(cost)
        return len(tails) - 1

    placement_arcs = []
    placement_tiers: list[int] = []
    demand = [0] * num_groups
    for i, c in enumerate(classes):
        open_groups = [j for j in eligible[i] if groups[j].free]
        speeds = {j: group_speed(groups[j], c.sample.type) for j in open_groups}
        fastest = max(speeds.values(), default=1.0)
        for j in open_groups:
            g = groups[j]
            cost = top - policy.preference_bonus * preference_matches(c, g)
            placement_arcs.append((arc(i, num_classes + j, min(c.size, g.total_free), cost), i, j))
            placement_tiers.append(tier(speeds[j], fastest))
            demand[j] += c.size

    slot_arcs: list[list[tuple[int, int]]] = [[] for _ in groups]
    slot_cost_max = 0
    if policy.strategy == "spread":
        for j, g in enumerate(groups):
            levels = slot_levels(g, demand[j]) if demand[j] else 0
            for k in range(1, levels + 1):
                slot_arcs[j].append((arc(num_classes + j, sink, g.size, g.running + k), k))
                slot_cost_max = max(slot_cost_max, g.running + k)
    else:
        rank = 0
        order = sorted(range(num_groups), key=lambda j: (groups[j].running == 0, groups[j].free))
        for j in order:
            g = groups[j]
            for w in range(g.size):
                if demand[j] and g.free:
                    slot_arcs[j].append((arc(num_classes + j, sink, g.free, rank), w))
                rank += 1
        slot_cost_max = rank

    unit = top + slot_cost_max + 1
    for (a, _, _), t in zip(placement_arcs, placement_tiers, strict=True):
        costs[a] += unit * t
    most = top + unit * max(placement_tiers, default=0)
    step = max(policy.priority_weight, most + 1)
    waiting = (num_classes + 1) * (most + 1) + slot_cost_max + 1
    for i, c in enumerate(classes):
        arc(i, unscheduled, c.size, waiting + step * c.band)
    arc(unscheduled, sink, total, 0)

    supplies = [c.size for c in classes] + [0] * (num_groups + 2)
    supplies[sink] = -total
    return Network(
        num_nodes=num_classes + num_groups + 2,
        tails=tails,
        heads=heads,
        capacities=caps,
        costs=costs,
        supplies=supplies,
        placement_arcs=placement_arcs,
        slot_arcs=slot_arcs,
    )
