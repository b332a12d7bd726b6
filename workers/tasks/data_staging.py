"""``data_staging``: copy a ``file://`` or ``http(s)://`` source into the sandbox.

Payload::

    {"source": "file:///data/in.csv" | "https://host/in.csv",
     "destination": "exp-1/inputs/in.csv",      # relative to the worker's sandbox
     "sha256": "<64 hex digits>",               # optional: verified before the file appears
     "max_bytes": 1073741824,                   # optional size limit (default 1 GiB)
     "timeout": 300}                            # optional, seconds (also bounded by the deadline)

What a source may be is the worker's to say, not the submitter's: a
``file://`` source must lie under one of ``context.stage_roots`` (none by
default, so none is copied), reached without following a symbolic link and
opened without blocking (a FIFO is refused, not waited on); an ``http(s)``
source must resolve, on every redirect, to public addresses or to a network
in ``context.allow_net`` (``workers.tasks.fetch``). The source is streamed in
small chunks, counted against ``max_bytes`` and hashed on the way, and the
deadline and cancel flag are checked between chunks and while a read waits.
The destination is written atomically, 0600 (``workers.tasks.paths``), so it
either appears complete and verified or not at all. Destinations that leave
the sandbox (absolute, ``..``, through a symbolic link) are refused.
Output: ``{"source", "destination", "path", "bytes", "sha256"}``.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workers.registry import task
from workers.tasks import fetch
from workers.tasks.base import TaskContext, TaskError
from workers.tasks.paths import PathError, atomic_file, open_regular, parts_of

CHUNK = 64 * 1024
DEFAULT_MAX_BYTES = 1 << 30
HARD_MAX_BYTES = 1 << 40
DEFAULT_TIMEOUT = 300.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
Reader = Callable[[int], bytes]


@task("data_staging")
def run(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    source, destination = payload.get("source"), payload.get("destination")
    if not isinstance(source, str) or not source:
        raise TaskError("data_staging: 'source' must be a file:// or http(s):// URL")
    expected = payload.get("sha256")
    if expected is not None and (not isinstance(expected, str) or not _SHA256.match(expected)):
        raise TaskError("data_staging: 'sha256' must be 64 hexadecimal digits")
    max_bytes = payload.get("max_bytes", DEFAULT_MAX_BYTES)
    if (
        isinstance(max_bytes, bool)
        or not isinstance(max_bytes, int)
        or not 0 < max_bytes <= HARD_MAX_BYTES
    ):
        raise TaskError(f"data_staging: 'max_bytes' must be an integer from 1 to {HARD_MAX_BYTES}")
    timeout = payload.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise TaskError("data_staging: 'timeout' must be a positive number of seconds")
    try:
        parts = parts_of(destination, "destination")
    except PathError as e:
        raise TaskError(f"data_staging: {e}") from None
    remaining = context.remaining()
    deadline = time.monotonic() + (timeout if remaining is None else min(timeout, remaining))
    guard = fetch.Guard(deadline, context.cancelled, f"copying {source}")
    try:
        size, digest = _stage(source, "/".join(parts), context, guard, max_bytes, expected)
    except fetch.FetchError as e:
        raise TaskError(f"data_staging: {e}") from None
    except PathError as e:
        raise TaskError(f"data_staging: {e}") from None
    except OSError as e:
        raise TaskError(
            f"data_staging: staging to {destination!r} failed: {e.strerror or e}"
        ) from None
    return {
        "source": source,
        "destination": destination,
        "path": str(context.sandbox.joinpath(*parts)),
        "bytes": size,
        "sha256": digest,
    }


def _stage(
    source: str,
    relative: str,
    context: TaskContext,
    guard: fetch.Guard,
    max_bytes: int,
    expected: str | None,
) -> tuple[int, str]:
    """Copy ``source`` to ``sandbox/relative``; its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with (
        _open_source(source, context, guard, max_bytes) as read,
        atomic_file(context.sandbox, relative) as out,
    ):
        while True:
            guard.left()
            chunk = read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise TaskError(f"data_staging: {source} is larger than max_bytes ({max_bytes})")
            digest.update(chunk)
            out.write(chunk)
        guard.left()
        if expected is not None and digest.hexdigest() != expected.lower():
            got, want = digest.hexdigest(), expected.lower()
            raise TaskError(f"data_staging: sha256 of {source} is {got}, expected {want}")
    return size, digest.hexdigest()


@contextmanager
def _open_source(
    url: str, context: TaskContext, guard: fetch.Guard, max_bytes: int
) -> Iterator[Reader]:
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as e:
        raise TaskError(f"data_staging: 'source' {url!r} is not a valid URL: {e}") from None
    if parsed.scheme == "file":
        with _open_file(parsed, url, context.stage_roots, max_bytes) as reader:
            yield reader
    elif parsed.scheme in ("http", "https"):
        with _open_http(url, context, guard, max_bytes) as reader:
            yield reader
    else:
        raise TaskError(
            f"data_staging: source scheme {parsed.scheme!r} is not supported (file, http, https)"
        )


def _under(path: str, roots: tuple[Path, ...]) -> tuple[Path, list[str]] | None:
    """The allowed root ``path`` lies under and the components below it, if any."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for root in roots:
        for base in dict.fromkeys((root, Path(os.path.realpath(root)))):
            depth = len(base.parts) - 1
            if list(base.parts[1:]) == parts[:depth] and len(parts) > depth:
                return Path(os.path.realpath(root)), parts[depth:]
    return None


@contextmanager
def _open_file(
    parsed: urllib.parse.SplitResult, url: str, roots: tuple[Path, ...], max_bytes: int
) -> Iterator[Reader]:
    if parsed.netloc not in ("", "localhost"):
        raise TaskError(f"data_staging: {url} names a remote host; file:// sources must be local")
    path = urllib.request.url2pathname(parsed.path)
    if not os.path.isabs(path) or "\0" in path or ".." in path.split("/"):
        raise TaskError(f"data_staging: {url} does not name an absolute path without '..'")
    if not roots:
        raise TaskError(
            f"data_staging: {url}: this worker copies no local files (it has no --stage-root)"
        )
    found = _under(path, roots)
    if found is None:
        allowed = ", ".join(str(r) for r in roots)
        raise TaskError(
            f"data_staging: {url} is not under a staging root of this worker ({allowed})"
        )
    root, below = found
    try:
        fd = open_regular(root, below, url)
    except PathError as e:
        raise TaskError(f"data_staging: {e}") from None
    except OSError as e:
        raise TaskError(f"data_staging: cannot open {url}: {e.strerror or e}") from None
    with open(fd, "rb", buffering=0) as reader:
        if os.fstat(fd).st_size > max_bytes:
            raise TaskError(f"data_staging: {url} is larger than max_bytes ({max_bytes})")
        yield reader.read


@contextmanager
def _open_http(
    url: str, context: TaskContext, guard: fetch.Guard, max_bytes: int
) -> Iterator[Reader]:
    headers = {"User-Agent": "matchmaker-data-staging"}
    with fetch.get(url, context.allow_net, guard, headers) as response:
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise TaskError(f"data_staging: {url} is larger than max_bytes ({max_bytes})")
        yield lambda size: fetch.read(response, size, url)
