"""``python -m benchmarks sim``: push vs pull on the same work, simulated.

Each scenario (``benchmarks.scenarios``, ``benchmarks.trace``) runs in push
mode (``benchmarks.push``: the real ``plan()`` in event-driven rounds) and in pull mode
(``benchmarks.pull``: RabbitMQ competing consumers); scenarios with hard
constraints also run the naive pull variant that ignores them, and the
priorities scenario also runs pull with plain FIFO queues. Everything is
seeded: the same options give the same figures (apart from the measured
wall and plan() times). ``--seeds N`` runs every synthetic scenario over N
seeds (the trace once) and checks issue 20's targets (``benchmarks.targets``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.progress import Progress
from benchmarks.pull import PullParams, simulate_pull
from benchmarks.push import (
    BROKER_DETECTION,
    DISPATCH,
    INTAKE,
    ROUND_COSTS,
    ROUND_POLICIES,
    SPEED_MODES,
    PushParams,
    simulate_push,
)
from benchmarks.record import metrics
from benchmarks.scenarios import BUILDERS, NAMES, Scenario, ScenarioParams
from benchmarks.targets import judge
from benchmarks.trace import trace_scenario
from matchmaker.scheduler.clock import BATCH


@dataclass(frozen=True)
class SimConfig:
    scenarios: tuple[str, ...] = NAMES
    params: ScenarioParams = field(default_factory=ScenarioParams)
    push: PushParams = field(default_factory=PushParams)
    pull: PullParams = field(default_factory=PullParams)
    trace: Path | None = None
    trace_load: float = 0.9
    trace_time_scale: float = 0.01
    trace_jobs: int | None = None
    trace_speeds: tuple[float, ...] = (1.0,)
    seeds: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimConfig:
        names = NAMES if "all" in args.scenario else tuple(dict.fromkeys(args.scenario))
        return cls(
            scenarios=names,
            params=ScenarioParams(args.tasks, args.workers, args.seed, args.mean_duration),
            push=PushParams(
                interval=args.interval,
                batch_window=args.batch_window,
                latency=args.latency,
                broker=args.broker,
                intake=args.intake,
                dispatch=args.dispatch,
                detection=args.detection,
                strategy=args.strategy,
                rounds=args.rounds,
                round_cost=args.round_cost,
                speeds=args.speeds,
                pipeline=args.pipeline,
            ),
            pull=PullParams(
                latency=args.latency,
                broker=args.broker,
                prefetch=args.prefetch,
                priority_queues=args.pull_queues == "priority",
                detection=args.pull_detection,
            ),
            trace=args.trace,
            trace_load=args.trace_load,
            trace_time_scale=args.trace_time_scale,
            trace_jobs=args.trace_jobs,
            trace_speeds=args.trace_speeds,
            seeds=args.seeds,
        )


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _speeds(text: str) -> tuple[float, ...]:
    try:
        speeds = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected speeds like 0.5,1,2, got {text}") from None
    if not all(1 / 64 <= v <= 64 for v in speeds):
        raise argparse.ArgumentTypeError(f"speeds must be from 1/64 to 64, got {text}")
    return speeds


def add_arguments(parser: argparse.ArgumentParser, default_trace: Path) -> None:
    add = parser.add_argument
    add(
        "--scenario",
        nargs="+",
        default=["all"],
        choices=("all", *NAMES),
        help="scenarios to run (default: all)",
    )
    add("--tasks", type=_positive(int), default=20_000, help="tasks per synthetic scenario")
    add("--workers", type=_positive(int), default=200, help="workers (4 slots each)")
    add("--seed", type=int, default=1)
    add("--mean-duration", type=_positive(float), default=1.0, help="mean task run time (s)")
    add(
        "--interval",
        type=_positive(float),
        default=0.015,
        help="push: most a round waits for intake (the service's round_interval); "
        "with --rounds clock, the least time between rounds",
    )
    add(
        "--batch-window",
        type=_non_negative,
        default=BATCH,
        help="push: a full batch window is this many times the last turn's cost "
        "(the service's batch_window)",
    )
    add("--latency", type=_non_negative, default=0.0003, help="one network hop (s), both modes")
    add("--broker", type=_non_negative, default=0.0001, help="broker time per message (s)")
    add("--intake", type=_non_negative, default=INTAKE, help="push: loop time per message in")
    add("--dispatch", type=_non_negative, default=DISPATCH, help="push: loop time per dispatch")
    add(
        "--detection",
        type=_non_negative,
        default=BROKER_DETECTION,
        help="push: failure detection delay (s); default the broker's consumer event "
        "(one message leg); 5 is Serf alone",
    )
    add(
        "--pipeline",
        type=int,
        choices=range(0, 65),
        default=0,
        metavar="K",
        help="push: dispatches a worker may hold beyond its slots (pipeline_depth)",
    )
    add("--rounds", choices=ROUND_POLICIES, default="event", help="push: when rounds run")
    add(
        "--round-cost",
        choices=ROUND_COSTS,
        default="model",
        help="push: a round costs the fitted model of plan() or its measured time",
    )
    add("--speeds", choices=SPEED_MODES, default="advertised", help="push: worker speeds")
    add("--seeds", type=_positive(int), default=1, help="run every scenario over N seeds")
    add("--strategy", choices=("spread", "binpack"), default="spread", help="push: policy")
    add("--prefetch", type=_positive(int), default=None, help="pull: prefetch (default: slots)")
    add(
        "--pull-queues",
        choices=("priority", "fifo"),
        default="priority",
        help="pull: x-max-priority queues or plain FIFO",
    )
    add(
        "--pull-detection",
        type=_non_negative,
        default=0.0,
        help="pull: extra delay before a crashed consumer's messages are requeued (s)",
    )
    add("--trace", type=Path, default=default_trace, help="SWF log, plain or .gz")
    add("--trace-load", type=_positive(float), default=0.9, help="trace: offered load")
    add(
        "--trace-time-scale",
        type=_positive(float),
        default=0.01,
        help="trace: simulated seconds per logged second",
    )
    add("--trace-jobs", type=_positive(int), default=None, help="trace: replay the first N jobs")
    add(
        "--trace-speeds",
        type=_speeds,
        default=(1.0,),
        help="trace: worker speeds, dealt in turn (e.g. 0.5,1,2); default all 1",
    )


def build_scenario(name: str, config: SimConfig) -> Scenario:
    if name == "trace":
        if config.trace is None:
            raise ValueError("the trace scenario needs --trace PATH")
        return trace_scenario(
            config.trace,
            config.trace_load,
            config.trace_time_scale,
            config.trace_jobs,
            config.trace_speeds,
        )
    return BUILDERS[name](config.params)


def run_scenario(scenario: Scenario, config: SimConfig) -> dict[str, Any]:
    """Push, pull (and naive pull where constraints exist) on one scenario."""
    has_constraints = any(t.constraints for t in scenario.workload.tasks)
    modes: dict[str, Any] = {}
    size = len(scenario.workload)
    label = f"{scenario.name}: push"
    with Progress(size, label) as bar:
        modes["push"] = metrics(simulate_push(scenario, config.push, bar), scenario)
    runs = [("pull", config.pull)]
    if has_constraints:
        runs.append(("pull-naive", replace(config.pull, naive=True)))
    if scenario.name == "priorities" and config.pull.priority_queues:
        runs.append(("pull-fifo", replace(config.pull, priority_queues=False)))
    for mode, params in runs:
        with Progress(size, f"{scenario.name}: {mode}") as bar:
            modes[mode] = metrics(simulate_pull(scenario, params, bar), scenario)
    return {
        "name": scenario.name,
        "description": scenario.description,
        "workers": len(scenario.workers),
        "slots": sum(w.slots for w in scenario.workers),
        "tasks": size,
        "notes": scenario.notes,
        "modes": modes,
        "verdict": verdict(scenario.name, modes),
    }


def verdict(name: str, modes: dict[str, Any]) -> list[str]:
    """Plain sentences on who wins what in this scenario."""
    push, pull = modes["push"], modes["pull"]
    lines = []

    def compare(label: str, a: float, b: float, lower_is_better: bool = True) -> None:
        if math.isnan(a) or math.isnan(b) or abs(a - b) <= 0.01 * max(abs(a), abs(b)):
            lines.append(f"{label}: tie ({a:.3g} push vs {b:.3g} pull)")
            return
        push_wins = (a < b) == lower_is_better
        winner, loser = ("push", "pull") if push_wins else ("pull", "push")
        lines.append(f"{label}: {winner} wins ({a:.3g} push vs {b:.3g} pull, {loser} loses)")

    compare("p50 wait (s)", push["wait"]["p50"], pull["wait"]["p50"])
    compare("p99 wait (s)", push["wait"]["p99"], pull["wait"]["p99"])
    compare("max wait (s)", push["wait"]["max"], pull["wait"]["max"])
    compare("99% done at (s)", push["t99"], pull["t99"])
    compare("makespan (s)", push["makespan"], pull["makespan"])
    compare("mean completion (s)", push["completion"]["mean"], pull["completion"]["mean"])
    if push["wait_by_priority"]:
        top = max(push["wait_by_priority"], key=int)
        compare(
            f"p95 wait of priority {top} (s)",
            push["wait_by_priority"][top]["p95"],
            pull["wait_by_priority"][top]["p95"],
        )
    if pull["requeues"]:
        lines.append(f"pull needed {pull['requeues']:,} requeues; push needs none")
    if "pull-naive" in modes:
        lines.append(
            f"naive pull broke {modes['pull-naive']['constraint_violations']:,} constraints; "
            f"push broke {push['constraint_violations']}"
        )
    if push["locality_rate"] is not None and pull["locality_rate"] is not None:
        compare("locality hit rate", push["locality_rate"], pull["locality_rate"], False)
    return lines


def run(config: SimConfig) -> dict[str, Any]:
    results = []
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for name in config.scenarios:
        seeds = range(config.params.seed, config.params.seed + config.seeds)
        for seed in seeds if name in BUILDERS else seeds[:1]:
            seeded = replace(config, params=replace(config.params, seed=seed))
            result = run_scenario(build_scenario(name, seeded), seeded)
            result["seed"] = seed
            modes = result["modes"]
            runs.setdefault(name, []).append((modes["push"], modes["pull"]))
            if seed != config.params.seed:
                for m in modes.values():
                    m.pop("wait_cdf", None)
                    m.pop("utilisation_series", None)
            results.append(result)
    return {
        "benchmark": "sim",
        "config": {
            "tasks": config.params.tasks,
            "workers": config.params.workers,
            "seed": config.params.seed,
            "seeds": config.seeds,
            "mean_duration": config.params.mean_duration,
            "push": config.push.__dict__,
            "pull": config.pull.__dict__,
            "trace": str(config.trace) if config.trace else None,
            "trace_load": config.trace_load,
            "trace_time_scale": config.trace_time_scale,
            "trace_speeds": list(config.trace_speeds),
        },
        "scenarios": [r for r in results if r["seed"] == config.params.seed],
        "other_seeds": [r for r in results if r["seed"] != config.params.seed],
        "targets": [judge(name, pairs) for name, pairs in runs.items()],
    }


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'scenario':<14} {'mode':<10} {'done':>7} {'makespan':>9} {'tasks/s':>8} "
        f"{'wait p50':>9} {'p95':>8} {'p99':>8} {'max':>8} {'t99':>7} {'util':>5} "
        f"{'requeue':>8} {'violate':>8} "
        f"{'local':>6} {'dup':>5} {'rounds':>7} {'cpu us/task':>11} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for s in report["scenarios"]:
        for mode, m in s["modes"].items():
            w = m["wait"]
            local = _fmt(m["locality_rate"], ".0%")
            lines.append(
                f"{s['name']:<14} {mode:<10} {m['completed']:>7} {m['makespan']:>9.2f} "
                f"{m['throughput']:>8.0f} {_fmt(w['p50']):>9} {_fmt(w['p95']):>8} "
                f"{_fmt(w['p99']):>8} {_fmt(w['max']):>8} {m['t99']:>7.2f} "
                f"{m['utilisation']:>5.0%} {m['requeues']:>8} "
                f"{m['constraint_violations']:>8} {local:>6} {m['duplicates']:>5} "
                f"{m['rounds']:>7} {m['scheduler_cpu_per_task_us']:>11.1f} "
                f"{m['wall_seconds']:>7.1f}"
            )
        by_priority = s["modes"]["push"]["wait_by_priority"]
        if by_priority:
            for mode, m in s["modes"].items():
                cells = " ".join(f"p{p}:{_fmt(v['p95'])}" for p, v in m["wait_by_priority"].items())
                lines.append(f"{'':<14} {mode:<10} p95 wait by priority  {cells}")
        for sentence in s["verdict"]:
            lines.append(f"{'':<14} -> {sentence}")
        lines.append("")
    lines.append(
        "wait in seconds; t99 = when 99% of tasks had finished; util = busy / live "
        "slot-seconds until t99;\nlocal = tasks that ran on a preferred site / tasks with a "
        "preference; dup = tasks run twice (at-least-once); cpu us/task = "
        "time in plan() per task (pull has no scheduler; broker CPU is not modelled)."
    )
    return "\n".join(lines)
