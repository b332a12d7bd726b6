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
from matchmaker.experiment import run_experiment
from matchmaker.messages import TaskRequest
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

        def submit(r: TaskRequest) -> dict[str, Any]:
            context = TaskContext(r.id, 1, "w1", sandbox, aurora_url=aurora.url)
            return REGISTRY[r.type](r.payload, context)

        steps = run_experiment(
            "exp-7", f"{storage}/squares.csv", hashlib.sha256(ROWS).hexdigest(), submit
        )
    assert steps["job"]["status"] == "FINISHED"
    assert (sandbox / "results/exp-7/count.txt").read_text() == "1000\n"
    assert steps["stage_out"]["bytes"] == 5
