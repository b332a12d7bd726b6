"""Replay an SWF log (``benchmarks.swf``) as a simulated workload.

The mapping from the log's jobs to tasks and workers:

- machine -> workers: ``MaxProcs`` (else ``MaxNodes``, else the widest job)
  processors become that many slots, on ``ceil(procs / 4)`` workers of 4
  slots, each running every task type; worker k has speed
  ``speeds[k mod len(speeds)]`` (all 1 by default; ``--trace-speeds``);
- job -> one task (jobs with an unknown or negative run time are dropped, and
  counted);
- run time -> duration: ``max(run time, 1 s) * time_scale`` at speed 1;
- submit time -> arrival: ``(submit - first submit) * time_scale / k``. The
  compression factor ``k`` is chosen so the offered load (sum of durations /
  arrival span / speed-weighted slots) equals ``load``: one task per job
  needs one slot, not the job's processors, so the raw log would leave the
  slots nearly idle. Compressing inter-arrival times is the usual way to
  scale a log's load;
- executable (application) number -> task type ``app<executable mod 4>``;
  when unknown, the user id stands in for it (``app<user mod 4>``);
- processors -> priority band: ``min(9, round(log2(processors)))``, so a
  128-processor job gets 7 and a serial job 0 (a wider job stands for a
  bigger allocation);
- partition number (else queue number) -> the site the job ran on, a hard
  constraint ``site = part<n>``: when the log has them, the workers are dealt
  to those sites in proportion to each site's work (at least one each), and
  a job without one may run anywhere;
- otherwise the workers sit at three sites (round robin), and the job's
  tenant -- its user id, else its group id -- has a home site
  ``site[tenant mod 3]``, a soft preference, so locality hits mean "ran at
  the tenant's home site".

The NASA iPSC/860 log has no wait times (its submit times are start times),
no partition and no queue numbers (its header names two queues, but no job
says which), so it replays with tenants' home sites and no site constraints.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.scenarios import SITES, SLOTS, FloatArray, Scenario, SimWorker, Workload
from benchmarks.swf import Trace, read_swf
from matchmaker.models import Task

TYPES = 4


def trace_scenario(
    path: str | Path,
    load: float = 0.9,
    time_scale: float = 0.01,
    max_jobs: int | None = None,
    speeds: tuple[float, ...] = (1.0,),
) -> Scenario:
    """The scenario replaying ``path``; raises SWFError/ValueError with one sentence."""
    trace = read_swf(path)
    return scenario_from_trace(trace, Path(path).name, load, time_scale, max_jobs, speeds)


def scenario_from_trace(
    trace: Trace,
    name: str,
    load: float = 0.9,
    time_scale: float = 0.01,
    max_jobs: int | None = None,
    speeds: tuple[float, ...] = (1.0,),
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
    types = [f"app{k}" for k in range(TYPES)]
    duration = np.array([max(j.run_time or 0.0, 1.0) for j in jobs]) * time_scale
    where = [j.partition if j.partition is not None else j.queue for j in jobs]
    sites = _deal_sites(where, duration, n_workers)
    workers = [
        SimWorker(f"node{k:04d}", tuple(types), SLOTS, speeds[k % len(speeds)], {"site": sites[k]})
        for k in range(n_workers)
    ]
    capacity = sum(w.slots * w.speed for w in workers)

    submit = np.array([j.submit for j in jobs], dtype=np.float64)
    submit -= submit[0]
    span = float(submit[-1]) * time_scale
    compression = load * capacity * span / float(duration.sum()) if span > 0 else 1.0
    arrival = submit * time_scale / compression if span > 0 else submit
    unique = len({j.job for j in jobs}) == len(jobs)
    tasks = []
    for i, j in enumerate(jobs):
        app = j.executable if j.executable is not None else (j.user or 0)
        width = j.procs or j.req_procs or 1
        priority = min(9, round(math.log2(max(width, 1))))
        constraints = {"site": f"part{where[i]}"} if where[i] is not None else {}
        tenant = j.user if j.user is not None else j.group
        preferences = (
            {"site": [SITES[tenant % len(SITES)]]}
            if tenant is not None and not any(w is not None for w in where)
            else {}
        )
        tasks.append(
            Task(
                f"job{j.job}" if unique else f"job{j.job}-{i}",
                types[app % TYPES],
                priority=priority,
                constraints=constraints,
                preferences=preferences,
                submitted_at=float(arrival[i]),
            )
        )
    return Scenario(
        "trace",
        f"{name}: {len(jobs)} jobs on {n_workers} workers x {SLOTS} slots"
        f"{'' if set(speeds) == {1.0} else ' (speeds ' + ','.join(map(str, speeds)) + ')'}, "
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
            "speeds": list(speeds),
            "log_sites": sorted({str(w) for w in where if w is not None}),
        },
    )


def _deal_sites(where: list[int | None], duration: FloatArray, workers: int) -> list[str]:
    """Each worker's site: the log's partitions in proportion to their work, else three sites."""
    work: dict[int, float] = {}
    for w, d in zip(where, duration.tolist(), strict=True):
        if w is not None:
            work[w] = work.get(w, 0.0) + d
    if not work:
        return [SITES[k % len(SITES)] for k in range(workers)]
    if len(work) > workers:
        raise ValueError(
            f"the log names {len(work)} partitions but the machine has {workers} workers"
        )
    total = sum(work.values())
    names = sorted(work)
    counts = {p: 1 for p in names}
    for _ in range(workers - len(names)):
        neediest = max(names, key=lambda p: (work[p] / total * workers - counts[p], -p))
        counts[neediest] += 1
    return [f"part{p}" for p in names for _ in range(counts[p])]
