"""A reader for the Standard Workload Format (SWF) of the Parallel Workloads Archive.

An SWF file is text: header lines start with ``;`` and hold ``Key: value``
pairs (``MaxJobs``, ``MaxProcs``, ``UnixStartTime``, ``Queue``, ``Note`` ...;
a line without a key continues the previous value);
every other non-blank line is one job of 18 whitespace-separated numbers.
``-1`` means unknown and is read as ``None``. Files ending in ``.gz`` (or
starting with the gzip magic bytes) are decompressed on the fly.

Fields, in order: job number, submit time, wait time, run time, allocated
processors, average CPU time, used memory, requested processors, requested
time, requested memory, status, user id, group id, executable (application)
number, queue number, partition number, preceding job number, think time.

This module is standalone: it needs only the standard library.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FIELDS = (
    "job",
    "submit",
    "wait",
    "run_time",
    "procs",
    "cpu_time",
    "memory",
    "req_procs",
    "req_time",
    "req_memory",
    "status",
    "user",
    "group",
    "executable",
    "queue",
    "partition",
    "preceding_job",
    "think_time",
)


class SWFError(ValueError):
    """The file is not a readable SWF log."""


@dataclass(frozen=True, slots=True)
class Job:
    """One SWF job; every field but ``job`` and ``submit`` may be None (unknown)."""

    job: int
    submit: float
    wait: float | None
    run_time: float | None
    procs: int | None
    cpu_time: float | None
    memory: float | None
    req_procs: int | None
    req_time: float | None
    req_memory: float | None
    status: int | None
    user: int | None
    group: int | None
    executable: int | None
    queue: int | None
    partition: int | None
    preceding_job: int | None
    think_time: float | None


_INTS = {
    "job",
    "procs",
    "req_procs",
    "status",
    "user",
    "group",
    "executable",
    "queue",
    "partition",
    "preceding_job",
}


@dataclass
class Trace:
    """A parsed log: the header (key -> list of values, in file order) and the jobs."""

    header: dict[str, list[str]] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)

    def header_value(self, key: str) -> str | None:
        values = self.header.get(key)
        return values[0] if values else None

    def header_int(self, key: str) -> int | None:
        value = self.header_value(key)
        try:
            return int(value.split()[0]) if value else None
        except ValueError:
            return None

    @property
    def max_procs(self) -> int | None:
        return self.header_int("MaxProcs")

    @property
    def max_jobs(self) -> int | None:
        return self.header_int("MaxJobs")


_HEADER = re.compile(r"^([A-Z][A-Za-z]*):(.*)$")


def _open(path: Path) -> io.TextIOBase:
    with path.open("rb") as raw:
        magic = raw.read(2)
    if path.suffix == ".gz" or magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", errors="replace")


def _value(name: str, text: str) -> int | float | None:
    number = float(text)
    if number == -1:
        return None
    return int(number) if name in _INTS else number


def parse_lines(lines: Iterator[str], source: str = "<swf>") -> Trace:
    """Parse SWF text lines into a Trace; raises SWFError naming the first bad line."""
    trace = Trace()
    last = ""
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(";"):
            body = text[1:].strip()
            match = _HEADER.match(body)
            if match:
                trace.header.setdefault(match[1], []).append(match[2].strip())
                last = match[1]
            elif body and last:
                trace.header[last][-1] = f"{trace.header[last][-1]} {body}".strip()
            continue
        parts = text.split()
        if len(parts) < 18:
            raise SWFError(f"{source}:{number}: expected 18 fields, found {len(parts)}")
        try:
            values = [_value(name, part) for name, part in zip(FIELDS, parts[:18], strict=True)]
        except ValueError:
            raise SWFError(f"{source}:{number}: fields must be numbers") from None
        if values[0] is None or values[1] is None:
            raise SWFError(f"{source}:{number}: job number and submit time must be known")
        trace.jobs.append(Job(*values))  # type: ignore[arg-type]
    return trace


def read_swf(path: str | Path) -> Trace:
    """Read an SWF log, plain or gzipped; raises SWFError with one clear sentence."""
    path = Path(path)
    if not path.is_file():
        raise SWFError(f"SWF trace not found: {path}")
    try:
        with _open(path) as handle:
            trace = parse_lines(iter(handle), str(path))
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise SWFError(f"cannot read SWF trace {path}: {error}") from None
    if not trace.jobs:
        raise SWFError(f"{path} holds no SWF jobs")
    return trace
