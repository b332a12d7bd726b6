"""An experiment chain at the task level: env_setup, stage in, job_submission, stage out."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aurora.local import LocalAurora
from matchmaker.devtools.cluster import storage_site
from matchmaker.devtools.experiment import run_experiment
from matchmaker.messages import TaskRequest
from workers.tasks import REGISTRY, TaskContext

ROWS = b"".join(b"%d,%d\n" % (i, i * i) for i in range(1000))


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "storage"
    site.mkdir()
    (site / "squares.csv").write_bytes(ROWS)
    with storage_site(site) as url:
        yield url


def test_experiment_chain(tmp_path: Path, storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = tmp_path / "worker-sandbox"
    with LocalAurora(port=0, sandbox_root=tmp_path / "aurora", state_dir=tmp_path / "a") as aurora:
        monkeypatch.setenv("MM_AURORA_TOKEN", aurora.token)  # as a worker is given it

        def submit(r: TaskRequest) -> dict[str, Any]:
            context = TaskContext(
                r.id, 1, "w1", sandbox, aurora_url=aurora.url,
                stage_roots=(sandbox,),  # stage-out copies the job's output from here
                allow_net=(ipaddress.ip_network("127.0.0.1/32"),),  # the storage site
            )  # fmt: skip
            return REGISTRY[r.type](r.payload, context)

        steps = run_experiment(
            "exp-7", f"{storage}/squares.csv", hashlib.sha256(ROWS).hexdigest(), submit
        )
    assert steps["job"]["status"] == "FINISHED"
    assert (sandbox / "results/exp-7/count.txt").read_text() == "1000\n"
    assert steps["stage_out"]["bytes"] == 5
