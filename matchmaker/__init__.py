"""matchmaker: push-based matchmaking of tasks onto workers by min-cost max-flow.

The names below are imported on first use, so that a worker or a client that imports
``matchmaker.wire.broker`` or ``matchmaker.messages`` does not load the engine (OR-Tools, numpy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matchmaker.engine import plan
    from matchmaker.models import Constraint, Plan, Policy, Reason, Task, Unplaced, Worker

__version__ = "0.1.0"
__all__ = ["Constraint", "Plan", "Policy", "Reason", "Task", "Unplaced", "Worker", "plan"]
_HOMES = {name: "matchmaker.models" for name in __all__} | {"plan": "matchmaker.engine"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'matchmaker' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
