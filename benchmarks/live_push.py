"""``push``: how fast the scheduler moves a backlog from ``mm.requests`` onto worker queues.

Set-up: N TaskRequests are preloaded into ``mm.requests`` while no scheduler
runs; K bare Serf agents advertise worker tags (``slots`` each, so that every
task is placed) but no process consumes their queues, so every dispatch stays
there. Then the scheduler starts. Rate = N / (last ``assigned`` transition -
first ``submitted`` transition), both from the ledger: intake (validate,
ledger insert, ack), rounds (``plan()``), the confirmed publish and the
ledger update are all inside the window.

Reference, same run, same broker: the raw pika publish rate of N persistent
dispatch-sized messages to a queue of ``broker.queue_type()``, without confirms
(timed until a round trip after the last one) and in one transaction per
1,000 messages; each the median of ``RAW_RUNS`` runs (a single one varies by
a third between runs here).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from benchmarks.live_cpu import Meter, broker_pid
from benchmarks.live_env import (
    BATCH,
    Env,
    LedgerView,
    channel,
    describe_rounds,
    publish_requests,
    request_body,
    rounds,
    sleep_request,
    verdict,
    wait_for,
)
from matchmaker.messages import TaskDispatch, decode_dispatches, encode
from matchmaker.wire import broker
from membership.agent import SerfAgent
from membership.table import fetch_workers
from membership.tags import MAX_SLOTS, encode_worker_tags

RAW_QUEUE = "mm.bench.raw"
TARGET_RATE = 10_000.0
TARGET_RATIO = 0.75
RAW_RUNS = 3


def raw_publish(url: str, count: int, tx_batch: int | None) -> float:
    """Messages/s of ``count`` persistent dispatch-sized publishes; ``tx_batch``: commit each n."""
    bodies = [
        encode(TaskDispatch(f"raw-{i:07d}", 1, "sleep", {"seconds": 0}, time.time() + 3600))
        for i in range(count)
    ]
    with channel(url) as ch:
        ch.queue_delete(RAW_QUEUE)
        ch.queue_declare(RAW_QUEUE, durable=True, arguments={"x-queue-type": broker.queue_type()})
        if tx_batch:
            ch.tx_select()
        started = time.perf_counter()
        for i, body in enumerate(bodies, 1):
            ch.basic_publish("", RAW_QUEUE, body, broker.PERSISTENT)
            if tx_batch and i % tx_batch == 0:
                ch.tx_commit()
        if tx_batch:
            ch.tx_commit()
        ch.queue_declare(RAW_QUEUE, durable=True, passive=True)  # round trip after the last
        elapsed = time.perf_counter() - started
        stored = ch.queue_declare(RAW_QUEUE, durable=True, passive=True).method.message_count
        ch.queue_delete(RAW_QUEUE)
    if tx_batch and stored != count:
        raise RuntimeError(f"raw publish: {stored} of {count} messages in the queue")
    return count / elapsed


def queued_dispatches(url: str, workers: list[str]) -> tuple[int, int]:
    """Messages and dispatches in these workers' queues, read off (the queues are left empty)."""
    messages = dispatches = 0
    with channel(url) as ch:
        for name in workers:
            while True:
                method, _props, body = ch.basic_get(broker.worker_queue(name), auto_ack=True)
                if method is None:
                    break
                messages += 1
                dispatches += len(decode_dispatches(body).items)
    return messages, dispatches


