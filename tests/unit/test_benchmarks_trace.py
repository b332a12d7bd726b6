"""Trace replay: the log's own fields (partition or queue, user or group) and worker speeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scenarios import SITES
from benchmarks.trace import trace_scenario


def swf(path: Path, rows: list[tuple[int, int, int, int, int, int]]) -> Path:
    """Jobs as (procs, user, group, executable, queue, partition); -1 = unknown."""
    lines = ["; MaxProcs: 16"]
    for i, (procs, user, group, app, queue, part) in enumerate(rows, start=1):
        fields = [i, 10 * i, -1, 100, procs, -1, -1, -1, -1, -1, 1, user, group, app, queue, part]
        lines.append(" ".join(map(str, [*fields, -1, -1])))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_partition_is_the_site_a_job_ran_on(tmp_path: Path) -> None:
    rows = [(1, 3, 1, 0, -1, 7)] * 6 + [(1, 4, 1, 0, 2, -1)] * 2 + [(1, 5, 1, 0, -1, -1)]
    scenario = trace_scenario(swf(tmp_path / "p.swf", rows))
    sites = [w.attributes["site"] for w in scenario.workers]
    assert len(scenario.workers) == 4
    assert sites.count("part7") == 3 and sites.count("part2") == 1  # in proportion to work
    tasks = scenario.workload.tasks
    assert [t.constraints[0].describe() for t in tasks[:8]] == ["site=part7"] * 6 + [
        "site=part2"
    ] * 2
    assert not tasks[8].constraints  # no partition, no queue: runs anywhere
    assert not any(t.preferences for t in tasks)  # sites come from the log, not tenants
    assert scenario.notes["log_sites"] == ["2", "7"]


def test_without_sites_the_tenant_is_the_user_else_the_group(tmp_path: Path) -> None:
    rows = [(1, 4, 2, 0, -1, -1), (1, -1, 2, 0, -1, -1), (1, -1, -1, 0, -1, -1)]
    tasks = trace_scenario(swf(tmp_path / "u.swf", rows)).workload.tasks
    assert tasks[0].preferences[0].values == (SITES[4 % 3],)
    assert tasks[1].preferences[0].values == (SITES[2 % 3],)
    assert not tasks[2].preferences and not tasks[0].constraints


def test_worker_speeds_are_dealt_in_turn_and_load_counts_them(tmp_path: Path) -> None:
    path = swf(tmp_path / "s.swf", [(1, 1, 1, 0, -1, -1)] * 20)
    plain = trace_scenario(path, load=0.5)
    mixed = trace_scenario(path, load=0.5, speeds=(0.5, 2.0))
    assert [w.speed for w in mixed.workers] == [0.5, 2.0, 0.5, 2.0]
    assert [w.speed for w in plain.workers] == [1.0] * 4
    ratio = mixed.notes["arrival_compression"] / plain.notes["arrival_compression"]
    assert ratio == pytest.approx(1.25)  # speed-weighted slots: 10 against 8
