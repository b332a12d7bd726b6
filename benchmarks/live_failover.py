"""``failover``: a busy worker is killed with kill -9; how soon do its tasks run elsewhere?

Each repeat builds a fresh cluster: the scheduler and two workers of 4
slots; 4 long ``sleep`` tasks are spread over both. When all run, the
worker holding the most of them gets SIGKILL (its Serf agent dies with it,
by PDEATHSIG). Measured from the kill:

- (a) Serf's detection: the worker leaves a ``membership.inventory.Inventory``
  following the scheduler's own agent (resynced every 0.1 s, so this is
  Serf's failure detection plus at most 0.1 s);
- (b) recovery: the last of its tasks has a ``running`` transition with
  attempt 2 in the ledger, reported by the surviving worker.

The scheduler hears of the kill from the broker (its consumer goes with its
connection, ``matchmaker.liveness``) when the event exchange plugin is on,
else from Serf. Target: (b) <= 1 s, and never later than (a) + 1 s.
Medians over the repeats.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from typing import Any

from benchmarks.live_env import Env, LedgerView, LiveError, median, sleep_request, verdict, wait_for
from membership.inventory import Change, Inventory

SLOTS = 4
TASKS = 4
TASK_SECONDS = 20.0
SLACK = 1.0
RECOVERY = 1.0  # seconds from the kill to its tasks running elsewhere


def run(env: Env, repeats: int) -> dict[str, Any]:
    runs = []
    bar = env.bar(repeats, "failover: repeats")
    for k in range(repeats):
        runs.append(_once(env, k))
        bar.update(k + 1)
    bar.close()
    detection = median(r["detection_s"] for r in runs)
    recovery = median(r["recovery_s"] for r in runs)
    return {
        "repeats": repeats,
        "runs": runs,
        "detection_median_s": detection,
        "recovery_median_s": recovery,
        "recovery_first_median_s": median(r["recovery_first_s"] for r in runs),
        "targets": {
            "recovery": verdict(
                recovery <= RECOVERY,
                f"a kill -9'd worker's tasks running elsewhere <= {RECOVERY:g} s (median)",
            ),
            "after_serf": verdict(
                recovery <= detection + SLACK,
                f"tasks running elsewhere <= Serf's detection + {SLACK:g} s (medians)",
            ),
        },
    }


def _once(env: Env, k: int) -> dict[str, Any]:
    with env.stack.pop_all() as stack:  # this repeat's processes stop at its end
        sub = Env(env.amqp, env.workdir, env.progress, env.round_interval, stack)
        cluster = sub.cluster(f"failover{k}")
        cluster.start_scheduler()
        for name in ("fo-a", "fo-b"):
            cluster.start_worker(name, ["sleep"], SLOTS, extra=["--grace", "0"])
        assert cluster.agent is not None
        gone: dict[str, float] = {}
        seen = threading.Event()

        def on_change(change: Change) -> None:
            if change.gone and change.name not in gone:
                gone[change.name] = time.time()
                seen.set()

        inventory = Inventory(
            cluster.agent.rpc_addr, cluster.auth_key, on_change=on_change, resync=0.1
        ).start()
        stack.callback(inventory.stop)
        ledger = LedgerView(cluster)
        stack.callback(ledger.close)
        ids = cluster.submit(
            *(sleep_request(f"f{k}-{i}", TASK_SECONDS, timeout=600) for i in range(TASKS))
        )
        wait_for(lambda: ledger.counts().get("running", 0), TASKS, 30, "the tasks to run")
        where = dict(ledger.rows("SELECT id, worker FROM tasks"))
        victim, held = Counter(where.values()).most_common(1)[0]
        moved = {i for i in ids if where[i] == victim}
        killed = time.time()
        cluster.workers[victim].popen.send_signal(signal.SIGKILL)

        def rerun() -> int:
            rows = ledger.transitions("running", attempt=2)
            return sum(1 for row in rows if row[0] in moved and row[2] != victim)

        wait_for(rerun, len(moved), 60, f"the tasks of {victim} to run elsewhere")
        if not seen.wait(10) or victim not in gone:
            raise LiveError(f"the inventory never reported {victim} gone")
        again = [row[3] for row in ledger.transitions("running", attempt=2) if row[0] in moved]
        return {
            "victim": victim,
            "tasks_moved": held,
            "detection_s": gone[victim] - killed,
            "recovery_s": max(again) - killed,
            "recovery_first_s": min(again) - killed,
        }


def table(r: dict[str, Any]) -> list[str]:
    lines = [f"{'run':<4} {'victim':<7} {'moved':>5} {'detect s':>9} {'running again s':>16}"]
    for k, run_ in enumerate(r["runs"]):
        lines.append(
            f"{k:<4} {run_['victim']:<7} {run_['tasks_moved']:>5} {run_['detection_s']:>9.2f} "
            f"{run_['recovery_s']:>16.2f}"
        )
    lines.append(
        f"median: Serf's detection (kill -> out of its inventory) "
        f"{r['detection_median_s']:.2f} s; "
        f"kill -> all its tasks running elsewhere {r['recovery_median_s']:.2f} s "
        f"(first {r['recovery_first_median_s']:.2f} s)"
    )
    return lines
