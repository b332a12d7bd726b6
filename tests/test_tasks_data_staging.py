"""data_staging with real files and a real local HTTP server."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchmaker.local import storage_site
from workers.tasks import REGISTRY, TaskContext, TaskError
from workers.tasks.data_staging import run

DATA = b"temperature,pressure\n" * 5000


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    return tmp_path / "sandbox"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "storage" / "input.csv"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def ctx(sandbox: Path) -> TaskContext:
    return TaskContext("t1", 1, "w1", sandbox)


@pytest.fixture
def http_url(source: Path) -> Iterator[str]:
    with storage_site(source.parent) as url:
        yield url


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_registered() -> None:
    assert REGISTRY["data_staging"] is run


def test_file_source_is_copied_and_verified(sandbox: Path, source: Path) -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    result = run(
        {"source": source.as_uri(), "destination": "exp-1/in/input.csv", "sha256": digest.upper()},
        ctx(sandbox),
    )
    assert (sandbox / "exp-1/in/input.csv").read_bytes() == DATA
    assert result["bytes"] == len(DATA) and result["sha256"] == digest
    assert result["path"] == str(sandbox / "exp-1/in/input.csv")
    assert leftovers(sandbox) == ["exp-1/in/input.csv"]  # no temporary file left


def test_http_source_is_streamed_in(sandbox: Path, http_url: str) -> None:
    result = run({"source": f"{http_url}/input.csv", "destination": "x/input.csv"}, ctx(sandbox))
    assert (sandbox / "x/input.csv").read_bytes() == DATA
    assert result["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_checksum_mismatch_leaves_nothing(sandbox: Path, source: Path) -> None:
    with pytest.raises(TaskError, match=r"sha256 of .* expected 0000"):
        run({"source": source.as_uri(), "destination": "in.csv", "sha256": "0" * 64}, ctx(sandbox))
    assert leftovers(sandbox) == []


def test_existing_file_is_kept_when_staging_fails(sandbox: Path, source: Path) -> None:
    (sandbox).mkdir()
    (sandbox / "in.csv").write_text("previous")
    with pytest.raises(TaskError):
        run({"source": source.as_uri(), "destination": "in.csv", "sha256": "1" * 64}, ctx(sandbox))
    assert (sandbox / "in.csv").read_text() == "previous"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("../escape.csv", "'..'"),
        ("a/../../escape.csv", "'..'"),
        ("/etc/escape.csv", "absolute"),
        ("", "non-empty"),
        (".", "sandbox itself"),
    ],
)
def test_destinations_outside_the_sandbox_are_refused(
    sandbox: Path, source: Path, tmp_path: Path, destination: str, message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        run({"source": source.as_uri(), "destination": destination}, ctx(sandbox))
    assert not (tmp_path / "escape.csv").exists()


def test_symlink_out_of_the_sandbox_is_refused(sandbox: Path, source: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sandbox.mkdir()
    (sandbox / "link").symlink_to(outside)
    with pytest.raises(TaskError, match="'link' is a symbolic link"):
        run({"source": source.as_uri(), "destination": "link/stolen.csv"}, ctx(sandbox))
    (sandbox / "deep").mkdir()
    (sandbox / "deep" / "link").symlink_to(outside)
    with pytest.raises(TaskError, match="'deep/link' is a symbolic link"):
        run({"source": source.as_uri(), "destination": "deep/link/sub/stolen.csv"}, ctx(sandbox))
    assert list(outside.iterdir()) == []


def test_oversize_sources_are_refused(sandbox: Path, source: Path, http_url: str) -> None:
    with pytest.raises(TaskError, match="larger than max_bytes"):
        run({"source": source.as_uri(), "destination": "a", "max_bytes": 100}, ctx(sandbox))
    with pytest.raises(TaskError, match="larger than max_bytes"):
        run({"source": f"{http_url}/input.csv", "destination": "b", "max_bytes": 100}, ctx(sandbox))
    assert leftovers(sandbox) == []


def test_unreachable_and_missing_sources(sandbox: Path, http_url: str, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TaskError, match=r"cannot reach http://127\.0\.0\.1"):
        run({"source": f"http://127.0.0.1:{port}/x", "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="answered HTTP 404"):
        run({"source": f"{http_url}/missing.csv", "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="cannot open"):
        run({"source": (tmp_path / "nope").as_uri(), "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="not a regular file"):
        run({"source": tmp_path.as_uri(), "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'ftp' is not supported"):
        run({"source": "ftp://example.org/x", "destination": "x"}, ctx(sandbox))


def test_bad_payloads(sandbox: Path, source: Path) -> None:
    with pytest.raises(TaskError, match="'source'"):
        run({"destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'sha256'"):
        run({"source": source.as_uri(), "destination": "x", "sha256": "abc"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'max_bytes'"):
        run({"source": source.as_uri(), "destination": "x", "max_bytes": 0}, ctx(sandbox))


def test_cancelled_staging_stops(sandbox: Path, source: Path) -> None:
    context = ctx(sandbox)
    context.cancelled.set()
    with pytest.raises(TaskError, match="cancelled"):
        run({"source": source.as_uri(), "destination": "x"}, context)
    assert leftovers(sandbox) == []
