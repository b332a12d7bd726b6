"""PNG figures of the benchmark reports (matplotlib, Agg backend: no display needed).

- ``solver_plot``: round time vs problem size, log-log, with the networkx
  reference, the greedy baseline and the 50 ms target;
- ``wait_cdf_plot``: per scenario, the CDF of wait times, push vs pull;
- ``utilisation_plot``: per scenario, busy slots / live slots over time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

COLOURS = {"push": "#1f77b4", "pull": "#d62728", "pull-naive": "#ff7f0e", "pull-fifo": "#9467bd"}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def solver_plot(report: dict[str, Any], path: Path) -> Path:
    rows = report["sizes"]
    sizes = [r["tasks"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot(sizes, [r["plan_ms"]["median"] for r in rows], "o-", label="plan() median round")
    ax.plot(sizes, [r["core_ms"] for r in rows], "s--", label="solve + disaggregate + explain")
    ax.plot(sizes, [r["greedy"]["ms"] for r in rows], "^:", label="greedy first-fit")
    ref = [r for r in rows if r["reference"]["status"] == "ok"]
    if ref:
        ax.plot(
            [r["tasks"] for r in ref],
            [r["reference"]["solve_s"] * 1e3 for r in ref],
            "D-",
            color="black",
            label="networkx max flow (unaggregated)",
        )
    timed_out = [r for r in rows if r["reference"]["status"] == "timeout"]
    if timed_out:
        budget = [r["speedup"] * r["plan_ms"]["median"] for r in timed_out]
        ax.plot(
            [r["tasks"] for r in timed_out],
            budget,
            "^",
            color="black",
            markersize=10,
            label="networkx: still running at the budget",
        )
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.text(sizes[0], 50 * 1.15, "50 ms target", color="grey")
    for r in rows:
        if r["reference"]["status"] == "skipped":
            ax.annotate(
                f"networkx skipped:\n{r['reference']['arcs']:,} arcs",
                (r["tasks"], r["plan_ms"]["median"] * 60),
                fontsize=8,
                ha="center",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(min(sizes) / 1.6, max(sizes) * 3)
    ax.set_xlabel("pending tasks per round (workers = tasks / 10)")
    ax.set_ylabel("time per round (ms)")
    ax.set_title("Round time vs problem size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    for r in rows:
        ax.annotate(
            f"{r['tasks']:,} x {r['workers']:,}",
            (r["tasks"], r["plan_ms"]["median"]),
            textcoords="offset points",
            xytext=(5, -14),
            fontsize=8,
        )
    return _save(fig, path)


def _grid(count: int) -> tuple[int, int]:
    cols = min(3, count)
    return math.ceil(count / cols), cols


def wait_cdf_plot(report: dict[str, Any], path: Path) -> Path:
    scenarios = report["scenarios"]
    rows, cols = _grid(len(scenarios))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        for mode, result in scenario["modes"].items():
            cdf = result["wait_cdf"]
            xs = [max(x, 1e-4) for x in cdf["seconds"]]
            p50 = result["wait"]["p50"]
            ax.plot(
                xs,
                cdf["fraction"],
                color=COLOURS.get(mode),
                label=f"{mode} (p50 {p50:.3g} s)",
            )
        ax.set_xscale("log")
        low = min(min(r["wait_cdf"]["seconds"][0] for r in scenario["modes"].values()), 1e-3)
        high = max(max(r["wait_cdf"]["seconds"][-1] for r in scenario["modes"].values()), 0.1)
        ax.set_xlim(max(low, 1e-4) / 1.5, high * 1.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.01)
        ax.set_title(scenario["name"])
        ax.set_xlabel("wait before start (s, log)")
        ax.set_ylabel("fraction of tasks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    fig.suptitle("Wait time CDF: push (matchmaker plan) vs pull (competing consumers)")
    return _save(fig, path)


def utilisation_plot(report: dict[str, Any], path: Path) -> Path:
    scenarios = report["scenarios"]
    rows, cols = _grid(len(scenarios))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        for mode, result in scenario["modes"].items():
            series = result["utilisation_series"]
            ax.plot(
                series["t"],
                series["busy"],
                color=COLOURS.get(mode),
                label=f"{mode} (mean {result['utilisation']:.0%} until t99)",
                linewidth=1.2,
            )
        ax.set_ylim(0, 1.05)
        ax.set_title(scenario["name"])
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("busy / live slots")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower center")
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    fig.suptitle("Utilisation over time: push vs pull")
    return _save(fig, path)
