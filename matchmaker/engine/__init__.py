"""The matchmaking engine: ``plan(tasks, workers, policy) -> Plan``.

One stage per module, composed here:
classes -> speed -> feasibility -> network -> solve -> disaggregate -> explain.

``plan`` is pure: no I/O and no clock of its own (ages come from
``Policy.now`` and each task's ``submitted_at``). The same input gives the
same plan, whatever the order of the tasks and the workers.
"""

from __future__ import annotations

from collections.abc import Sequence

from matchmaker.engine.classes import (
    duplicate_ids_message,
    referenced_attributes,
    task_classes,
    worker_groups,
)
from matchmaker.engine.disaggregate import disaggregate
from matchmaker.engine.explain import explain
from matchmaker.engine.feasibility import eligibility
from matchmaker.engine.network import build
from matchmaker.engine.solve import SolverError, solve
from matchmaker.engine.speed import split_by_speed
from matchmaker.models import Plan, Policy, Task, Worker

__all__ = ["SolverError", "plan"]


def plan(tasks: Sequence[Task], workers: Sequence[Worker], policy: Policy | None = None) -> Plan:
    """Place as many tasks as possible, highest band first, at the least cost."""
    policy = policy or Policy()
    classes = task_classes(tasks, policy)
    types = frozenset(c.sample.type for c in classes)
    groups = split_by_speed(worker_groups(workers, types, referenced_attributes(classes)), types)
    usable = eligibility(classes, groups)
    network = build(classes, groups, usable, policy)
    flows, cost = solve(network)
    assignments, waiting = disaggregate(
        classes, groups, network, flows, policy.strategy == "spread"
    )
    unplaced = explain(classes, groups, usable, network, flows, waiting)
    distinct = len(assignments) + len(unplaced) == len(tasks)
    if not distinct or not unplaced.keys().isdisjoint(assignments):
        raise ValueError(duplicate_ids_message(tasks))
    return Plan(
        assignments=assignments,
        unplaced=unplaced,
        placed=len(assignments),
        cost=cost,
        classes=len(classes),
        worker_groups=len(groups),
    )
