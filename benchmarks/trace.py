"""Replay an SWF log (``benchmarks.swf``) as a simulated workload.

The mapping from the log's jobs to tasks and workers:

- machine -> workers: ``MaxProcs`` (else ``MaxNodes``, else the widest job)
  processors become that many slots, on ``ceil(procs / 4)`` workers of 4
  slots at three sites (round robin), each running every task type;
- job -> one task (jobs with an unknown or negative run time are dropped, and
  counted);
- run time -> duration: ``max(run time, 1 s) * time_scale``;
- submit time -> arrival: ``(submit - first submit) * time_scale / k``. The
  compression factor ``k`` is chosen so the offered load (sum of durations /
  arrival span / slots) equals ``load``: one task per job needs one slot,
  not the job's processors, so the raw log would leave the slots nearly idle.
  Compressing inter-arrival times is the usual way to scale a log's load;
- executable (application) number -> task type ``app<executable mod 4>``;
  when unknown, the user id stands in for it (``app<user mod 4>``);
- processors -> priority band: ``min(9, round(log2(processors)))``, so a
  128-processor job gets 7 and a serial job 0 (a wider job stands for a
  bigger allocation);
- user -> tenant -> preferred site: ``site[user mod 3]`` as a soft
  preference, so locality hits mean "ran at the tenant's home site".

The NASA iPSC/860 log has no wait times (its submit times are start times)
and no queue numbers, so neither is used.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.scenarios import SITES, SLOTS, Scenario, SimWorker, Workload
from benchmarks.swf import Trace, read_swf
from matchmaker.models import Task

TYPES = 4


def trace_scenario(
    path: str | Path,
    load: float = 0.9,
    time_scale: float = 0.01,
    max_jobs: int | None = None,
) -> Scenario:
    """The scenario replaying ``path``; raises SWFError/ValueError with one sentence."""
    trace = read_swf(path)
    return scenario_from_trace(trace, Path(path).name, load, time_scale, max_jobs)


def scenario_from_trace(
    trace: Trace,
    name: str,
    load: float = 0.9,
    time_scale: float = 0.01,
    max_jobs: int | None = None,
) -> Scenario:
    if not (load > 0 and time_scale > 0):
        raise ValueError("trace load and time scale must be positive")
    jobs = [j for j in trace.jobs if j.run_time is not None and j.run_time >= 0]
    dropped = len(trace.jobs) - len(jobs)
    jobs.sort(key=lambda j: (j.submit, j.job))
    if max_jobs is not None:
        jobs = jobs[:max_jobs]
    if not jobs:
        raise ValueError(f"{name} has no job with a known run time")
    widest = max((j.procs or j.req_procs or 1) for j in jobs)
    procs = trace.max_procs or trace.header_int("MaxNodes") or widest
    n_workers = max(1, math.ceil(procs / SLOTS))
    slots = n_workers * SLOTS
    types = [f"app{k}" for k in range(TYPES)]
    workers = [
        SimWorker(f"node{k:04d}", tuple(types), SLOTS, 1.0, {"site": SITES[k % len(SITES)]})
        for k in range(n_workers)
    ]

    submit = np.array([j.submit for j in jobs], dtype=np.float64)
    submit -= submit[0]
    duration = np.array([max(j.run_time or 0.0, 1.0) for j in jobs]) * time_scale
    span = float(submit[-1]) * time_scale
    compression = load * slots * span / float(duration.sum()) if span > 0 else 1.0
    arrival = submit * time_scale / compression if span > 0 else submit
    unique = len({j.job for j in jobs}) == len(jobs)
    tasks = []
    for i, j in enumerate(jobs):
        app = j.executable if j.executable is not None else (j.user or 0)
        width = j.procs or j.req_procs or 1
        priority = min(9, round(math.log2(max(width, 1))))
        preferences = {"site": [SITES[j.user % len(SITES)]]} if j.user is not None else {}
        tasks.append(
            Task(
                f"job{j.job}" if unique else f"job{j.job}-{i}",
                types[app % TYPES],
                priority=priority,
                preferences=preferences,
                submitted_at=float(arrival[i]),
            )
        )
    return Scenario(
        "trace",
        f"{name}: {len(jobs)} jobs on {n_workers} workers x {SLOTS} slots, "
        f"arrivals compressed {compression:.1f}x for load {load:g}",
        workers,
        Workload(tasks, arrival, duration),
        {
            "trace": name,
            "jobs": len(jobs),
            "dropped_jobs": dropped,
            "max_procs": procs,
            "time_scale": time_scale,
            "arrival_compression": compression,
        },
    )
