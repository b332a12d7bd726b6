"""matchmaker: push-based matchmaking of tasks onto workers by min-cost max-flow."""

from matchmaker.engine import plan
from matchmaker.models import Constraint, Plan, Policy, Reason, Task, Unplaced, Worker

__all__ = ["Constraint", "Plan", "Policy", "Reason", "Task", "Unplaced", "Worker", "plan"]
