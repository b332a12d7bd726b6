"""The fault harness, short: real tasks and fuzzed messages through kill -9s and a broker restart.

One run of ``benchmarks.fault`` (its own RabbitMQ node, Serf agents, the scheduler
and two workers as real processes, started through the public CLI): 300 real tasks
and 300 fuzzed messages sent over 24 s, while a worker is killed with kill -9 and
started again, the scheduler is killed with kill -9 and started again, the broker is
stopped and started, and a worker's Serf agent is frozen for 5 s. Each test asserts
one of the harness's checks on that run; a failure prints the check's details.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.fault import FaultConfig, Report, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.broker,
    pytest.mark.serf,
    pytest.mark.timeout(420),
]

SHORT = FaultConfig(
    tasks=300,
    fuzz=300,
    workers=2,
    slots=4,
    duration=24.0,
    task_seconds=0.1,
    worker_kill_every=12.0,  # one kill (at 12 s) within the 24 s
    scheduler_kills=1,
    broker_restarts=1,
    broker_down=3.0,
    serf_freeze=5.0,
    timeout=90.0,
    cli_every=8,
)


@pytest.fixture(scope="module")
def report() -> Iterator[Report]:
    if shutil.which("rabbitmq-server") is None and not Path("/usr/lib/rabbitmq/bin").exists():
        pytest.skip("rabbitmq-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="mm-fault-test-"))  # kept if a check fails
    config = FaultConfig(**{**vars(SHORT), "workdir": workdir})
    result = run(config)
    yield result
    if result.ok:
        shutil.rmtree(workdir, ignore_errors=True)


def _explain(report: Report, name: str) -> str:
    check = report.check(name)
    lines = [f"{check.name}: {check.figure}", *check.details]
    lines.append(f"faults: {report.faults['timeline']}")
    lines.append(f"working directory (logs, ledger): {report.workdir}")
    return "\n".join(lines)


def test_the_faults_happened(report: Report) -> None:
    assert report.faults["worker_kills"] >= 1
    assert report.faults["scheduler_kills"] == 1
    timeline = " ".join(text for _, text in report.faults["timeline"])
    assert "broker start_app done" in timeline
    assert "SIGCONT Serf agent" in timeline
    assert "sending stopped" not in timeline
    assert report.counts["tasks"] == 300
    assert report.counts["fuzzed"] == 300
    assert report.counts["cli_status_agrees"]


def test_no_real_task_is_lost(report: Report) -> None:
    assert report.check("real tasks lost").ok, _explain(report, "real tasks lost")


def test_no_real_task_completes_twice(report: Report) -> None:
    name = "real tasks completed twice"
    assert report.check(name).ok, _explain(report, name)


def test_the_scheduler_never_exits_by_itself(report: Report) -> None:
    name = "scheduler exits not caused by the run"
    assert report.check(name).ok, _explain(report, name)


def test_every_fuzzed_message_is_dead_lettered_once(report: Report) -> None:
    name = "fuzzed messages dead-lettered once"
    assert report.check(name).ok, _explain(report, name)


def test_forged_results_change_nothing(report: Report) -> None:
    name = "forged results changed nothing"
    assert report.check(name).ok, _explain(report, name)


def test_restarted_workers_are_back_in_the_pool(report: Report) -> None:
    name = "workers back in the pool"
    assert report.check(name).ok, _explain(report, name)
