"""Issue 20's targets: the checks and the verdicts, on hand-made metrics."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import judge, table


def m(p50: float, p99: float, **extra: Any) -> dict[str, Any]:
    """Metrics with the fields the targets read (waits in seconds)."""
    figures: dict[str, Any] = {
        "wait": {"p50": p50, "p99": p99, "max": extra.get("max", p99)},
        "makespan": extra.get("makespan", 100.0),
        "completion": {"mean": extra.get("completion", 1.0)},
        "wait_high": {"p95": extra.get("high", p99)},
        "constraint_violations": extra.get("violations", 0),
        "requeues": extra.get("requeues", 0),
    }
    return figures


def test_within_a_millisecond_under_five_is_not_a_loss() -> None:
    verdict = judge("homogeneous", [(m(0.0018, 0.0024), m(0.0009, 0.0015))])
    assert verdict["verdict"] == "ties"
    lost = judge("homogeneous", [(m(0.0021, 0.0024), m(0.0009, 0.0015))])
    assert lost["verdict"] == "loses"
    assert [r["met"] for r in lost["targets"]] == [0, 1, 1]


def test_over_five_milliseconds_only_the_ratio_counts() -> None:
    assert judge("homogeneous", [(m(0.010, 0.05), m(0.0095, 0.05))])["verdict"] == "ties"
    assert judge("homogeneous", [(m(0.0112, 0.05), m(0.010, 0.05))])["verdict"] == "loses"
    assert (
        judge("homogeneous", [(m(0.01, 0.05, makespan=103), m(0.01, 0.05))])["verdict"] == "loses"
    )


def test_a_win_target_must_hold_on_every_seed() -> None:
    good = (m(0.01, 0.02, completion=0.8), m(0.01, 0.02, completion=1.0))
    bad = (m(0.01, 0.02, completion=0.9), m(0.01, 0.02, completion=1.0))
    assert judge("heterogeneous", [good, good])["verdict"] == "wins"
    tied = judge("heterogeneous", [good, bad])
    assert tied["verdict"] == "ties"
    assert tied["targets"][-1]["met"] == 1 and tied["targets"][-1]["runs"] == 2


def test_constraints_need_no_requeues_or_violations_as_well() -> None:
    pull = m(0.01, 0.1)
    assert judge("constraints", [(m(0.01, 0.04), pull)])["verdict"] == "wins"
    assert judge("constraints", [(m(0.01, 0.04, requeues=1), pull)])["verdict"] == "ties"
    assert judge("constraints", [(m(0.01, 0.04, violations=2), pull)])["verdict"] == "ties"


def test_priorities_failure_and_trace_targets() -> None:
    assert (
        judge("priorities", [(m(0.01, 0.02, high=0.01), m(0.01, 0.02, high=0.03))])["verdict"]
        == "wins"
    )
    assert judge("failure", [(m(0.01, 0.02, max=6.0), m(0.01, 0.02, max=5.0))])["verdict"] == "ties"
    assert judge("trace", [(m(1.0, 50.0), m(1.0, 100.0))])["verdict"] == "wins"
    text = table([judge("trace", [(m(1.0, 50.0), m(1.0, 100.0))])])
    assert text.splitlines()[2].startswith("| trace | **wins** | wait p50")
    assert "| 1 of 1 | 50 s | 100 s | 0.50 |" in text
