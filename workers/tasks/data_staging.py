"""``data_staging``: copy a ``file://`` or ``http(s)://`` source into the sandbox.

Payload::

    {"source": "file:///data/in.csv" | "https://host/in.csv",
     "destination": "exp-1/inputs/in.csv",      # relative to the worker's sandbox
     "sha256": "<64 hex digits>",               # optional: verified before the file appears
     "max_bytes": 1073741824,                   # optional size limit (default 1 GiB)
     "timeout": 300}                            # optional, seconds (also bounded by the deadline)

The source is streamed in chunks, counted against ``max_bytes`` and hashed on
the way; the destination is written atomically (``workers.tasks.paths``), so
it either appears complete and verified or not at all. Destinations that
leave the sandbox (absolute, ``..``, through a symbolic link) are refused.
Output: ``{"source", "destination", "path", "bytes", "sha256"}``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from workers.tasks.base import TaskContext, TaskError
from workers.tasks.paths import PathError, atomic_file, parts_of

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 1 << 30
HARD_MAX_BYTES = 1 << 40
DEFAULT_TIMEOUT = 300.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


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
    target = context.sandbox.joinpath(*parts)
    relative = "/".join(parts)
    remaining = context.remaining()
    deadline = time.monotonic() + (timeout if remaining is None else min(timeout, remaining))

    digest = hashlib.sha256()
    size = 0
    try:
        with (
            _open_source(source, max_bytes, deadline) as reader,
            atomic_file(context.sandbox, relative) as out,
        ):
            while chunk := reader.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise TaskError(
                        f"data_staging: {source} is larger than max_bytes ({max_bytes})"
                    )
                if context.cancelled.is_set():
                    raise TaskError("data_staging: cancelled")
                if time.monotonic() > deadline:
                    raise TaskError(f"data_staging: copying {source} did not finish in time")
                digest.update(chunk)
                out.write(chunk)
            if expected is not None and digest.hexdigest() != expected.lower():
                got, want = digest.hexdigest(), expected.lower()
                raise TaskError(f"data_staging: sha256 of {source} is {got}, expected {want}")
    except PathError as e:
        raise TaskError(f"data_staging: {e}") from None
    except (TimeoutError, urllib.error.URLError) as e:  # raised while reading the body
        raise TaskError(f"data_staging: reading {source} failed: {_reason(e)}") from None
    except OSError as e:
        raise TaskError(
            f"data_staging: staging to {destination!r} failed: {e.strerror or e}"
        ) from None
    return {
        "source": source,
        "destination": destination,
        "path": str(target),
        "bytes": size,
        "sha256": digest.hexdigest(),
    }


@contextmanager
def _open_source(url: str, max_bytes: int, deadline: float) -> Iterator[BinaryIO]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        with _open_file(parsed, url, max_bytes) as reader:
            yield reader
    elif parsed.scheme in ("http", "https"):
        with _open_http(url, max_bytes, deadline) as reader:
            yield reader
    else:
        raise TaskError(
            f"data_staging: source scheme {parsed.scheme!r} is not supported (file, http, https)"
        )


@contextmanager
def _open_file(parsed: urllib.parse.SplitResult, url: str, max_bytes: int) -> Iterator[BinaryIO]:
    if parsed.netloc not in ("", "localhost"):
        raise TaskError(f"data_staging: {url} names a remote host; file:// sources must be local")
    path = urllib.request.url2pathname(parsed.path)
    if not os.path.isabs(path):
        raise TaskError(f"data_staging: {url} does not name an absolute path")
    try:
        reader = open(path, "rb")  # noqa: SIM115 - closed below
    except IsADirectoryError:
        raise TaskError(f"data_staging: {url} is not a regular file") from None
    except OSError as e:
        raise TaskError(f"data_staging: cannot open {url}: {e.strerror or e}") from None
    with reader:
        info = os.fstat(reader.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TaskError(f"data_staging: {url} is not a regular file")
        if info.st_size > max_bytes:
            raise TaskError(f"data_staging: {url} is larger than max_bytes ({max_bytes})")
        yield reader


@contextmanager
def _open_http(url: str, max_bytes: int, deadline: float) -> Iterator[BinaryIO]:
    request = urllib.request.Request(url, headers={"User-Agent": "matchmaker-data-staging"})
    timeout = max(0.1, min(60.0, deadline - time.monotonic()))
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise TaskError(f"data_staging: {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise TaskError(f"data_staging: cannot reach {url}: {_reason(e)}") from None
    with response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise TaskError(f"data_staging: {url} is larger than max_bytes ({max_bytes})")
        yield response


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
        return "timed out"
    return str(reason)
