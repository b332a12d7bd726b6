"""An experiment chain at the task level: env_setup, stage in, job_submission, stage out."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aurora.local import LocalAurora
from workers.tasks import REGISTRY, TaskContext

ROWS = b"".join(b"%d,%d\n" % (i, i * i) for i in range(1000))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "storage"
    site.mkdir()
    (site / "squares.csv").write_bytes(ROWS)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_experiment_chain(tmp_path: Path, storage: str) -> None:
    sandbox = tmp_path / "worker-sandbox"
    with LocalAurora(port=0, sandbox_root=tmp_path / "aurora") as aurora:

        def task(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
            return REGISTRY[kind](
                payload, TaskContext(kind, 1, "w1", sandbox, aurora_url=aurora.url)
            )

        env = task(
            "env_setup",
            {
                "directory": "exp-7",
                "steps": [
                    {"step": "mkdir", "path": "inputs"},
                    {"step": "mkdir", "path": "outputs"},
                    {
                        "step": "write_file",
                        "path": "solve.sh",
                        "content": '#!/bin/sh\nwc -l < "$1" | tr -d " " > "$2"\n',
                        "executable": True,
                    },
                ],
            },
        )
        exp = Path(env["directory"])
        staged = task(
            "data_staging",
            {
                "source": f"{storage}/squares.csv",
                "destination": "exp-7/inputs/squares.csv",
                "sha256": hashlib.sha256(ROWS).hexdigest(),
            },
        )
        job = task(
            "job_submission",
            {
                "job": {"role": "gateway", "environment": "test", "name": "exp-7"},
                "processes": [
                    {"name": "solve", "cmdline": f"{exp}/solve.sh {staged['path']} {exp}/outputs/n"}
                ],
                "resources": {"cpus": 0.1, "ram_mb": 16, "disk_mb": 16},
                "timeout": 30,
            },
        )
        assert job["status"] == "FINISHED"
        out = task(
            "data_staging",
            {"source": (exp / "outputs" / "n").as_uri(), "destination": "results/exp-7/n.txt"},
        )
    assert (sandbox / "results/exp-7/n.txt").read_text() == "1000\n"
    assert out["bytes"] == 5
