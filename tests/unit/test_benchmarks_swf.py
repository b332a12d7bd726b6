"""The SWF reader on the real NASA iPSC log, a gzipped copy, and bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from benchmarks.swf import SWFError, read_swf
from benchmarks.trace import scenario_from_trace

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "NASA-iPSC-1993-3.1-cln.swf"
needs_trace = pytest.mark.skipif(not TRACE.is_file(), reason=f"{TRACE} is not present")


@needs_trace
def test_real_trace_loads_with_its_header() -> None:
    trace = read_swf(TRACE)
    assert len(trace.jobs) == 18_239
    assert trace.max_procs == 128
    assert trace.max_jobs == 18_239
    assert trace.header["Queue"] == ["0  interactive", "1  batch"]
    assert "http://www.cs.huji.ac.il/labs/parallel/workload/" in trace.header["Information"][0]
    first = trace.jobs[0]
    assert (first.job, first.submit, first.run_time, first.procs, first.user) == (
        1,
        0.0,
        1451.0,
        128,
        1,
    )
    assert first.wait is None and first.queue is None  # -1 means unknown


@needs_trace
def test_gzipped_copy_gives_the_same_jobs(tmp_path: Path) -> None:
    packed = tmp_path / "nasa.swf.gz"
    with TRACE.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, zipped = read_swf(TRACE), read_swf(packed)
    assert zipped.jobs == plain.jobs
    assert zipped.header == plain.header
    unnamed = tmp_path / "nasa-no-suffix"
    shutil.copy(packed, unnamed)
    assert len(read_swf(unnamed).jobs) == 18_239  # recognised by its magic bytes


def test_bad_input_gets_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(SWFError, match="not found"):
        read_swf(tmp_path / "missing.swf")
    short = tmp_path / "short.swf"
    short.write_text("; MaxProcs: 4\n1 0 -1 10 2\n")
    with pytest.raises(SWFError, match=r"short\.swf:2: expected 18 fields, found 5"):
        read_swf(short)
    words = tmp_path / "words.swf"
    words.write_text(" ".join(["x"] * 18) + "\n")
    with pytest.raises(SWFError, match="must be numbers"):
        read_swf(words)
    empty = tmp_path / "empty.swf"
    empty.write_text("; only a header\n")
    with pytest.raises(SWFError, match="holds no SWF jobs"):
        read_swf(empty)


def test_trace_mapping_to_tasks_and_workers(tmp_path: Path) -> None:
    log = tmp_path / "tiny.swf"
    rows = [
        "1 0 -1 100 1 -1 -1 -1 -1 -1 -1 5 1 -1 -1 -1 -1 -1",
        "2 10 -1 50 128 -1 -1 -1 -1 -1 -1 6 1 7 -1 -1 -1 -1",
        "3 20 -1 -1 4 -1 -1 -1 -1 -1 -1 7 1 2 -1 -1 -1 -1",
    ]
    log.write_text("; MaxProcs: 8\n" + "\n".join(rows) + "\n")
    scenario = scenario_from_trace(read_swf(log), "tiny", load=0.5, time_scale=0.1)
    assert len(scenario.workers) == 2 and all(w.slots == 4 for w in scenario.workers)
    assert scenario.notes["dropped_jobs"] == 1  # unknown run time
    first, wide = scenario.workload.tasks
    assert (first.type, first.priority) == ("app1", 0)  # unknown executable: user 5 -> app1
    assert (wide.type, wide.priority) == ("app3", 7)  # executable 7 -> app3; 128 procs -> 7
    assert list(scenario.workload.duration) == pytest.approx([10.0, 5.0])
    # arrivals compressed so that offered load = 15 s of work / span / 8 slots = 0.5
    span = float(scenario.workload.arrival[-1])
    assert 15.0 / span / 8 == pytest.approx(0.5)
