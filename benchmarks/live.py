"""``python -m benchmarks live``: matchmaker on the real broker, Serf agents and workers.

Scenarios (``--scenario``, repeatable, or ``all``):

- ``push``: scheduler throughput from ``mm.requests`` onto worker queues vs raw pika
  (``benchmarks.live_push``);
- ``e2e``: no-op completions/s with two worker processes, side by side with Celery
  (``benchmarks.live_e2e``);
- ``latency``: submit -> worker queue latency at a paced offered load
  (``benchmarks.live_latency``);
- ``lowload``: push against pull at a low rate (``--lowload-rate``, default 50/s) on idle
  workers: what a task pays when nothing else waits (``benchmarks.live_lowload``);
- ``failover``: kill -9 a busy worker: Serf detection vs its tasks running elsewhere
  (``benchmarks.live_failover``);
- ``compare``: push vs pull on the same heterogeneous work (``benchmarks.live_compare``).

``--ledger-url`` (repeatable; ``sqlite`` names the embedded default) runs each
scenario once per ledger, in turn, ``--alternate`` times (``sqlite``, PostgreSQL,
``sqlite``, ...), each on a fresh ledger (a new file, or a new schema of the
database), and reports every run and each ledger's range.

Each scenario starts what it needs on its own vhost and stops it afterwards,
also on errors and Ctrl-C. The run prints a table per scenario (with a plain
MET / MISSED line per target), writes one JSON report and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import (
    live_compare,
    live_e2e,
    live_failover,
    live_latency,
    live_lowload,
    live_push,
)
from benchmarks.live_env import AMQP, Env, LiveError, rabbit_setting
from matchmaker.config import Config
from matchmaker.devtools.cluster import ClusterError
from matchmaker.wire import amqp
from matchmaker.wire.broker import BrokerError

NAMES = ("push", "e2e", "latency", "lowload", "failover", "compare")
JOURNAL = "queue_index_max_journal_entries"  # classic queues' index journal (docs/operations.md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks live",
        description="Live benchmarks on the real broker, Serf agents and worker processes.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=(*NAMES, "all"),
        help="scenario to run (repeatable; default: all)",
    )
    p.add_argument(
        "--tasks", type=_positive_int, help="tasks for push and e2e (default 20,000 each)"
    )
    p.add_argument(
        "--amqp", default=AMQP, help="broker base URL without vhost (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, default=Path("results/live.json"))
    p.add_argument("--plot-dir", type=Path, default=Path("results"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("results/live-work"),
        help=f"logs and ledgers, one run-* directory per run (the last {KEEP_RUNS} are kept)",
    )
    p.add_argument(
        "--round-interval",
        type=_positive_float,
        default=Config.round_interval,
        help="the scheduler's round interval in seconds (default: %(default)s, the service's)",
    )
    p.add_argument("--progress", action="store_true", help="draw progress bars even when piped")
    p.add_argument(
        "--ledger-url",
        action="append",
        help="the scheduler's ledger: sqlite (the default) or postgresql://...; repeat it to "
        "compare, each scenario runs once per ledger in turn",
    )
    p.add_argument(
        "--alternate",
        type=_positive_int,
        default=1,
        help="with several --ledger-url: rounds of runs, one per ledger each (default 1)",
    )
    g = p.add_argument_group("push")
    g.add_argument(
        "--push-workers", type=_positive_int, default=4, help="bare worker agents (at least)"
    )
    g.add_argument(
        "--push-slots",
        type=_positive_int,
        default=1024,
        help="slots per bare worker (at most 1024, the tag schema's limit; workers are added "
        "until every task fits)",
    )
    g = p.add_argument_group("e2e")
    g.add_argument("--e2e-slots", type=_positive_int, default=32, help="slots per worker")
    g.add_argument("--no-celery", action="store_true", help="skip the Celery side")
    g = p.add_argument_group("latency")
    g.add_argument("--rate", type=_positive_float, default=2000.0, help="offered tasks/s")
    g.add_argument("--duration", type=_positive_float, default=10.0, help="seconds of load")
    g.add_argument("--latency-slots", type=_positive_int, default=1024, help="slots per worker")
    g.add_argument("--lowload-rate", type=_positive_float, default=50.0, help="lowload's tasks/s")
    g = p.add_argument_group("failover")
    g.add_argument("--repeats", type=_positive_int, default=3)
    g = p.add_argument_group("compare")
    g.add_argument("--compare-tasks", type=_positive_int, default=600)
    g.add_argument("--compare-workers", type=_positive_int, default=4)
    g.add_argument("--mean-duration", type=_positive_float, default=0.5, help="mean task seconds")
    g.add_argument("--seed", type=int, default=1)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _runner(name: str, args: argparse.Namespace) -> Callable[[Env], dict[str, Any]]:
    tasks = args.tasks or 20_000
    if name == "push":
        return lambda env: live_push.run(env, tasks, args.push_workers, args.push_slots)
    if name == "e2e":
        return lambda env: live_e2e.run(env, tasks, args.e2e_slots, not args.no_celery)
    if name == "latency":
        return lambda env: live_latency.run(env, args.rate, args.duration, args.latency_slots)
    if name == "lowload":
        return lambda env: live_lowload.run(
            env, args.lowload_rate, args.duration, args.latency_slots
        )
    if name == "failover":
        return lambda env: live_failover.run(env, args.repeats)
    return lambda env: live_compare.run(
        env, args.compare_tasks, args.compare_workers, args.mean_duration, args.seed
    )


def _table(name: str, result: dict[str, Any]) -> str:
    lines = [f"== live {name} ==", *TABLES[name](result)]
    for key, target in result.get("targets", {}).items():
        state = "MET" if target["met"] else "MISSED"
        lines.append(f"target {key}: {target['target']}: {state}")
    return "\n".join(lines)


TABLES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "push": live_push.table,
    "e2e": live_e2e.table,
    "latency": live_latency.table,
    "lowload": live_lowload.table,
    "failover": live_failover.table,
    "compare": live_compare.table,
}


def _plots(report: dict[str, Any], plot_dir: Path) -> list[Path]:
    from benchmarks.live_plots import plots

    return plots(report, plot_dir)


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    names = NAMES if not args.scenario or "all" in args.scenario else tuple(args.scenario)
    names = tuple(dict.fromkeys(names))
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks live " + " ".join(argv),
        "scenarios": {},
    }
    status = 0
    workdir = _run_dir(args.workdir)
    print(f"logs and ledgers of this run: {workdir}", file=sys.stderr)
    journal = rabbit_setting(JOURNAL)
    report["broker"] = {JOURNAL: journal}
    print(f"broker: {JOURNAL} = {journal} (scripts/broker.sh starts it with 2048)", file=sys.stderr)
    ledgers = [_ledger(u) for u in args.ledger_url or ["sqlite"]]
    plan = [(n, u) for n in names for _ in range(args.alternate if len(ledgers) > 1 else 1)
            for u in ledgers]  # fmt: skip
    for name, ledger_url in plan:
        env = Env(
            args.amqp.rstrip("/"), workdir, args.progress, args.round_interval,
            ledger_url=ledger_url,
        )  # fmt: skip
        label = _label(ledger_url)
        print(f"-- live {name} ({label} ledger): running", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result = _runner(name, args)(env)
            result["wall_s"] = round(time.monotonic() - started, 2)
            result["ledger"] = label
            _record(report, name, result, len(ledgers) > 1)
            print(f"ledger: {label}")
            print(_table(name, result), flush=True)
            print(flush=True)
        except KeyboardInterrupt:
            print(f"live {name}: interrupted; stopping what it started", file=sys.stderr)
            env.close()
            return 130
        except (LiveError, ClusterError, BrokerError, amqp.AMQPError) as error:
            text = str(error)
            if isinstance(error, amqp.AMQPError):
                text = f"lost the broker ({type(error).__name__}: {error})"
            print(f"live {name}: {text}", file=sys.stderr)
            _record(report, name, {"error": text, "ledger": label}, len(ledgers) > 1)
            status = 1
            if isinstance(error, BrokerError):  # every scenario needs it: stop here
                break
        except Exception as error:  # report, clean up, go on with the next scenario
            traceback.print_exc()
            print(f"live {name}: failed: {error}", file=sys.stderr)
            failed = {"error": f"{type(error).__name__}: {error}", "ledger": label}
            _record(report, name, failed, len(ledgers) > 1)
            status = 1
        finally:
            env.close()
    if len(ledgers) > 1:
        for name, scenario in report["scenarios"].items():
            if "runs" in scenario:
                print(_ledger_summary(name, scenario))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(report), indent=1, default=_jsonable) + "\n")
    print(f"wrote {args.out}")
    if not args.no_plot:
        for path in _plots(report, args.plot_dir):
            print(f"wrote {path}")
    missed = [
        f"{n}.{k}"
        for n, r in report["scenarios"].items()
        for k, t in r.get("targets", {}).items()
        if not t["met"]
    ]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return status


def _ledger(text: str) -> str:
    """``sqlite`` or ``default``: the embedded ledger (empty ``ledger_url``); else the URL."""
    return "" if text in ("sqlite", "default", "") else text


def _label(url: str) -> str:
    if not url or url.startswith("sqlite"):
        return "sqlite"
    options = urllib.parse.unquote(urllib.parse.urlsplit(url).query).replace(" ", "")
    return "postgresql-async" if "synchronous_commit=off" in options else "postgresql"


HEADLINE: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "e2e": ("no-op completions/s", lambda r: float(r["matchmaker"]["rate"])),
    "latency": ("p99 ms", lambda r: 1e3 * float(r["latency"]["p99"])),
    "push": ("tasks/s", lambda r: float(r.get("push_rate", math.nan))),
}


def _record(report: dict[str, Any], name: str, result: dict[str, Any], several: bool) -> None:
    """A scenario's result (or error); with several ledgers, one run of it among others."""
    if not several:
        report["scenarios"][name] = result
        return
    entry = report["scenarios"].setdefault(name, {"runs": [], "by_ledger": {}})
    entry["runs"].append(result)
    if name in HEADLINE and "error" not in result:
        entry["by_ledger"].setdefault(result["ledger"], []).append(HEADLINE[name][1](result))


