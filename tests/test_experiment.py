"""An experiment chain submitted with the CLI runs end to end through the push pipeline.

env_setup -> data_staging in (over HTTP) -> job_submission (local Aurora) ->
data_staging out, each step submitted with ``python -m matchmaker submit``
once the previous one succeeded, as a gateway's orchestrator would.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from matchmaker.local import LocalCluster

pytestmark = pytest.mark.timeout(240)
ROWS = b"".join(b"%d\n" % i for i in range(777))


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "storage"
    site.mkdir()
    (site / "rows.txt").write_bytes(ROWS)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_experiment_chain_through_the_cli(broker_url: str, tmp_path: Path, storage: str) -> None:
    with LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster") as cluster:
        cluster.start_aurora()
        cluster.start_scheduler()
        cluster.start_worker("stager", ["data_staging", "env_setup"], 2, {"site": "iu"})
        cluster.start_worker("submitter", ["job_submission"], 2, {"site": "iu"})
        cluster.start_worker("elsewhere", ["data_staging", "env_setup"], 2, {"site": "tacc"})
        common = ["--broker-url", broker_url, "--state-dir", str(cluster.state_dir)]

        def step(task_id: str, task_type: str, payload: dict[str, Any]) -> dict[str, Any]:
            submitted = subprocess.run(
                [sys.executable, "-m", "matchmaker", "submit", "--id", task_id, "--type", task_type,
                 "--payload", json.dumps(payload), "--constraint", "site=iu", *common],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert submitted.returncode == 0, submitted.stderr
            row = cluster.wait_states([task_id], ("succeeded", "dead"), timeout=90)[task_id]
            assert row.state == "succeeded", row.error
            assert row.worker in ("stager", "submitter")
            return row.output or {}

        env = step(
            "e-env",
            "env_setup",
            {
                "directory": "exp-9",
                "steps": [
                    {"step": "mkdir", "path": "outputs"},
                    {
                        "step": "write_file",
                        "path": "count.sh",
                        "content": '#!/bin/sh\nwc -l < "$1" | tr -d " " > "$2"\n',
                        "executable": True,
                    },
                ],
            },
        )
        exp = Path(env["directory"])
        staged = step(
            "e-in",
            "data_staging",
            {
                "source": f"{storage}/rows.txt",
                "destination": "exp-9/rows.txt",
                "sha256": hashlib.sha256(ROWS).hexdigest(),
            },
        )
        job = step(
            "e-job",
            "job_submission",
            {
                "job": {"role": "gateway", "environment": "test", "name": "exp-9"},
                "processes": [
                    {"name": "count", "cmdline": f"{exp}/count.sh {staged['path']} {exp}/outputs/n"}
                ],
                "resources": {"cpus": 0.1, "ram_mb": 16, "disk_mb": 16},
                "timeout": 60,
            },
        )
        assert job["status"] == "FINISHED"
        assert [e["status"] for e in job["tasks"][0]["events"]][-1] == "FINISHED"
        out = step(
            "e-out",
            "data_staging",
            {"source": (exp / "outputs" / "n").as_uri(), "destination": "results/exp-9/n.txt"},
        )
        assert Path(out["path"]).read_text() == "777\n"
        status = subprocess.run(
            [sys.executable, "-m", "matchmaker", "status", "e-job", *common],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "succeeded" in status.stdout and "submitter" in status.stdout
