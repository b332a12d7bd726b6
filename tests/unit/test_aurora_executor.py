"""The local Thermos stand-in: real processes, retries, finalizers, kill."""

from __future__ import annotations

import threading
from pathlib import Path

from aurora.executor import run_processes
from aurora.thermos import Process


def test_a_failing_process_is_retried_up_to_max_failures(tmp_path: Path) -> None:
    flaky = Process(
        "flaky", "[ -e tried ] || { touch tried; exit 1; }", max_failures=2, min_duration=0
    )
    outcome = run_processes([flaky], tmp_path, threading.Event())
    assert outcome.state == "finished"
    assert (tmp_path / ".logs/flaky/0/stdout").exists() and (
        tmp_path / ".logs/flaky/1/stdout"
    ).exists()


def test_failure_skips_regular_processes_but_runs_final_ones(tmp_path: Path) -> None:
    processes = [
        Process("bad", "echo oops >&2; exit 4"),
        Process("skipped", "touch skipped"),
        Process("cleanup", "touch cleaned", final=True),
    ]
    outcome = run_processes(processes, tmp_path, threading.Event())
    assert outcome.state == "failed" and "'bad'" in outcome.message and "4" in outcome.message
    assert (tmp_path / "cleaned").exists() and not (tmp_path / "skipped").exists()
    assert (tmp_path / ".logs/bad/0/stderr").read_text() == "oops\n"


def test_stop_kills_the_running_process(tmp_path: Path) -> None:
    stop = threading.Event()
    started: list[str] = []

    def on_start(process: Process) -> None:
        started.append(process.name)
        stop.set()  # ask to stop as soon as the process is launched

    outcome = run_processes(
        [Process("sleep", "sleep 60"), Process("next", "true")], tmp_path, stop, on_start
    )
    assert outcome.state == "killed"
    assert started == ["sleep"]
