"""Stage 4: solve the round's network with OR-Tools' min-cost flow.

The network is handed over and read back with the vectorised calls
(``add_arcs_with_capacity_and_unit_cost``, ``set_nodes_supplies``,
``flows``), so Python never loops over arcs. OR-Tools' cost-scaling push-
relabel runs in O(n^2 m log(nC)) for n nodes, m arcs and largest cost C; the
class-aggregated network keeps n and m small.
"""

from __future__ import annotations

import numpy as np
from ortools.graph.python import min_cost_flow

from matchmaker.engine.network import IntArray, Network


class SolverError(RuntimeError):
    """OR-Tools did not find an optimal flow (a bug in the network, never the input)."""


def solve(network: Network) -> tuple[IntArray, int]:
    """The flow on every arc, and the optimal total cost."""
    if len(network.tails) == 0:
        return np.zeros(0, dtype=np.int64), 0
    flow = min_cost_flow.SimpleMinCostFlow()
    arcs = flow.add_arcs_with_capacity_and_unit_cost(
        network.tails, network.heads, network.capacities, network.costs
    )
    flow.set_nodes_supplies(np.arange(network.num_nodes, dtype=np.int64), network.supplies)
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise SolverError(f"min-cost flow ended with status {status}")
    return np.asarray(flow.flows(arcs), dtype=np.int64), int(flow.optimal_cost())
