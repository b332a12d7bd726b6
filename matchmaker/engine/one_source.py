"""Stage 4, the one-class round: its min-cost flow by a greedy fill, when that flow is unique.

Model. One node has supply ``s``, one (the sink) demand ``s``, the rest none,
and every arc either leaves the source for a middle node (its in-arc, at most
one per middle node) or enters the sink from a middle node (an out-arc); an
arc from the source straight to the sink is a path of its own. A round with
one task class is such a network: the middle nodes are the worker groups and
``unscheduled``. A flow is then an amount on each path (in-arc, out-arc), the
out-arc naming the path, of cost ``cost(in) + cost(out)``, at most the
out-arc's capacity, the amounts summing to ``s``. An in-arc that can carry
``min(s, its out-arcs' capacities)`` never binds (a round's placement arc
carries ``min(class size, free slots)``; its slot arcs hold at most the free
slots), so that is all there is.

Why the fill is optimal. Taking the ``s`` cheapest units of path capacity,
cheapest path first, gives the least sum: any flow's units, sorted by cost,
are each at least the fill's.

Why it is then OR-Tools' flow. Every optimum takes the same units as the fill,
cost by cost (each at least the fill's and the sums equal): all of every path
cheaper than the last unit's cost ``t``, none of a dearer one, and as much at
``t``. When one path costs ``t``, or the fill takes all the paths at ``t``,
that fixes every path's amount, hence every arc's flow: the optimum is unique
and OR-Tools returns it too. Otherwise (ties at ``t``) the choice among equal
optima is OR-Tools', and ``None`` sends the network to it; so does any other
shape, a binding in-arc, too little capacity or more than ``MAX_ARCS`` arcs.

Cost: O(m log m) for m arcs.
"""

from __future__ import annotations

from collections.abc import Sequence

from matchmaker.engine.network import Network

MAX_ARCS = 8  # one task on up to three groups; above, OR-Tools is about as cheap


def one_source_flow(network: Network) -> tuple[list[int], int] | None:
    """The flow on every arc and its cost, when the network has the shape above and a
    unique optimum; else ``None``."""
    if len(network.tails) > MAX_ARCS or network.num_nodes != len(network.slot_arcs) + 3:
        return None  # large, or not one class (a round has a node per class and group, and 2)
    costs = network.costs
    flows = fill(network.tails, network.heads, network.capacities, costs, network.supplies)
    if flows is None:
        return None
    return flows, sum(f * c for f, c in zip(flows, costs, strict=True))


def fill(
    tails: Sequence[int],
    heads: Sequence[int],
    capacities: Sequence[int],
    costs: Sequence[int],
    supplies: Sequence[int],
) -> list[int] | None:
    """The arcs' flows of the unique greedy optimum, or ``None`` (module docstring)."""
    flows = [0] * len(tails)
    source = sink = -1
    for node, supply in enumerate(supplies):
        if supply > 0:
            if source >= 0:
                return None
            source = node
        elif supply < 0:
            if sink >= 0:
                return None
            sink = node
    if source < 0 or sink < 0 or supplies[source] + supplies[sink] != 0:
        return None
    if min(capacities, default=0) < 0:
        return None
    need = supplies[source]

    into: dict[int, int] = {}  # middle node -> its in-arc
    paths: list[tuple[int, int, int]] = []  # (cost, out-arc or direct arc, in-arc or -1)
    outs: list[int] = []
    for a, (tail, head) in enumerate(zip(tails, heads, strict=True)):
        if tail == source:
            if head == sink:
                paths.append((costs[a], a, -1))
            elif head == source or head in into:
                return None
            else:
                into[head] = a
        elif head == sink:
            if tail == sink:
                return None
            outs.append(a)
        else:
            return None
    reach: dict[int, int] = {}  # middle node -> its out-arcs' capacity
    for a in outs:
        inward = into.get(tails[a])
        if inward is not None:
            paths.append((costs[inward] + costs[a], a, inward))
            reach[tails[a]] = reach.get(tails[a], 0) + capacities[a]
    for node, a in into.items():
        if capacities[a] < min(need, reach.get(node, 0)):
            return None

    paths.sort()
    left = need
    last = -1  # the cost of the last unit the fill takes
    for cost, a, inward in paths:
        if left == 0:
            break
        amount = min(left, capacities[a])
        if amount:
            flows[a] = amount
            if inward >= 0:
                flows[inward] += amount
            left -= amount
            last = cost
    if left:
        return None  # too little capacity: OR-Tools says so
    if need:
        tied = [a for cost, a, _ in paths if cost == last]
        if len(tied) > 1 and any(flows[a] < capacities[a] for a in tied):
            return None
    return flows
