"""Issue 20's targets for ``python -m benchmarks sim --seeds N``, checked, not written by hand.

Every scenario and seed must keep push from losing:

- wait p50 and p99: push <= 1.1x pull's, or within 1 ms of it where both are
  under 5 ms;
- makespan: push <= 1.02x pull's.

Where the global view matters push must win (every seed):

- heterogeneous: mean completion time (wait + run) <= 0.85x pull's;
- constraints: p99 wait <= 0.5x pull's, with 0 constraint violations and 0 requeues;
- priorities: p95 wait of priorities 7-9 <= 0.5x pull's (priority queues);
- failure: max wait <= pull's;
- trace (the NASA replay, one run: it has no seed): p99 wait <= 0.6x pull's.

A scenario's verdict: ``loses`` if a never-lose target is missed on some
seed; else ``wins`` if its win target is met on every seed; else ``ties``
(homogeneous has no win target: the most it can do is tie).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Metrics = dict[str, Any]
Check = Callable[[Metrics, Metrics], tuple[bool, float, float]]

NEAR = 0.001  # within 1 ms ...
SMALL = 0.005  # ... where both are under 5 ms


def _wait(key: str) -> Check:
    def check(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
        a, b = push["wait"][key], pull["wait"][key]
        close = a < SMALL and b < SMALL and a - b <= NEAR
        return a <= 1.1 * b or close, a, b

    return check


def _makespan(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["makespan"], pull["makespan"]
    return a <= 1.02 * b, a, b


def _completion(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["completion"]["mean"], pull["completion"]["mean"]
    return a <= 0.85 * b, a, b


def _constraints(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["wait"]["p99"], pull["wait"]["p99"]
    clean = push["constraint_violations"] == 0 and push["requeues"] == 0
    return a <= 0.5 * b and clean, a, b


def _high(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["wait_high"]["p95"], pull["wait_high"]["p95"]
    return a <= 0.5 * b, a, b


def _max_wait(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["wait"]["max"], pull["wait"]["max"]
    return a <= b, a, b


def _trace(push: Metrics, pull: Metrics) -> tuple[bool, float, float]:
    a, b = push["wait"]["p99"], pull["wait"]["p99"]
    return a <= 0.6 * b, a, b


@dataclass(frozen=True)
class Target:
    label: str
    check: Check
    wins: bool  # a win target; otherwise a never-lose one


NEVER_LOSE = (
    Target("wait p50 <= 1.1x (or +1 ms under 5 ms)", _wait("p50"), False),
    Target("wait p99 <= 1.1x (or +1 ms under 5 ms)", _wait("p99"), False),
    Target("makespan <= 1.02x", _makespan, False),
)
WIN: dict[str, Target] = {
    "heterogeneous": Target("mean completion <= 0.85x", _completion, True),
    "constraints": Target("wait p99 <= 0.5x, 0 violations, 0 requeues", _constraints, True),
    "priorities": Target("p95 wait of priorities 7-9 <= 0.5x", _high, True),
    "failure": Target("max wait <= 1x", _max_wait, True),
    "trace": Target("wait p99 <= 0.6x", _trace, True),
}


def targets_of(scenario: str) -> list[Target]:
    return [*NEVER_LOSE, *([WIN[scenario]] if scenario in WIN else [])]


def judge(scenario: str, runs: list[tuple[Metrics, Metrics]]) -> dict[str, Any]:
    """The targets of one scenario over its runs (push, pull metrics per seed), and its verdict."""
    rows: list[dict[str, Any]] = []
    for target in targets_of(scenario):
        results = [target.check(push, pull) for push, pull in runs]
        met = sum(ok for ok, _, _ in results)
        rows.append(
            {
                "target": target.label,
                "wins": target.wins,
                "met": met,
                "runs": len(results),
                "push": statistics.median([a for _, a, _ in results]),
                "pull": statistics.median([b for _, _, b in results]),
                "ratio": statistics.median([a / b if b else math.inf for _, a, b in results]),
            }
        )
    lost = any(not r["wins"] and r["met"] < r["runs"] for r in rows)
    won = any(r["wins"] for r in rows) and all(r["met"] == r["runs"] for r in rows if r["wins"])
    return {
        "scenario": scenario,
        "verdict": "loses" if lost else "wins" if won else "ties",
        "targets": rows,
    }


def _seconds(value: Any) -> str:
    return f"{value * 1e3:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"


def table(verdicts: list[dict[str, Any]]) -> str:
    """Markdown: one line per target, the scenario's verdict on its first line."""
    lines = [
        "| scenario | verdict | target | seeds met | push (median) | pull (median) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        for k, r in enumerate(v["targets"]):
            name, verdict = (v["scenario"], f"**{v['verdict']}**") if k == 0 else ("", "")
            lines.append(
                f"| {name} | {verdict} | {r['target']} | {r['met']} of {r['runs']} | "
                f"{_seconds(r['push'])} | {_seconds(r['pull'])} | {r['ratio']:.2f} |"
            )
    return "\n".join(lines)
