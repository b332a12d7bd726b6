"""The fit of the simulation's loop costs (``benchmarks.roundcost``): it recovers the
constants of turns made from them, and its harness times real turns of the loop."""

from __future__ import annotations

import math

import pytest

from benchmarks.roundcost import fit, measure_size, modelled_turn

TRUE = {
    "plan_base": 250e-6,
    "plan_per_worker": 1.5e-6,
    "plan_per_log": 70e-6,
    "turn_base": 800e-6,
    "turn_per_worker": 0.5e-6,
    "intake": 40e-6,
    "dispatch": 10e-6,
    "result_turn": 550e-6,
}


def point(workers: int, tasks: int) -> dict[str, float]:
    plan = TRUE["plan_base"] + TRUE["plan_per_worker"] * workers
    plan += TRUE["plan_per_log"] * math.log2(1 + tasks)
    return {
        "workers": workers,
        "tasks": tasks,
        "plan": plan,
        "turn": modelled_turn(TRUE, tasks, workers),
        "results": TRUE["result_turn"] + TRUE["intake"] * tasks,
    }


def test_the_fit_recovers_the_constants_of_its_model() -> None:
    points = [point(w, n) for w in (2, 16, 256, 1000) for n in (1, 4, 64, 1000) if n <= 4 * w]
    model = fit(points)
    assert model == pytest.approx(TRUE, rel=1e-6)
    assert modelled_turn(model, 1, 200) == pytest.approx(modelled_turn(TRUE, 1, 200))


def test_a_dispatch_never_costs_less_than_nothing() -> None:
    points = [point(w, n) for w in (2, 16, 256) for n in (1, 4, 64) if n <= 4 * w]
    for p in points:  # a request's turn costs less per task than a result's intake
        p["turn"] -= (TRUE["intake"] + TRUE["dispatch"]) * p["tasks"] * 0.5
    assert fit(points)["dispatch"] == 0.0


def test_the_harness_times_real_turns_of_the_loop() -> None:
    timed = measure_size(workers=4, tasks=8, trials=2, pause=0.0)
    assert (timed["workers"], timed["tasks"]) == (4, 8)
    assert 0 < timed["plan"] < timed["turn"]
    assert timed["results"] > 0
