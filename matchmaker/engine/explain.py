"""Stage 6: one true, actionable reason for every task left unplaced.

Checked in this order for the task's class; the first that holds is the reason:

1. ``NO_WORKER_FOR_TYPE``: no live worker advertises the task's type;
2. ``CONSTRAINTS``: workers run the type, but none meets every constraint
   (the message counts how many workers each constraint rules out);
3. ``FULL``: eligible workers exist, but none had a free slot this round;
4. ``OUTRANKED``: eligible slots were free, and work of a higher band
   (priority plus aging) took some of them;
5. ``CONTENDED``: eligible slots were free, and work of the same band took
   them all (the optimum leaves no eligible slot free while a task waits).

Messages name no counts that change from round to round (free slots), so a
waiting task's reason changes only when its situation does: the service
stores reasons, and rewriting every waiting task's every round is costly.
"""

from __future__ import annotations

from itertools import repeat

from matchmaker.engine.classes import TaskClass, WorkerGroup
from matchmaker.engine.network import Network
from matchmaker.models import Reason, Unplaced


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def explain_class(
    i: int,
    classes: list[TaskClass],
    groups: list[WorkerGroup],
    usable: list[int],
    top_band_on_group: list[int],
) -> Unplaced:
    c = classes[i]
    task = c.sample
    typed = [g for g in groups if task.type in g.capabilities]
    if not typed:
        return Unplaced(
            Reason.NO_WORKER_FOR_TYPE, f"no live worker advertises task type {task.type!r}"
        )
    if not usable:
        counts = []
        for x in task.constraints:
            ruled_out = sum(g.size for g in typed if not x.allows(g.values.get(x.attribute)))
            if ruled_out:
                counts.append(f"{x.describe()} rules out {ruled_out}")
        total = sum(g.size for g in typed)
        return Unplaced(
            Reason.CONSTRAINTS,
            f"{_workers(total)} run {task.type!r} but none meets its constraints: "
            + "; ".join(counts),
        )
    size = sum(groups[j].size for j in usable)
    free = sum(groups[j].total_free for j in usable)
    if free == 0:
        return Unplaced(Reason.FULL, f"all {_workers(size)} that can run it are full")
    if max(top_band_on_group[j] for j in usable) > c.band:
        return Unplaced(
            Reason.OUTRANKED,
            f"outranked: the free slots of the {_workers(size)} that can run it went to "
            "higher-priority or longer-waiting work",
        )
    return Unplaced(
        Reason.CONTENDED,
        f"waiting: the free slots of the {_workers(size)} that can run it went to "
        "other work of equal rank (priority plus waiting time)",
    )


def explain(
    classes: list[TaskClass],
    groups: list[WorkerGroup],
    eligibility: list[list[int]],
    network: Network,
    flows: list[int],
    waiting: list[list[str]],
) -> dict[str, Unplaced]:
    """Task id -> reason, for every task its class did not place."""
    top_band_on_group = [-1] * len(groups)
    for arc, i, j in network.placement_arcs:
        if flows[arc]:
            top_band_on_group[j] = max(top_band_on_group[j], classes[i].band)
    unplaced: dict[str, Unplaced] = {}
    for i, ids in enumerate(waiting):
        if ids:
            reason = explain_class(i, classes, groups, eligibility[i], top_band_on_group)
            unplaced.update(zip(ids, repeat(reason)))
    return unplaced
