"""PNG figures of a live report: latency CDF, and push vs pull (``benchmarks.plots``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.plots import _save, plt, utilisation_plot, wait_cdf_plot


def latency_plot(result: dict[str, Any], path: Path) -> Path:
    cdf = result["cdf"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([x * 1e3 for x in cdf["seconds"]], cdf["fraction"], label="submit -> worker queue")
    ax.axvline(25, color="grey", linestyle=":", linewidth=1)
    ax.text(25, 0.05, " 25 ms target (p99)", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Latency at {result['offered_rate']:,.0f} tasks/s offered")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plots(report: dict[str, Any], plot_dir: Path) -> list[Path]:
    out = []
    scenarios = report["scenarios"]
    latency = scenarios.get("latency", {})
    if "cdf" in latency:
        out.append(latency_plot(latency, plot_dir / "live_latency_cdf.png"))
    compare = scenarios.get("compare", {})
    if "modes" in compare:
        shaped = {"scenarios": [{"name": "live compare", "modes": compare["modes"]}]}
        out.append(wait_cdf_plot(shaped, plot_dir / "live_compare_wait_cdf.png"))
        out.append(utilisation_plot(shaped, plot_dir / "live_compare_utilisation.png"))
    return out
