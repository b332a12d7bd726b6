"""ServiceRates: learned relative speeds from run times, with perf as the prior."""

from __future__ import annotations

import math

import pytest

from matchmaker import plan
from matchmaker.models import MAX_SPEED, Task, Worker
from matchmaker.rates import ServiceRates


def test_without_runs_the_speed_is_the_advertised_perf() -> None:
    rates = ServiceRates()
    assert rates.rate("w1", "x") == 1.0
    rates.advertise("w1", 2.5)
    assert rates.rate("w1", "x") == 2.5
    assert rates.speeds("w1") == {}


def test_runs_teach_the_ratio_between_workers() -> None:
    rates = ServiceRates()
    for _ in range(50):
        rates.observe("fast", "x", 0.5)
        rates.observe("slow", "x", 2.0)
    assert rates.rate("fast", "x") / rates.rate("slow", "x") == pytest.approx(4.0, rel=0.01)
    assert set(rates.speeds("fast")) == {"x"}


def test_the_prior_weighs_until_runs_outweigh_it() -> None:
    rates = ServiceRates(decay=1.0, prior_weight=3.0)
    rates.advertise("a", 4.0)  # claims to be 4x, runs at the same speed as b
    for _ in range(2):
        rates.observe("a", "x", 1.0)
        rates.observe("b", "x", 1.0)
    early = rates.rate("a", "x") / rates.rate("b", "x")
    for _ in range(200):
        rates.observe("a", "x", 1.0)
        rates.observe("b", "x", 1.0)
    late = rates.rate("a", "x") / rates.rate("b", "x")
    assert early > 1.3
    assert late == pytest.approx(1.0, abs=0.05)


def test_decay_follows_a_worker_that_slows_down() -> None:
    rates = ServiceRates(decay=0.8)
    for _ in range(30):
        rates.observe("a", "x", 1.0)
        rates.observe("b", "x", 1.0)
    for _ in range(30):
        rates.observe("a", "x", 3.0)
        rates.observe("b", "x", 1.0)
    assert rates.rate("b", "x") / rates.rate("a", "x") == pytest.approx(3.0, rel=0.05)


def test_types_are_learned_apart_and_forget_drops_a_worker() -> None:
    rates = ServiceRates()
    for _ in range(40):
        rates.observe("a", "x", 1.0)
        rates.observe("b", "x", 1.0)
        rates.observe("a", "y", 10.0)
        rates.observe("b", "y", 1.0)
    assert rates.rate("a", "x") == pytest.approx(rates.rate("b", "x"))
    assert rates.rate("a", "y") < rates.rate("b", "y") / 3
    rates.forget("a")
    assert rates.speeds("a") == {}
    assert rates.rate("a", "y") == 1.0


def test_learned_speeds_steer_the_plan() -> None:
    rates = ServiceRates()
    for _ in range(20):
        rates.observe("a", "x", 2.0)
        rates.observe("b", "x", 1.0)
    workers = [Worker(n, {"x"}, 2, speeds=rates.speeds(n)) for n in ("a", "b")]
    assert plan([Task("t", "x")], workers).assignments == {"t": "b"}
    slow = Worker("b", {"x"}, 2, running=1, perf=2.0).with_speeds({"x": 0.25})
    assert (slow.running, slow.perf, slow.speed("x"), slow.speed("y")) == (1, 2.0, 0.25, 2.0)
    assert plan([Task("t", "x")], [workers[0], slow]).assignments == {"t": "a"}


def test_speeds_stay_in_range_and_zero_runs_count() -> None:
    rates = ServiceRates(prior_weight=0.0)
    for _ in range(10):
        rates.observe("a", "x", 0)
        rates.observe("b", "x", 1e6)
    assert rates.rate("a", "x") == MAX_SPEED
    assert 0 < rates.rate("b", "x") <= 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "1", True, None])
def test_bad_run_times_are_refused_with_a_sentence(bad: object) -> None:
    rates = ServiceRates()
    with pytest.raises(ValueError, match="run time of 'x' on 'w'"):
        rates.observe("w", "x", bad)  # type: ignore[arg-type]
    assert rates.speeds("w") == {}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        ServiceRates(decay=0.0)
    with pytest.raises(ValueError, match="prior_weight"):
        ServiceRates(prior_weight=-1)
    with pytest.raises(ValueError, match="perf of 'w'"):
        ServiceRates().advertise("w", 0.0)
