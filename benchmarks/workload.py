"""The synthetic round the solver benchmark plans: 50 task classes, 20 worker profiles.

Task classes (``CLASSES``): 10 task types x 5 variants of (constraints,
preferences), each with a fixed priority 0..9. The variants are: none;
``{"site": <site>}``; ``{"gpu": {">=": 1}}``; ``{"site": [two sites]}`` with a
preferred site; no constraint but a preferred site. Tasks are dealt round-robin
over the classes and submitted within the last ``SUBMIT_SPREAD`` seconds before
``NOW`` (less than one aging interval, so aging does not split classes).

Worker profiles (``PROFILES``): 3 to 5 capabilities, 2 to 8 slots, one of four
sites, 0 to 2 GPUs. Workers cycle through the profiles, and a third of them
run one to half their slots already.

Everything is drawn from ``random.Random(seed)``: the same seed, the same round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from matchmaker.models import Task, Worker

TYPES = (
    "env_setup",
    "data_staging",
    "job_submission",
    "output_staging",
    "monitoring",
    "archive",
    "cleanup",
    "notify",
    "validate",
    "transform",
)
SITES = ("iu", "tacc", "sdsc", "psc")
NOW = 1_000_000.0
SUBMIT_SPREAD = 50.0


@dataclass(frozen=True)
class TaskClassSpec:
    type: str
    priority: int
    constraints: dict[str, Any]
    preferences: dict[str, Any]


@dataclass(frozen=True)
class WorkerProfile:
    capabilities: tuple[str, ...]
    slots: int
    attributes: dict[str, Any]


def _classes() -> list[TaskClassSpec]:
    specs = []
    for i in range(50):
        kind, type_ = divmod(i, len(TYPES))
        site = SITES[i % len(SITES)]
        other = SITES[(i + 1) % len(SITES)]
        constraints: dict[str, Any] = {}
        preferences: dict[str, Any] = {}
        if kind == 1:
            constraints = {"site": site}
        elif kind == 2:
            constraints = {"gpu": {">=": 1}}
        elif kind == 3:
            constraints = {"site": [site, other]}
            preferences = {"site": [site]}
        elif kind == 4:
            preferences = {"site": [site]}
        specs.append(TaskClassSpec(TYPES[type_], (i * 7) % 10, constraints, preferences))
    return specs


def _profiles() -> list[WorkerProfile]:
    rng = random.Random(20)
    profiles = []
    for p in range(20):
        caps = tuple(sorted(rng.sample(TYPES, rng.randint(3, 5))))
        attributes = {"site": SITES[p % len(SITES)], "gpu": (0, 0, 1, 2)[p % 4]}
        profiles.append(WorkerProfile(caps, rng.randint(2, 8), attributes))
    return profiles


CLASSES = _classes()
PROFILES = _profiles()


def make_tasks(count: int, seed: int = 1) -> list[Task]:
    """``count`` tasks, dealt round-robin over ``CLASSES`` (each class gets its share)."""
    rng = random.Random(seed)
    tasks = []
    for k in range(count):
        spec = CLASSES[k % len(CLASSES)]
        tasks.append(
            Task(
                f"task-{k}",
                spec.type,
                priority=spec.priority,
                constraints=spec.constraints,
                preferences=spec.preferences,
                submitted_at=NOW - rng.uniform(0.0, SUBMIT_SPREAD),
            )
        )
    return tasks


def make_workers(count: int, seed: int = 2) -> list[Worker]:
    """``count`` workers cycling through ``PROFILES``; every third one carries some load."""
    rng = random.Random(seed)
    workers = []
    for k in range(count):
        profile = PROFILES[k % len(PROFILES)]
        running = rng.randint(1, max(1, profile.slots // 2)) if k % 3 == 0 else 0
        workers.append(
            Worker(f"worker-{k}", profile.capabilities, profile.slots, running, profile.attributes)
        )
    return workers
