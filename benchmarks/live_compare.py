"""``compare``: push vs pull on the same work, on the real system.

The work is the simulation's ``constraints`` scenario (``benchmarks.scenarios``)
at live scale: M workers of 4 slots on three sites, a fifth of them (at least
one) with a GPU; Poisson arrivals at load 0.8; log-normal ``sleep`` durations
of mean ``mean_duration``; 25 % of tasks need one site, 10 % need a GPU, 40 %
prefer a site. Every task becomes a ``sleep`` task of its duration.

- push: ``python -m matchmaker run`` and M push workers; the client sends each
  TaskRequest to ``mm.requests`` at its arrival time. Starts, finishes and
  workers come from the ledger (times are the workers' own).
- pull: the same M workers with ``--mode pull``, no scheduler; the client
  sends the same TaskRequests to ``mm.pull.sleep``; the benchmark consumes
  ``mm.results`` for the start and finish of each task. A pull worker that
  receives a task whose constraints it does not meet hands it back
  (``basic_nack`` requeue); its log's final line counts those requeues.

Both fill a ``benchmarks.record.RunRecord`` (times from the first send), so
the metrics, the table and the plots are the simulation's: makespan, t99,
throughput, wait (start - send) p50/p95/p99, utilisation, requeues,
constraint violations, locality. Scheduler CPU per task is the scheduler
process's CPU time (push only).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.live_cpu import cpu_seconds
from benchmarks.live_env import Env, LedgerView, Results, paced, wait_for
from benchmarks.record import RunRecord, check_placement, metrics
from benchmarks.scenarios import Scenario, ScenarioParams, Workload, constraints
from benchmarks.sim import table as sim_table
from matchmaker.devtools.cluster import LocalCluster
from matchmaker.messages import TaskRequest, encode
from matchmaker.models import Task, Worker
from matchmaker.wire import broker

TASK_TYPE = "sleep"
REQUEUED = re.compile(r"worker stopped name=(\S+) .*requeued=(\d+)")


def workload(tasks: int, workers: int, mean_duration: float, seed: int) -> Scenario:
    """The constraints scenario with every task a ``sleep`` task and one GPU worker at least."""
    base = constraints(ScenarioParams(tasks, workers, seed, mean_duration))
    sim_workers = base.workers
    if not any(w.attributes.get("gpu") for w in sim_workers):
        last = sim_workers[-1]
        sim_workers[-1] = replace(last, attributes={**last.attributes, "gpu": 1})
    load = base.workload
    sleep_tasks = [
        Task(t.id, TASK_TYPE, t.priority, t.constraints, t.preferences, t.submitted_at)
        for t in load.tasks
    ]
    return Scenario(
        "live compare",
        base.description,
        sim_workers,
        Workload(sleep_tasks, load.arrival - load.arrival[0], load.duration),
    )


def _request(task: Task, seconds: float) -> TaskRequest:
    return TaskRequest(
        task.id,
        TASK_TYPE,
        {"seconds": round(float(seconds), 4)},
        priority=task.priority,
        constraints={c.attribute: c.to_json() for c in task.constraints},
        preferences={c.attribute: c.to_json() for c in task.preferences},
        timeout=600,
    )


def run(env: Env, tasks: int, workers: int, mean_duration: float, seed: int) -> dict[str, Any]:
    scenario = workload(tasks, workers, mean_duration, seed)
    bodies = [
        encode(_request(t, d))
        for t, d in zip(scenario.workload.tasks, scenario.workload.duration, strict=True)
    ]
    modes = {
        "push": _push(env, scenario, bodies),
        "pull": _pull(env, scenario, bodies),
    }
    report: dict[str, Any] = {
        "tasks": tasks,
        "workers": [
            {"name": w.name, "slots": w.slots, "attributes": w.attributes} for w in scenario.workers
        ],
        "description": scenario.description,
        "offered_load": 0.8,
        "mean_duration_s": mean_duration,
        "arrival_window_s": float(scenario.workload.arrival[-1]),
        "modes": {},
    }
    for mode, (record, extra) in modes.items():
        report["modes"][mode] = {**metrics(record, _with_arrival(scenario, extra)), **extra}
    report["verdict"] = _verdict(report["modes"])
    return report


def _with_arrival(scenario: Scenario, extra: dict[str, Any]) -> Scenario:
    load = scenario.workload
    arrival = np.asarray(extra.pop("_arrival"), dtype=np.float64)
    return replace(scenario, workload=Workload(load.tasks, arrival, load.duration))


def _models(scenario: Scenario) -> dict[str, Worker]:
    return {
        w.name: Worker(w.name, {TASK_TYPE}, w.slots, attributes=w.attributes)
        for w in scenario.workers
    }


def _start_workers(cluster: LocalCluster, scenario: Scenario, mode: str) -> None:
    for w in scenario.workers:
        process = cluster.start_worker(
            w.name, [TASK_TYPE], w.slots, w.attributes, mode=mode, extra=["--grace", "5"]
        )
        if mode == "pull":
            cluster.wait_log(process, "consuming mode=pull", 30)


def _record(
    mode: str,
    scenario: Scenario,
    sent: list[float],
    runs: dict[str, tuple[str, float, float]],
) -> RunRecord:
    """A RunRecord from (worker, started, finished) per task id, times from the first send."""
    t0 = sent[0]
    models = _models(scenario)
    index = {name: k for k, name in enumerate(models)}
    record = RunRecord(mode, len(scenario.workload))
    record.capacity(0.0, sum(w.slots for w in scenario.workers))
    for i, task in enumerate(scenario.workload.tasks):
        if task.id not in runs:
            continue
        worker, started, finished = runs[task.id]
        local, violation = check_placement(task, models[worker])
        record.complete(i, started - t0, finished - t0, index[worker], local, violation)
        record.busy(started - t0, 1)
        record.busy(finished - t0, -1)
    return record


def _push(env: Env, scenario: Scenario, bodies: list[bytes]) -> tuple[RunRecord, dict[str, Any]]:
    cluster = env.cluster("compare-push", round_log=False)  # as deployed, like pull
    cluster.start_scheduler()
    _start_workers(cluster, scenario, "push")
    assert cluster.scheduler is not None
    cpu0 = cpu_seconds(cluster.scheduler.popen.pid) or 0.0
    ledger = LedgerView(cluster)
    env.stack.callback(ledger.close)
    count = len(bodies)
    started = time.monotonic()
    sent = paced(
        cluster.broker_url,
        0,
        count,
        lambda i, _now: bodies[i],
        offsets=scenario.workload.arrival.tolist(),
        bar=env.bar(count, "compare push: sending"),
    )
    wait_for(
        lambda: ledger.counts().get("succeeded", 0),
        count,
        120,
        "every push task to succeed",
        env.bar(count, "compare push: succeeded"),
        watch=[cluster.scheduler, *cluster.workers.values()],
    )
    wall = time.monotonic() - started
    cpu = (cpu_seconds(cluster.scheduler.popen.pid) or 0.0) - cpu0
    rows = ledger.rows("SELECT id, worker, started_at, finished_at, attempt FROM tasks")
    runs = {i: (w, s, f) for i, w, s, f, _ in rows}
    rounds = len({row[3] for row in ledger.transitions("assigned")})
    record = _record("push", scenario, sent, runs)
    record.requeues = sum(a - 1 for *_, a in rows)
    record.rounds = rounds
    record.plan_seconds = cpu
    record.wall_seconds = wall
    ledger.close()
    cluster.stop()
    arrival = [s - sent[0] for s in sent]
    return record, {"_arrival": arrival, "scheduler_cpu_s": cpu}


def _pull(env: Env, scenario: Scenario, bodies: list[bytes]) -> tuple[RunRecord, dict[str, Any]]:
    cluster = env.cluster("compare-pull")
    _start_workers(cluster, scenario, "pull")
    results = Results(cluster.broker_url).start()
    env.stack.callback(results.stop)
    count = len(bodies)
    started = time.monotonic()
    sent = paced(
        cluster.broker_url,
        0,
        count,
        lambda i, _now: bodies[i],
        queue=broker.pull_queue(TASK_TYPE),
        offsets=scenario.workload.arrival.tolist(),
        bar=env.bar(count, "compare pull: sending"),
    )
    wait_for(
        results.count,
        count,
        120,
        "every pull task to succeed",
        env.bar(count, "compare pull: succeeded"),
        watch=cluster.workers.values(),
    )
    wall = time.monotonic() - started
    results.stop()
    cluster.stop()
    requeues = 0
    for process in cluster.workers.values():
        for match in REQUEUED.finditer(process.log.read_text(errors="replace")):
            requeues += int(match.group(2))
    runs = {
        i: (r.worker, r.started_at or 0.0, r.finished_at or 0.0) for i, r in results.finals.items()
    }
    record = _record("pull", scenario, sent, runs)
    record.requeues = requeues
    record.duplicates = results.duplicates
    record.wall_seconds = wall
    arrival = [s - sent[0] for s in sent]
    return record, {"_arrival": arrival, "failed_results": results.failed}


def _verdict(modes: dict[str, dict[str, Any]]) -> list[str]:
    push, pull = modes["push"], modes["pull"]
    lines = []

    def compare(label: str, a: float, b: float, unit: str, lower_better: bool = True) -> None:
        if abs(a - b) <= 0.05 * max(abs(a), abs(b), 1e-9):
            lines.append(f"{label}: a tie (push {a:.3g}{unit}, pull {b:.3g}{unit})")
            return
        push_wins = (a < b) == lower_better
        winner, loser = ("push", "pull") if push_wins else ("pull", "push")
        lines.append(
            f"{label}: {winner} wins ({winner} {a if push_wins else b:.3g}{unit}, "
            f"{loser} {b if push_wins else a:.3g}{unit})"
        )

    compare("makespan", push["makespan"], pull["makespan"], " s")
    compare("median wait", push["wait"]["p50"], pull["wait"]["p50"], " s")
    compare("p99 wait", push["wait"]["p99"], pull["wait"]["p99"], " s")
    compare("utilisation until t99", push["utilisation"], pull["utilisation"], "", False)
    lines.append(
        f"constraint violations: push {push['constraint_violations']}, "
        f"pull {pull['constraint_violations']}; pull requeued {pull['requeues']} deliveries"
    )
    if push["locality_rate"] is not None and pull["locality_rate"] is not None:
        compare(
            "locality (preferred site)", push["locality_rate"], pull["locality_rate"], "", False
        )
    return lines


def table(r: dict[str, Any]) -> list[str]:
    head = (
        f"{len(r['workers'])} workers x 4 slots ({', '.join(_describe(w) for w in r['workers'])}); "
        f"{r['tasks']} sleep tasks, mean {r['mean_duration_s']:g} s, load "
        f"{r['offered_load']}, arrivals over {r['arrival_window_s']:.1f} s"
    )
    shaped = {"scenarios": [{"name": "live", "modes": r["modes"], "verdict": r["verdict"]}]}
    body = sim_table(shaped).splitlines()[:-2]  # its footnote speaks of the simulation
    return [
        head,
        *body,
        "wait = start - send (s); util = busy / live slot-seconds until t99; requeue: push = "
        "attempts after the first,\npull = deliveries handed back; local = tasks on a preferred "
        "site / tasks with a preference;\ncpu us/task = the scheduler process's CPU per task.",
    ]


def _describe(worker: dict[str, Any]) -> str:
    attrs = worker["attributes"]
    return f"{worker['name']}:{attrs.get('site')}{'+gpu' if attrs.get('gpu') else ''}"
