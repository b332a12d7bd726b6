"""``engine.one_source``: the greedy fill of a one-class round gives OR-Tools' own flow.

Random single-source networks (ties in cost drawn on purpose) are solved both
ways: whenever the fill answers, every arc's flow and the cost are OR-Tools'.
Then whole plans of small random rounds, with the fill and without it.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

import numpy as np
import pytest
from ortools.graph.python import min_cost_flow

from matchmaker import plan
from matchmaker.engine import one_source
from matchmaker.engine.one_source import fill
from matchmaker.models import Policy, Task, Worker

solve_module = importlib.import_module("matchmaker.engine.solve")  # the name is shadowed


def or_tools(
    tails: list[int], heads: list[int], caps: list[int], costs: list[int], supplies: list[int]
) -> tuple[list[int], int] | None:
    flow = min_cost_flow.SimpleMinCostFlow()
    arcs = flow.add_arcs_with_capacity_and_unit_cost(
        np.array(tails), np.array(heads), np.array(caps), np.array(costs)
    )
    flow.set_nodes_supplies(np.arange(len(supplies)), np.array(supplies))
    if flow.solve() != flow.OPTIMAL:
        return None
    return [int(f) for f in flow.flows(arcs)], int(flow.optimal_cost())


def single_source(rng: random.Random) -> tuple[list[int], ...]:
    """Source 0, middles 1..k, sink k+1: in-arcs, out-arcs and maybe a direct arc."""
    middles = rng.randint(1, 5)
    sink = middles + 1
    need = rng.randint(0, 8)
    tails: list[int] = []
    heads: list[int] = []
    caps: list[int] = []
    costs: list[int] = []

    def arc(tail: int, head: int, capacity: int, cost: int) -> None:
        tails.append(tail)
        heads.append(head)
        caps.append(capacity)
        costs.append(cost)

    for m in range(1, middles + 1):
        if rng.random() < 0.9:
            arc(0, m, rng.choice([need, need + 3, rng.randint(0, need)]), rng.randint(-2, 3))
        for _ in range(rng.randint(0, 3)):
            arc(m, sink, rng.randint(0, 4), rng.randint(0, 4))
    if rng.random() < 0.5:
        arc(0, sink, need, rng.randint(3, 9))
    supplies = [need] + [0] * middles + [-need]
    return tails, heads, caps, costs, supplies


def test_the_fill_is_or_tools_flow_whenever_it_answers() -> None:
    rng = random.Random(11)
    answered = declined = 0
    for _ in range(4000):
        network = single_source(rng)
        got = fill(*network)
        if got is None:
            declined += 1
            continue
        answered += 1
        expected = or_tools(*network)
        assert expected is not None, network
        flows, cost = expected
        assert got == flows, network
        assert sum(f * c for f, c in zip(got, network[3], strict=True)) == cost
    assert answered > 1000 and declined > 100  # both ways were taken


def test_the_fill_answers_a_unique_optimum() -> None:
    assert fill([0, 1, 1], [1, 2, 2], [1, 1, 1], [0, 1, 2], [1, 0, -1]) == [1, 1, 0]


@pytest.mark.parametrize(
    "network",
    [
        ([0, 1, 1], [1, 2, 2], [1, 1, 1], [0, 1, 1], [1, 0, -1]),  # a tie at the margin
        ([0, 2], [1, 2], [1, 1], [0, 0], [1, 0, -1]),  # an arc between middles
        ([0, 1], [1, 2], [1, 1], [0, 0], [1, 1, -2]),  # two supplies
        ([0, 1, 2], [1, 2, 0], [1, 1, 1], [-1, 0, 0], [0, 0, 0]),  # none (a cycle may pay)
        ([0, 1], [1, 2], [2, 1], [0, 0], [2, 0, -2]),  # too little capacity
        ([0, 1], [1, 2], [1, 3], [0, 0], [2, 0, -2]),  # a binding in-arc
    ],
)
def test_the_fill_declines_ties_and_other_shapes(network: tuple[list[int], ...]) -> None:
    assert fill(*network) is None


def small_round(rng: random.Random) -> tuple[list[Task], list[Worker], Policy]:
    kind = rng.choice(["sleep", "build"])
    cons: dict[str, Any] = {"site": "iu"} if rng.random() < 0.2 else {}
    prefs: dict[str, Any] = {"gpu": {">=": 1}} if rng.random() < 0.3 else {}
    tasks = [
        Task(f"t{i}", kind, rng.randint(0, 2), cons, prefs, float(rng.randint(0, 3)))
        for i in range(rng.randint(1, 4))
    ]
    workers = []
    for j in range(rng.randint(0, 4)):
        slots = rng.randint(0, 3)
        attrs = {"site": rng.choice(["iu", "tacc"]), "gpu": rng.randint(0, 1)}
        speeds = {kind: rng.choice([0.5, 1.0, 2.0])} if rng.random() < 0.3 else None
        caps = rng.choice([["sleep"], ["build"], ["sleep", "build"]])
        workers.append(Worker(f"w{j}", caps, slots, rng.randint(0, slots), attrs, speeds=speeds))
    return tasks, workers, Policy(rng.choice(["spread", "binpack"]), now=5.0)


def outcome(tasks: list[Task], workers: list[Worker], policy: Policy) -> tuple[Any, ...]:
    p = plan(tasks, workers, policy)
    return list(p.assignments.items()), list(p.unplaced.items()), p.placed, p.cost, p.classes


def test_plans_are_the_same_with_the_fill_and_without(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    rounds = [small_round(rng) for _ in range(1500)]
    calls = []

    def counted(network: Any) -> Any:
        settled = one_source.one_source_flow(network)
        calls.append(settled is not None)
        return settled

    monkeypatch.setattr(solve_module, "one_source_flow", counted)
    with_fill = [outcome(*r) for r in rounds]
    monkeypatch.setattr(solve_module, "one_source_flow", lambda network: None)
    without = [outcome(*r) for r in rounds]
    assert with_fill == without
    assert sum(calls) > 300  # the fill settled many of them
