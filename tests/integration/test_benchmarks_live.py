"""``python -m benchmarks live`` as a user runs it: a subprocess on the real broker and agents.

Tiny runs: every task must be accounted for and the JSON report well-formed;
no timing is asserted. The run makes and deletes its own vhosts; the test
checks that none is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.live import parser
from benchmarks.live_cpu import Meter, cpu_seconds
from tests.workers_support import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def _vhosts() -> set[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60
    )
    return {v for v in out.stdout.split() if v.startswith("mm-live-")}


def _no_new_vhosts(before: set[str]) -> None:
    """The run deleted its vhosts (a loaded broker finishes a deletion a little later)."""
    deadline = time.monotonic() + 30
    while (left := _vhosts() - before) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"the run left vhosts behind: {left}"


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in the JSON report")


def _live(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "live.json"
    before = _vhosts()
    files = ["--out", str(out), "--plot-dir", str(tmp_path), "--workdir", str(tmp_path / "work")]
    command = [sys.executable, "-m", "benchmarks", "live", *args, *files]
    run = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = run.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        run.terminate()  # the benchmark stops what it started on SIGTERM
        output, _ = run.communicate(timeout=60)
        pytest.fail(f"the live benchmark did not finish in 100 s:\n{output}")
    assert run.returncode == 0, output
    _no_new_vhosts(before)
    report = json.loads(out.read_text(), parse_constant=_refuse)  # strict JSON: no NaN
    assert report["command"].startswith("python -m benchmarks live")
    return report


def test_push_and_e2e_account_for_every_task(tmp_path: Path) -> None:
    report = _live(
        tmp_path, "--scenario", "push", "--scenario", "e2e", "--tasks", "200", "--no-celery"
    )
    push = report["scenarios"]["push"]
    assert push["assigned"] == 200 and push["in_worker_queues"] == 200
    assert push["push_rate"] > 0 and push["raw_rate"] > 0 and push["raw_tx1000_rate"] > 0
    assert set(push["targets"]) == {"rate", "ratio"}
    assert all(isinstance(t["met"], bool) for t in push["targets"].values())
    e2e = report["scenarios"]["e2e"]["matchmaker"]
    assert e2e["succeeded"] == 200 and e2e["max_attempt"] == 1 and e2e["rate"] > 0


def test_compare_runs_every_task_in_both_modes(tmp_path: Path) -> None:
    report = _live(
        tmp_path, "--scenario", "compare", "--compare-tasks", "40", "--mean-duration", "0.1"
    )
    compare = report["scenarios"]["compare"]
    for mode in ("push", "pull"):
        m = compare["modes"][mode]
        assert m["completed"] == m["tasks"] == 40
        assert m["constraint_violations"] == 0
    assert (tmp_path / "live_compare.png").stat().st_size > 0


def test_latency_counts_the_measured_tasks_after_a_warm_up(tmp_path: Path) -> None:
    report = _live(tmp_path, "--scenario", "latency", "--rate", "100", "--duration", "1")
    latency = report["scenarios"]["latency"]
    assert latency["warm_up_tasks"] >= 100 and latency["warm_up_tasks"] % 100 == 0
    assert latency["tasks"] == latency["sent"] == 100  # the warm-up's are not counted
    assert 0 < latency["latency"]["p50"] <= latency["latency"]["p99"] < 5
    assert latency["round_time"]["placed"] >= 100  # its scheduler logs a line per round
    assert isinstance(latency["targets"]["p99"]["met"], bool)


def test_lowload_measures_push_and_pull_on_the_same_paced_work(tmp_path: Path) -> None:
    report = _live(
        tmp_path, "--scenario", "lowload", "--lowload-rate", "40", "--duration", "1",
        "--latency-slots", "8",
    )  # fmt: skip
    lowload = report["scenarios"]["lowload"]
    assert lowload["push"]["tasks"] == lowload["push"]["sent"] == 40
    assert lowload["pull"]["tasks"] == 40 and lowload["pull"]["duplicates"] == 0
    assert sum(lowload["pull"]["tasks_by_worker"].values()) == 40
    for side in ("push", "pull"):
        start = lowload[side]["start"]
        assert start["count"] == 40 and 0 < start["p50"] <= start["p99"] < 5
    gap = lowload["push"]["start"]["p50"] - lowload["pull"]["start"]["p50"]
    assert lowload["start_p50_gap"] == pytest.approx(gap)
    assert lowload["push"]["round_time"]["rounds"] == 0  # its scheduler logs as deployed
    assert isinstance(lowload["targets"]["start_p50"]["met"], bool)


def test_bad_arguments_are_one_sentence() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--tasks", "0"])
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "live", "--scenario", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert "Traceback" not in done.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_sigterm_mid_run_stops_everything_it_started(tmp_path: Path) -> None:
    work = tmp_path / "work"
    before = _vhosts()
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks", "live", "--scenario", "e2e", "--no-celery"),
            *("--tasks", "20000", "--out", str(tmp_path / "live.json"), "--workdir", str(work)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(work.glob("run-*/e2e-*/worker-e2e-b.log")) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0]
            time.sleep(0.1)
        assert _processes_mentioning(str(work)), "the run started nothing to stop"
        run.terminate()
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, output
    assert "interrupted; stopping what it started" in output
    assert _processes_mentioning(str(work)) == []
    _no_new_vhosts(before)


def test_cpu_meter_leaves_out_a_process_gone_by_the_end() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    meter = Meter({"this": os.getpid(), "child": child.pid}).start()
    sum(range(2_000_000))  # some CPU in this process
    child.kill()
    child.wait()
    shares = meter.stop()
    assert set(shares) == {"this"} and shares["this"] > 0


def test_cpu_meter_sees_two_processes_wait_for_one_cpu() -> None:
    busy = (
        "import os, time\nos.sched_setaffinity(0, {0})\n"
        "end = time.time() + 30\nwhile time.time() < end: pass"
    )
    children = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(2)]
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        spinning = lambda: all((cpu_seconds(c.pid) or 0.0) > 0.1 for c in children)  # noqa: E731
        wait_for(spinning, what="both children to spin on CPU 0")
        pids = {"a": children[0].pid, "b": children[1].pid, "idle": idle.pid}
        meter = Meter(pids, every=0.25).start()
        wait_for(lambda: len(meter.samples) >= 5, what="four quarter-second samples")
        cores = meter.stop()
        waits = meter.wait_shares()
    finally:
        for child in (*children, idle):
            child.kill()
            child.wait()
    # Sharing one CPU, each ran about half the time and waited about half.
    assert cores["a"] + cores["b"] < 1.2, cores
    assert waits["a"] > 0.25 and waits["b"] > 0.25, waits
    assert waits["idle"] < 0.05, waits
    intervals = meter.wait_by_interval()
    assert len(intervals) >= 4, intervals  # a quarter second each
    assert abs(sum(intervals) - (waits["a"] + waits["b"] + waits["idle"]) * meter.wall) < 0.05


def _bench_schemas(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'mm_bench_%'")
        return {name for (name,) in rows}


def test_e2e_runs_on_each_ledger_in_turn(tmp_path: Path) -> None:
    from tests.pg_support import admin_url

    url = admin_url()
    before = _bench_schemas(url)
    report = _live(
        tmp_path, "--scenario", "e2e", "--tasks", "200", "--no-celery",
        "--ledger-url", "sqlite", "--ledger-url", url,
    )  # fmt: skip
    e2e = report["scenarios"]["e2e"]
    assert [run["ledger"] for run in e2e["runs"]] == ["sqlite", "postgresql"]
    for run in e2e["runs"]:
        assert run["matchmaker"]["succeeded"] == 200 and run["matchmaker"]["rate"] > 0
    assert set(e2e["by_ledger"]) == {"sqlite", "postgresql"}
    assert len(e2e["postgresql_over_sqlite"]) == 1
    assert _bench_schemas(url) == before  # its schemas were dropped
