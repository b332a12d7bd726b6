"""``python -m benchmarks`` as a user runs it: subprocesses, JSON and PNG on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACE = REPO.parent / "shared" / "traces" / "NASA-iPSC-1993-3.1-cln.swf"


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_solver_small_size_writes_valid_json(tmp_path: Path) -> None:
    out, png = tmp_path / "solver.json", tmp_path / "solver.png"
    done = bench(
        "solver", "--sizes", "200x20", "--rounds", "1", "--out", str(out), "--plot", str(png)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (row,) = report["sizes"]
    assert (row["tasks"], row["workers"]) == (200, 20)
    assert row["classes"] == 50 and len(row["plan_ms"]["all"]) == 1
    assert set(row["stages_ms"]) == {
        "classes",
        "feasibility",
        "network",
        "solve",
        "disaggregate",
        "explain",
    }
    assert row["reference"]["status"] == "ok"
    assert row["reference"]["placed"] == row["placed"]  # plan() places the max flow
    assert row["greedy"]["placed"] <= row["placed"]
    assert row["memory"]["plan_peak_bytes_per_task"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "200 x 20" in done.stdout


def test_ledger_compares_both_checkpoint_modes(tmp_path: Path) -> None:
    out = tmp_path / "ledger.json"
    done = bench("ledger", "--seconds", "1", "--batch", "20", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [m["checkpoints"] for m in report["modes"]] == ["automatic", "background"]
    for mode in report["modes"]:
        assert mode["commits"] > 10 and mode["commits"] % 2 == 0  # pending, then assigned
        assert 0 < mode["p50_ms"] <= mode["p99_ms"] <= mode["max_ms"]
    assert "background" in done.stdout


def test_ledger_also_times_a_postgresql_ledger(tmp_path: Path) -> None:
    from tests.pg_support import admin_url

    out = tmp_path / "ledger.json"
    done = bench(
        "ledger", "--seconds", "1", "--batch", "20", "--ledger-url", admin_url(), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    modes = json.loads(out.read_text())["modes"]
    assert [m["checkpoints"] for m in modes] == ["automatic", "background", "postgresql"]
    assert modes[2]["commits"] > 4 and 0 < modes[2]["p50_ms"] <= modes[2]["max_ms"]


def synthetic_swf(path: Path, jobs: int) -> Path:
    """A small SWF file (18 fields a job) for when the shared trace is not beside the clone."""
    lines = ["; MaxProcs: 128", "; MaxNodes: 128"]
    for i in range(1, jobs + 1):
        submit, runtime, procs = 30 * i, 60 + (i * 37) % 900, 2 ** (i % 6)
        lines.append(f"{i} {submit} -1 {runtime} {procs} -1 -1 -1 -1 -1 1 1 1 -1 -1 -1 -1 -1")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sim_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    trace = TRACE if TRACE.is_file() else synthetic_swf(tmp_path / "trace.swf", 400)
    done = bench(
        "sim",
        "--scenario",
        "constraints",
        "trace",
        "--tasks",
        "400",
        "--workers",
        "12",
        "--trace",
        str(trace),
        "--trace-jobs",
        "300",
        "--out",
        str(out),
        "--plot-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["constraints", "trace"]
    constraints = report["scenarios"][0]["modes"]
    assert set(constraints) == {"push", "pull", "pull-naive"}
    assert constraints["push"]["completed"] == 400
    assert report["scenarios"][1]["modes"]["pull"]["completed"] == 300
    for name in ("sim_wait_cdf.png", "sim_utilisation.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    done = bench("sim", "--scenario", "trace", "--trace", str(tmp_path / "nope.swf"))
    assert done.returncode == 2
    assert "SWF trace not found" in done.stderr and "Traceback" not in done.stderr
    done = bench("solver", "--sizes", "lots")
    assert done.returncode == 2
    assert "bad size 'lots'" in done.stderr and "Traceback" not in done.stderr
    done = bench("sim", "--tasks", "-3")
    assert done.returncode == 2 and "Traceback" not in done.stderr
