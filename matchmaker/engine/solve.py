"""Stage 4: solve the round's network with OR-Tools' min-cost flow.

The network is handed over and read back with the vectorised calls
(``add_arcs_with_capacity_and_unit_cost``, ``set_nodes_supplies``,
``flows``), its lists made arrays once, so Python never loops over arcs.
OR-Tools' cost-scaling push-relabel runs in O(n^2 m log(nC)) for n nodes, m
arcs and largest cost C; the class-aggregated network keeps n and m small. The
smallest rounds of one class, when their optimum is unique, are settled by
``engine.one_source`` instead: the same flow, without OR-Tools' fixed cost.
"""

from __future__ import annotations

import numpy as np
from ortools.graph.python import min_cost_flow

from matchmaker.engine.network import Network
from matchmaker.engine.one_source import one_source_flow


class SolverError(RuntimeError):
    """OR-Tools did not find an optimal flow (a bug in the network, never the input)."""


def solve(network: Network) -> tuple[list[int], int]:
    """The flow on every arc, and the optimal total cost."""
    if len(network.tails) == 0:
        return [], 0
    settled = one_source_flow(network)
    if settled is not None:
        return settled
    flow = min_cost_flow.SimpleMinCostFlow()
    arcs = flow.add_arcs_with_capacity_and_unit_cost(
        np.asarray(network.tails, dtype=np.int64),
        np.asarray(network.heads, dtype=np.int64),
        np.asarray(network.capacities, dtype=np.int64),
        np.asarray(network.costs, dtype=np.int64),
    )
    flow.set_nodes_supplies(
        np.arange(network.num_nodes, dtype=np.int64), np.asarray(network.supplies, dtype=np.int64)
    )
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise SolverError(f"min-cost flow ended with status {status}")
    flows: list[int] = flow.flows(arcs).tolist()
    return flows, int(flow.optimal_cost())
