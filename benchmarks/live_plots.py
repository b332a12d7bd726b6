"""PNG figures of a live report: the latency CDF, and push vs pull (wait CDF, utilisation).

Colours and saving are ``benchmarks.plots``'s, so live and simulated figures read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.plots import COLOURS, _save, plt


def latency_plot(result: dict[str, Any], path: Path) -> Path:
    cdf = result["cdf"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([x * 1e3 for x in cdf["seconds"]], cdf["fraction"], label="submit -> worker queue")
    target = result["target_p99_s"] * 1e3
    ax.axvline(target, color="grey", linestyle=":", linewidth=1)
    ax.text(target, 0.05, f" {target:g} ms target (p99)", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Latency at {result['offered_rate']:,.0f} tasks/s offered")
    ax.legend(loc="lower right")
    return _save(fig, path)


def compare_plot(result: dict[str, Any], path: Path) -> Path:
    """Wait-time CDF and utilisation over time, push vs pull, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, m in result["modes"].items():
        xs = [max(x, 1e-4) for x in m["wait_cdf"]["seconds"]]
        label = f"{mode} (p50 {m['wait']['p50']:.3g} s, p99 {m['wait']['p99']:.3g} s)"
        left.plot(xs, m["wait_cdf"]["fraction"], color=COLOURS.get(mode), label=label)
        series = m["utilisation_series"]
        right.plot(
            series["t"],
            series["busy"],
            color=COLOURS.get(mode),
            linewidth=1.1,
            label=f"{mode} (mean {m['utilisation']:.0%} until t99)",
        )
    left.set_xscale("log")
    left.set_xlabel("wait: start - send (s, log)")
    left.set_ylabel("fraction of tasks")
    left.set_ylim(0, 1.01)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    left.set_title("wait time CDF")
    right.set_ylim(0, 1.05)
    right.set_xlabel("time since the first send (s)")
    right.set_ylabel("busy / live slots")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="lower center")
    right.set_title("utilisation")
    fig.suptitle(
        f"Live push vs pull: {result['tasks']} sleep tasks on {len(result['workers'])} workers"
    )
    return _save(fig, path)


def plots(report: dict[str, Any], plot_dir: Path) -> list[Path]:
    out = []
    scenarios = report["scenarios"]
    latency = scenarios.get("latency", {})
    if "cdf" in latency:
        out.append(latency_plot(latency, plot_dir / "live_latency_cdf.png"))
    compare = scenarios.get("compare", {})
    if "modes" in compare:
        out.append(compare_plot(compare, plot_dir / "live_compare.png"))
    return out
