"""An experiment chain submitted with the CLI runs end to end through the push pipeline.

env_setup -> data_staging in (over HTTP) -> job_submission (local Aurora) ->
data_staging out, each step submitted with ``python -m matchmaker submit``
once the previous one succeeded, as a gateway's orchestrator would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import LocalCluster, storage_site
from matchmaker.devtools.experiment import run_experiment
from matchmaker.messages import TaskRequest

pytestmark = pytest.mark.timeout(240)
ROWS = b"".join(b"%d\n" % i for i in range(777))


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "storage"
    site.mkdir()
    (site / "rows.txt").write_bytes(ROWS)
    with storage_site(site) as url:
        yield url


def test_experiment_chain_through_the_cli(broker_url: str, tmp_path: Path, storage: str) -> None:
    with LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster") as cluster:
        cluster.start_aurora()
        cluster.start_scheduler()
        own = cluster.workdir / "sandbox" / "stager"  # stage-out copies the job's output
        own.mkdir(parents=True)
        allowed = ["--stage-root", str(own), "--allow-net", "127.0.0.1/32"]  # + the storage site
        cluster.start_worker("stager", ["data_staging", "env_setup"], 2, {"site": "iu"},
                             extra=allowed)  # fmt: skip
        cluster.start_worker("submitter", ["job_submission"], 2, {"site": "iu"})
        cluster.start_worker("elsewhere", ["data_staging", "env_setup"], 2, {"site": "tacc"})
        common = ["--broker-url", broker_url, "--state-dir", str(cluster.state_dir)]

        def submit(r: TaskRequest) -> Mapping[str, Any]:
            line = json.dumps({"id": r.id, "type": r.type, "payload": r.payload,
                               "constraints": r.constraints})  # fmt: skip
            sent = subprocess.run(
                [sys.executable, "-m", "matchmaker", "submit", "--file", "-", *common],
                input=line, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert sent.returncode == 0 and sent.stdout.strip() == r.id, sent.stderr
            row = cluster.wait_states([r.id], ("succeeded", "dead"), timeout=90)[r.id]
            assert row.state == "succeeded", row.error
            assert row.worker in ("stager", "submitter")
            return row.output or {}

        source = f"{storage}/rows.txt"
        steps = run_experiment("exp-9", source, hashlib.sha256(ROWS).hexdigest(), submit,
                               {"site": "iu"})  # fmt: skip
        assert steps["job"]["status"] == "FINISHED"
        assert [e["status"] for e in steps["job"]["tasks"][0]["events"]][-1] == "FINISHED"
        assert Path(steps["stage_out"]["path"]).read_text() == "777\n"
        status = subprocess.run(
            [sys.executable, "-m", "matchmaker", "status", "exp-9-job", *common],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "succeeded" in status.stdout and "submitter" in status.stdout
