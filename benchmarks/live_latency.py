"""``latency``: submit -> worker queue at a paced offered load.

The client publishes ``rate`` no-op ``sleep`` tasks per second for
``duration`` seconds (persistent, no confirms), each carrying its send time
in the payload (``{"seconds": 0, "sent_at": t}``). Two real workers consume.
Latency = queued - ``sent_at``; beside it, submit -> start (the worker's
``started_at``). When a message enters a queue is not seen
directly; later events bound it from above, and ``queued`` is the earliest
of them: the scheduler reading the broker's confirm of the dispatch (the
task's ``assigned`` transition in the ledger) and the worker taking it off
its queue (``received_at``, reported with its result; ``started_at`` where
a worker does not report it). The confirm is read late whenever the
scheduler is busy with a turn, the worker's receipt whenever its connection
thread is, so neither alone is the tighter bound; the report gives the
confirm's own figures beside it, and counts the tasks whose result overtook
the confirm (no transition: the receipt stands in). Split into intake
(``submitted_at`` - sent) and placement (queued - ``submitted_at``), and by
second of the run, so a growing backlog shows.

Beside the CPU each process used, it reports how long each waited for a
CPU and the machine's steal time (``benchmarks.live_cpu``), overall and per
second: on a machine the broker, the scheduler, the workers and the client
share, that is the part of a latency the machine added.

Workers get enough slots (default 1,024) that a free slot is not what the
tasks wait for: this measures the scheduler's path, not the workers' speed.

It measures the steady state with both workers: once the scheduler's
inventory has both (the second one used to join it 0.2-0.5 s after the
measured sending began), a second of warm-up at the same rate (``warm-*``
tasks, not counted). Whether both then get work is the placement's: at a
low rate on idle workers, spread gives every task to the first.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from benchmarks.live_cpu import Meter, broker_pid
from benchmarks.live_env import (
    Env,
    LedgerView,
    describe_rounds,
    paced,
    percentiles,
    request_body,
    rounds,
    sleep_request,
    verdict,
    wait_for,
)
from matchmaker.devtools.cluster import LocalCluster

TARGET_P99 = 0.010  # issue 20's target at 2,000/s
CDF_POINTS = 200


def run(
    env: Env,
    rate: float,
    duration: float,
    slots: int = 1024,
    name: str = "latency",
    round_log: bool = True,
) -> dict[str, Any]:
    count = max(1, round(rate * duration))
    cluster = env.cluster(name, round_log)
    cluster.start_scheduler()
    for name in ("lat-a", "lat-b"):
        cluster.start_worker(name, ["sleep"], slots)
    ledger = LedgerView(cluster)
    env.stack.callback(ledger.close)
    assert cluster.scheduler is not None
    pids = {
        "scheduler": cluster.scheduler.popen.pid,
        "rabbitmq": broker_pid(),
        "client": os.getpid(),
    }
    pids.update({n: p.popen.pid for n, p in cluster.workers.items()})
    watch = [cluster.scheduler, *cluster.workers.values()]
    warm = _warm_up(cluster, ledger, rate, watch)
    meter = Meter(pids, every=1.0).start()

    def make(i: int, now: float) -> bytes:
        return request_body(sleep_request(f"l{i:07d}", payload={"sent_at": now}))

    sent = paced(cluster.broker_url, rate, count, make, bar=env.bar(count, "latency: sending"))
    cpu = meter.stop()
    wait_for(
        lambda: ledger.counts().get("succeeded", 0),
        warm + count,
        max(60.0, count / 200),
        "every task to succeed",
        env.bar(warm + count, "latency: succeeded"),
        watch=watch,
    )
    # A result can overtake the confirm of its dispatch: such a task has no 'assigned'
    # transition, and the worker's receipt bounds the time instead.
    rows = ledger.rows(
        "SELECT t.payload, t.submitted_at, tr.at, coalesce(t.received_at, t.started_at),"
        " t.started_at"
        " FROM tasks t"
        " LEFT JOIN transitions tr ON tr.id = t.id AND tr.state = 'assigned' AND tr.attempt = 1"
        " WHERE t.id LIKE 'l%'"
    )
    payloads, *times = zip(*rows, strict=True)
    submitted, confirmed, received, started = (np.array(t, dtype=float) for t in times)
    sent_at = np.array([json.loads(p)["sent_at"] for p in payloads])
    seen = ~np.isnan(confirmed)
    queued = np.fmin(confirmed, received)  # the earlier bound (the receipt if no confirm)
    latency = queued - sent_at
    order = np.argsort(sent_at)
    second = ((sent_at - sent_at.min()) // 1).astype(int)
    waits = meter.wait_by_interval()  # the meter's seconds start as the sending does
    by_second = [
        {
            "second": int(s),
            **percentiles(latency[second == s]),
            "cpu_wait_s": waits[s] if s < len(waits) else None,
        }
        for s in sorted(set(second))
    ]
    q = np.linspace(0, 1, CDF_POINTS)
    stats = percentiles(latency)
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "sent": len(sent),
        "warm_up_tasks": warm,
        "achieved_rate": (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else 0.0,
        "tasks": len(rows),
        "without_assigned_transition": int((~seen).sum()),
        "slots": slots,
        "round_interval": env.round_interval,
        "latency": stats,
        "intake": percentiles(submitted - sent_at),
        "placement": percentiles(queued - submitted),
        "confirm_read": percentiles(confirmed[seen] - sent_at[seen]),
        "start": percentiles(started - sent_at),
        "worker_receipt_earlier": float(((received < confirmed) | ~seen).mean()),
        "by_second": by_second,
        "round_time": rounds(cluster, float(sent_at.min()), float(queued.max()) + 1.0),
        "cpu_cores": cpu,
        "cpu_wait": meter.wait_shares(),
        "steal_cores": meter.steal,
        "target_p99_s": TARGET_P99,
        "cdf": {"seconds": np.quantile(latency[order], q).tolist(), "fraction": q.tolist()},
        "targets": {
            "p99": verdict(stats["p99"] <= TARGET_P99, f"p99 <= {TARGET_P99 * 1e3:.0f} ms"),
        },
    }


def _warm_up(cluster: LocalCluster, ledger: LedgerView, rate: float, watch: list[Any]) -> int:
    """A second of warm-up at ``rate`` once both workers are in the scheduler's inventory;
    how many tasks it took."""
    assert cluster.scheduler is not None
    for name in cluster.workers:
        cluster.wait_log(cluster.scheduler, f"inventory: joined {name}", 30)
    count = max(1, round(rate))

    def make(i: int, now: float) -> bytes:
        return request_body(sleep_request(f"warm-{i:07d}", payload={"sent_at": now}))

    paced(cluster.broker_url, rate, count, make)
    wait_for(lambda: ledger.counts().get("succeeded", 0), count, 60, "the warm-up", watch=watch)
    return count


def _ms(stats: dict[str, Any]) -> str:
    return "  ".join(f"{k} {stats[k] * 1e3:6.1f}" for k in ("p50", "p95", "p99", "max"))


def table(r: dict[str, Any]) -> list[str]:
    worst = max(r["by_second"], key=lambda s: s["p99"])
    waits = [s["cpu_wait_s"] for s in r["by_second"] if s["cpu_wait_s"] is not None]
    worst_wait = (
        f" (the processes waited {worst['cpu_wait_s']:.2f} s for a CPU in it; "
        f"median second {np.median(waits):.2f} s)"
        if worst["cpu_wait_s"] is not None
        else ""
    )
    return [
        f"offered {r['offered_rate']:,.0f}/s for {r['duration_s']:g} s (achieved "
        f"{r['achieved_rate']:,.0f}/s) after {r['warm_up_tasks']:,} warm-up tasks, "
        f"{r['tasks']:,} of {r['sent']:,} in the ledger; "
        f"round interval {r['round_interval'] * 1e3:g} ms, 2 workers x {r['slots']} slots",
        f"{r['without_assigned_transition']:,} tasks have no 'assigned' transition (their "
        "result overtook the dispatch's confirm): the worker's receipt stands in",
        f"{'submit -> worker queue (ms)':<30} {_ms(r['latency'])}",
        f"{'  intake: sent -> pending (ms)':<30} {_ms(r['intake'])}",
        f"{'  placement: pending -> queued':<30} {_ms(r['placement'])}",
        f"{'submit -> confirm read (ms)':<30} {_ms(r['confirm_read'])}",
        f"{'submit -> worker start (ms)':<30} {_ms(r['start'])}",
        f"the worker's receipt was the earlier bound for {r['worker_receipt_earlier']:.0%} of "
        "tasks",
        f"{describe_rounds(r['round_time'])}; worst second: #{worst['second']} "
        f"p99 {worst['p99'] * 1e3:.1f} ms{worst_wait}",
        f"CPU cores used while sending: {r['cpu_cores']}",
        f"waited for a CPU (s per s): {r['cpu_wait']}; the machine's steal: "
        f"{r['steal_cores']:.3f} cores",
    ]
