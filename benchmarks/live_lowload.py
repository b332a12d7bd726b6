"""``lowload``: push against pull at a low rate on idle workers.

Both sides get two workers of ``slots`` slots each (so a free slot is never
what a task waits for) and the same paced no-op ``sleep`` tasks, ``rate`` per
second for ``duration`` seconds, each carrying its send time:

- push: ``live_latency.run`` (the scheduler, two push workers, the tasks sent
  to ``mm.requests``); submit -> start is read from the ledger. The scheduler
  logs as deployed (``Env.cluster``'s ``round_log``);
- pull: two ``--mode pull`` workers and no scheduler, the tasks sent to
  ``mm.pull.sleep``; submit -> start from the results on ``mm.results``.

A start is the worker's ``started_at`` and a send the client's clock, on one
machine. Each side warms up first (a second of tasks, not counted). Target:
push's median submit -> start within 1 ms of pull's (what one more broker leg
and the scheduler's turn may cost).
"""

from __future__ import annotations

from typing import Any

from benchmarks import live_latency
from benchmarks.live_env import (
    Env,
    Results,
    paced,
    percentiles,
    request_body,
    sleep_request,
    verdict,
    wait_for,
)
from matchmaker.wire import broker

TARGET_GAP = 0.001
WORKERS = ("low-a", "low-b")


def run(env: Env, rate: float, duration: float, slots: int = 1024) -> dict[str, Any]:
    push = live_latency.run(env, rate, duration, slots, name="lowload", round_log=False)
    pull = _pull(env, rate, duration, slots)
    gap = push["start"]["p50"] - pull["start"]["p50"]
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "slots": slots,
        "push": push,
        "pull": pull,
        "start_p50_gap": gap,
        "targets": {
            "start_p50": verdict(
                gap <= TARGET_GAP,
                f"push median submit -> start within {TARGET_GAP * 1e3:g} ms of pull's",
            )
        },
    }


def _pull(env: Env, rate: float, duration: float, slots: int) -> dict[str, Any]:
    cluster = env.cluster("lowload-pull")
    for name in WORKERS:
        process = cluster.start_worker(name, ["sleep"], slots, mode="pull")
        cluster.wait_log(process, "consuming mode=pull", 30)
    results = Results(cluster.broker_url).start()
    env.stack.callback(results.stop)
    queue = broker.pull_queue("sleep")
    watch = list(cluster.workers.values())

    sent: dict[str, float] = {}

    def send(prefix: str, count: int) -> None:
        def make(i: int, now: float) -> bytes:
            task_id = f"{prefix}{i:07d}"
            sent[task_id] = now
            return request_body(sleep_request(task_id, payload={"sent_at": now}))

        paced(cluster.broker_url, rate, count, make, queue, bar=env.bar(count, "lowload pull"))

    warm = max(1, round(rate))
    send("warm-", warm)
    wait_for(results.count, warm, 60, "the pull warm-up", watch=watch)
    count = max(1, round(rate * duration))
    send("l", count)
    wait_for(results.count, warm + count, max(60.0, count / 200), "every pull task", watch=watch)
    results.stop()
    measured = [r for i, r in results.finals.items() if i.startswith("l")]
    starts = [r.started_at - sent[r.id] for r in measured if r.started_at is not None]
    by_worker = {name: sum(r.worker == name for r in measured) for name in WORKERS}
    cluster.stop()
    return {
        "tasks": len(measured),
        "start": percentiles(starts),
        "tasks_by_worker": by_worker,
        "duplicates": results.duplicates,
    }


def _ms(stats: dict[str, Any]) -> str:
    return "  ".join(f"{k} {stats[k] * 1e3:6.1f}" for k in ("p50", "p95", "p99", "max"))


def table(r: dict[str, Any]) -> list[str]:
    push, pull = r["push"], r["pull"]
    spread = ", ".join(f"{name} {n:,}" for name, n in pull["tasks_by_worker"].items())
    return [
        f"{r['offered_rate']:,.0f}/s for {r['duration_s']:g} s on 2 idle workers x {r['slots']} "
        "slots, push then pull",
        f"{'push: submit -> worker start (ms)':<36} {_ms(push['start'])}",
        f"{'      placement: pending -> queued':<36} {_ms(push['placement'])}",
        f"{'pull: submit -> worker start (ms)':<36} {_ms(pull['start'])}  ({spread})",
        f"push - pull at the median: {r['start_p50_gap'] * 1e3:+.2f} ms; CPU cores used while "
        f"push sent: {push['cpu_cores']}",
    ]
