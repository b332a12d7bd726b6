"""Stage 2: which worker groups can run which task classes.

A class may use a group when the group runs the class's type and its
attribute values satisfy every constraint. Preferences do not filter; they
count the matches that make a placement cheaper.

Cost: O(C * G * k) for C classes, G groups and k constraints per class.
"""

from __future__ import annotations

from matchmaker.engine.classes import TaskClass, WorkerGroup


def eligible(c: TaskClass, g: WorkerGroup) -> bool:
    task = c.sample
    return task.type in g.capabilities and all(
        x.allows(g.values.get(x.attribute)) for x in task.constraints
    )


def preference_matches(c: TaskClass, g: WorkerGroup) -> int:
    return sum(1 for x in c.sample.preferences if x.allows(g.values.get(x.attribute)))


def eligibility(classes: list[TaskClass], groups: list[WorkerGroup]) -> list[list[int]]:
    """For each class, the indices of the groups it may use."""
    return [[j for j, g in enumerate(groups) if eligible(c, g)] for c in classes]