def _ledger_summary(name: str, scenario: dict[str, Any]) -> str:
    if name not in HEADLINE:
        return f"== live {name} by ledger: {len(scenario['runs'])} runs (see the report) =="
    what = HEADLINE[name][0]
    lines = [f"== live {name} by ledger ({what}, runs in order) =="]
    for label, values in scenario["by_ledger"].items():
        shown = ", ".join(f"{v:,.1f}" for v in values)
        lines.append(f"{label:<11} {shown}  (range {min(values):,.1f}-{max(values):,.1f})")
    figures = scenario["by_ledger"]
    for label in [k for k in figures if k != "sqlite" and "sqlite" in figures]:
        ratios = [p / s for s, p in zip(figures["sqlite"], figures[label], strict=False)]
        scenario[f"{label.replace('-', '_')}_over_sqlite"] = ratios
        lines.append(f"{label} / sqlite, run by run: " + ", ".join(f"{r:.2f}x" for r in ratios))
    return "\n".join(lines)


RUN_DIR = re.compile(r"run-\d{8}-\d{6}-\d+")
KEEP_RUNS = 3


def _run_dir(root: Path) -> Path:
    """A fresh directory for this run under ``root``; older runs beyond the last few go."""
    root.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in root.iterdir() if p.is_dir() and RUN_DIR.fullmatch(p.name))
    for old in runs[: max(0, len(runs) - (KEEP_RUNS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    path = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir()
    return path


def _finite(value: Any) -> Any:
    """The report with NaN and infinities as null, so that it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