def run(env: Env, tasks: int, workers: int, slots: int) -> dict[str, Any]:
    slots = min(slots, MAX_SLOTS)
    workers = max(workers, math.ceil(tasks / slots))
    cluster = env.cluster("push")
    url = cluster.broker_url

    t0 = time.perf_counter()
    publish_requests(url, (request_body(sleep_request(f"p{i:07d}")) for i in range(tasks)))
    preload = tasks / (time.perf_counter() - t0)

    raw_runs = [raw_publish(url, tasks, None) for _ in range(RAW_RUNS)]
    raw_tx_runs = [raw_publish(url, tasks, BATCH) for _ in range(RAW_RUNS)]
    raw, raw_tx = statistics.median(raw_runs), statistics.median(raw_tx_runs)

    agent = cluster.start_agent()
    names = [f"bare{k:03d}" for k in range(workers)]
    for name in names:
        bare = SerfAgent(
            name,
            tags=encode_worker_tags(name, ["sleep"], slots),
            join=[agent.bind_addr],
            encrypt_key=cluster.encrypt_key,
            rpc_auth=cluster.auth_key,
            workdir=cluster.workdir / f"serf-{name}",
        )
        env.stack.callback(bare.kill)  # after the scheduler stopped: no one to tell
        bare.start()
    wait_for(
        lambda: sum(
            1 for w in fetch_workers(agent.rpc_addr, cluster.auth_key) if w.status == "alive"
        ),
        workers,
        30,
        "the bare worker agents to join",
    )

    ledger = LedgerView(cluster)
    env.stack.callback(ledger.close)
    # Bare agents never consume their queues: broker-side liveness would keep them out.
    cluster.scheduler_args = (*cluster.scheduler_args, "--liveness-vhost", "")
    scheduler = cluster.start_scheduler(wait=False)
    env.stack.callback(scheduler.stop)  # before the bare agents go: nothing to reschedule
    meter = Meter({"scheduler": scheduler.popen.pid, "rabbitmq": broker_pid()}).start()
    wait_for(
        lambda: ledger.counts().get("assigned", 0),
        tasks,
        max(120.0, tasks / 200),
        "every task to be assigned",
        env.bar(tasks, "push: assigned"),
        watch=[scheduler],
    )
    cpu = meter.stop()

    submitted = sorted(at for *_, at, note in ledger.transitions("pending") if note == "submitted")
    assigned = ledger.transitions("assigned")
    at = sorted(row[3] for row in assigned)
    spent = rounds(cluster, submitted[0], at[-1] + 1.0)  # a round logs after its commit
    per_worker: dict[str, int] = {}
    for row in assigned:
        per_worker[row[2]] = per_worker.get(row[2], 0) + 1
    messages, queued = queued_dispatches(url, list(per_worker))
    window = at[-1] - submitted[0]
    rate = tasks / window
    return {
        "tasks": tasks,
        "workers": workers,
        "slots": slots,
        "queue_type": broker.queue_type(),
        "round_interval": env.round_interval,
        "assigned": len({row[0] for row in assigned}),
        "in_worker_queues": queued,
        "worker_queue_messages": messages,
        "push_rate": rate,
        "raw_rate": raw,
        "raw_tx1000_rate": raw_tx,
        "raw_runs": raw_runs,
        "raw_tx1000_runs": raw_tx_runs,
        "preload_tx1000_rate": preload,
        "ratio_raw": rate / raw,
        "ratio_raw_tx1000": rate / raw_tx,
        "window_s": window,
        "intake_span_s": submitted[-1] - submitted[0],
        "first_assigned_after_s": at[0] - submitted[0],
        "round_time": spent,
        "cpu_cores": cpu,
        "steal_cores": meter.steal,
        "targets": {
            "rate": verdict(rate >= TARGET_RATE, f">= {TARGET_RATE:,.0f} tasks/s"),
            "ratio": verdict(rate / raw >= TARGET_RATIO, f">= {TARGET_RATIO}x raw"),
        },
    }


def _runs(rates: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in rates)


def table(r: dict[str, Any]) -> list[str]:
    return [
        f"tasks {r['tasks']:,} onto {r['workers']} bare workers x {r['slots']} slots "
        f"({r['queue_type']} queues); {r['assigned']:,} assigned, "
        f"{r['in_worker_queues']:,} in worker queues ({r['worker_queue_messages']:,} messages)",
        f"{'push (ledger: first submitted -> last assigned)':<52} {r['push_rate']:>10,.0f} /s",
        f"{'raw pika publish, persistent, no confirms':<52} {r['raw_rate']:>10,.0f} /s"
        f"   (median of {_runs(r['raw_runs'])})",
        f"{'raw pika publish, one tx per 1,000':<52} {r['raw_tx1000_rate']:>10,.0f} /s"
        f"   (median of {_runs(r['raw_tx1000_runs'])})",
        f"{'client preload to mm.requests, one tx per 1,000':<52} "
        f"{r['preload_tx1000_rate']:>10,.0f} /s",
        f"push / raw = {r['ratio_raw']:.2f}x   push / raw-tx = {r['ratio_raw_tx1000']:.2f}x",
        f"window {r['window_s']:.2f} s: intake {r['intake_span_s']:.2f} s, first assigned at "
        f"{r['first_assigned_after_s']:.3f} s; {describe_rounds(r['round_time'])}",
        f"CPU cores used: {r['cpu_cores']}; the machine's steal: {r['steal_cores']:.3f} cores",
    ]
