"""``ledger``: how long the scheduler's loop waits in ``Ledger.commit()``.

Model: the loop of the scheduler at a steady load, without the broker. Each
turn records ``batch`` new tasks pending and commits; the next turn records
them assigned and commits; turns are ``gap`` seconds apart, so the load is
``batch / (2 * gap)`` tasks/s (less the time the commits take). Run twice on
fresh ledgers: with SQLite's automatic checkpoint (inside the COMMIT that
takes the log past 1,000 pages) and with ``background_checkpoints`` (the
``Checkpointer`` thread); with ``--ledger-url`` a third time on PostgreSQL (a
fresh schema in that database, dropped afterwards). Reported per mode: commit
time percentiles, the commits over 5 ms, the loop's total time in commits, and
SQLite's log file's size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from matchmaker.ledger import Ledger, TaskLedger, open_url
from matchmaker.messages import TaskRequest

STALL = 0.005


def run_mode(
    background: bool, batch: int, gap: float, seconds: float, url: str = ""
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mm-ledger-bench-") as directory:
        path = Path(directory) / "ledger.sqlite"
        schema = ""
        ledger: TaskLedger
        if url:
            from benchmarks.live_env import fresh_schema

            in_schema, schema = fresh_schema(url, "ledger")
            ledger = open_url(in_schema, Path(directory))
        else:
            ledger = Ledger(path, background_checkpoints=background)
        ledger.take_lead("benchmark")  # every commit checks the epoch, as the scheduler's
        spent: list[float] = []

        def turn() -> None:
            t = time.perf_counter()
            ledger.commit()
            spent.append(time.perf_counter() - t)
            time.sleep(gap)

        tasks = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            requests = [TaskRequest(f"t{tasks + i:09d}", "sleep") for i in range(batch)]
            tasks += batch
            now = time.time()
            ledger.add(requests, now)
            turn()
            ledger.assign([(r.id, 1, "w1", now) for r in requests])
            turn()
        elapsed = time.perf_counter() - started
        wal = path.with_name(path.name + "-wal")
        log_bytes = wal.stat().st_size if wal.exists() else 0
        ledger.close()
        if schema:
            from benchmarks.live_env import drop_schema

            drop_schema(url, schema)
    ms = np.array(spent) * 1e3
    return {
        "checkpoints": "postgresql" if url else "background" if background else "automatic",
        "tasks_per_s": tasks / elapsed,
        "commits": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
        "over_5ms": int((ms > STALL * 1e3).sum()),
        "commit_s": float(ms.sum() / 1e3),
        "log_mb": log_bytes / 1e6,
    }


def run(batch: int, gap: float, seconds: float, url: str = "") -> dict[str, Any]:
    modes = [run_mode(background, batch, gap, seconds) for background in (False, True)]
    if url:
        modes.append(run_mode(False, batch, gap, seconds, url))
    return {"batch": batch, "gap_s": gap, "seconds": seconds, "modes": modes}


def table(report: dict[str, Any]) -> str:
    lines = [
        f"ledger commits: {report['batch']} tasks per turn, turns {report['gap_s'] * 1e3:g} ms "
        f"apart, {report['seconds']:g} s per mode",
        f"{'checkpoints':<12} {'tasks/s':>8} {'commits':>8} {'p50':>6} {'p99':>6} "
        f"{'p99.9':>6} {'max ms':>7} {'>5ms':>5} {'in commit s':>12} {'log MB':>7}",
    ]
    for m in report["modes"]:
        lines.append(
            f"{m['checkpoints']:<12} {m['tasks_per_s']:>8,.0f} {m['commits']:>8} "
            f"{m['p50_ms']:>6.2f} {m['p99_ms']:>6.2f} {m['p999_ms']:>6.2f} {m['max_ms']:>7.2f} "
            f"{m['over_5ms']:>5} {m['commit_s']:>12.2f} {m['log_mb']:>7.1f}"
        )
    return "\n".join(lines)
