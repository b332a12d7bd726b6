"""``python -m benchmarks <solver|sim|ledger|live|fault> [options]``: the project's benchmarks.

- ``solver``: round time of ``plan()`` vs problem size, against networkx and greedy;
- ``sim``: push vs pull in a seeded discrete-event simulation (scenarios and an SWF trace);
- ``ledger``: the loop's time in ``Ledger.commit()``, automatic vs background checkpoints;
- ``live``: the same comparison on the real broker and workers (``benchmarks.live``);
- ``fault``: real tasks and fuzzed messages through kill -9s, a broker restart and a
  frozen Serf agent; checks nothing is lost, done twice or let through (``benchmarks.fault``).

Each writes a table to stdout, a JSON report and PNG plots under ``results/``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXTRA = "pip install 'matchmaker-scheduler[bench]'"
OPTIONAL = {"matplotlib": "the plots", "celery": "the Celery baseline", "networkx": "the reference"}


def _plots(wanted: bool) -> bool:
    """Whether to draw plots: wanted and matplotlib is there (else a note saying what to
    install, and the benchmark runs without them)."""
    if wanted and importlib.util.find_spec("matplotlib") is None:
        print(f"note: plots skipped, matplotlib is not installed ({EXTRA})", file=sys.stderr)
        return False
    return wanted


DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "NASA-iPSC-1993-3.1-cln.swf"


def _write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


def _solver(args: argparse.Namespace) -> int:
    from benchmarks import solver

    sizes = tuple(solver.parse_size(s) for s in args.sizes) if args.sizes else solver.DEFAULT_SIZES
    config = solver.SolverConfig(
        sizes=sizes,
        rounds=args.rounds,
        reference_budget=args.reference_budget,
        reference_max_arcs=args.reference_max_arcs,
        out=args.out,
        plot=args.plot if _plots(not args.no_plot) else None,
    )
    report = solver.run(config)
    print(solver.table(report))
    _write_json(report, config.out)
    if config.plot:
        from benchmarks.plots import solver_plot

        print(f"wrote {solver_plot(report, config.plot)}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from benchmarks import sim

    config = sim.SimConfig.from_args(args)
    report = sim.run(config)
    print(sim.table(report))
    from benchmarks.targets import table

    print(f"\nissue 20's targets, {config.seeds} seed(s) per synthetic scenario:\n")
    print(table(report["targets"]))
    _write_json(report, args.out)
    if _plots(not args.no_plot):
        from benchmarks.plots import utilisation_plot, wait_cdf_plot

        print(f"wrote {wait_cdf_plot(report, args.plot_dir / 'sim_wait_cdf.png')}")
        print(f"wrote {utilisation_plot(report, args.plot_dir / 'sim_utilisation.png')}")
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from benchmarks import ledger

    report = ledger.run(args.batch, args.gap, args.seconds, args.ledger_url or "")
    print(ledger.table(report))
    _write_json(report, args.out)
    return 0


def _live(args: argparse.Namespace, rest: Sequence[str]) -> int:
    if importlib.util.find_spec("benchmarks.live") is None:
        print("benchmarks live: not available yet (benchmarks/live.py does not exist)")
        return 2
    live = importlib.import_module("benchmarks.live")
    result: int = live.main(list(rest))
    return result


def _fault(args: argparse.Namespace) -> int:
    from benchmarks import fault

    return fault.main(args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="The project's benchmarks: solver, sim (push vs pull), ledger, live.",
    )
    sub = root.add_subparsers(dest="command", required=True)

    s = sub.add_parser("solver", help="round time of plan() vs problem size")
    s.add_argument(
        "--sizes", nargs="+", metavar="TxW", help="e.g. 1000x100 10kx1k (default: 1k, 10k, 100k)"
    )
    s.add_argument("--rounds", type=_positive_int, default=5, help="rounds per size (median)")
    s.add_argument(
        "--reference-budget",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="kill the networkx reference after this long",
    )
    s.add_argument(
        "--reference-max-arcs",
        type=_positive_int,
        default=20_000_000,
        help="skip the reference when its graph has more arcs",
    )
    s.add_argument("--out", type=Path, default=Path("results/solver.json"))
    s.add_argument("--plot", type=Path, default=Path("results/solver.png"))
    s.add_argument("--no-plot", action="store_true")
    s.set_defaults(handler=_solver)

    m = sub.add_parser("sim", help="push vs pull, discrete-event simulation")
    from benchmarks.sim import add_arguments

    add_arguments(m, DEFAULT_TRACE)
    m.add_argument("--out", type=Path, default=Path("results/sim.json"))
    m.add_argument("--plot-dir", type=Path, default=Path("results"))
    m.add_argument("--no-plot", action="store_true")
    m.set_defaults(handler=_sim)

    g = sub.add_parser(
        "ledger", help="time in Ledger.commit(): automatic vs background checkpoints"
    )
    g.add_argument("--batch", type=_positive_int, default=3, help="tasks per turn")
    g.add_argument("--gap", type=_positive_float, default=0.002, help="seconds between turns")
    g.add_argument("--seconds", type=_positive_float, default=12.0, help="per mode")
    g.add_argument(
        "--ledger-url", dest="ledger_url", help="also a PostgreSQL ledger (postgresql://...)"
    )
    g.add_argument("--out", type=Path, default=Path("results/ledger.json"))
    g.set_defaults(handler=_ledger)

    f = sub.add_parser("fault", help="tasks and fuzzed messages through kills and restarts")
    from benchmarks.fault import add_arguments as fault_arguments

    fault_arguments(f)
    f.set_defaults(handler=_fault)

    live = sub.add_parser(
        "live", help="push vs pull on the real broker and workers", add_help=False
    )
    live.set_defaults(handler=None)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    if rest and args.command != "live":
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        code: int = _live(args, rest) if args.command == "live" else args.handler(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in OPTIONAL:
            raise
        print(
            f"error: {OPTIONAL[top]} need {top}, which is not installed: {EXTRA}", file=sys.stderr
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
