"""A science-gateway experiment as a chain of four tasks, the way an orchestrator sends them.

1. ``env_setup``: the experiment's directory, an outputs folder and a
   counting script (allow-listed steps only);
2. ``data_staging`` in: the input from a storage URL, checked by sha256;
3. ``job_submission``: an Aurora job that runs the script on the input;
4. ``data_staging`` out: the job's output to ``results/<name>/``.

Each step needs what the one before returned (the directory, the staged
path), so ``run_experiment`` submits a step only when the previous one
succeeded. ``submit`` is whatever sends one request and returns its output:
the demo goes through the broker, a task-level test calls the tasks directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from matchmaker.messages import TaskRequest

Submit = Callable[[TaskRequest], Mapping[str, Any]]

COUNT_SCRIPT = '#!/bin/sh\nwc -l < "$1" | tr -d " " > "$2"\n'


def run_experiment(
    name: str,
    source: str,
    sha256: str,
    submit: Submit,
    constraints: Mapping[str, Any] | None = None,
) -> dict[str, Mapping[str, Any]]:
    """Run the four steps in order; returns each step's output by step name."""
    where = dict(constraints or {})
    env = submit(
        TaskRequest(
            f"{name}-env",
            "env_setup",
            {
                "directory": name,
                "steps": [
                    {"step": "mkdir", "path": "outputs"},
                    {"step": "write_file", "path": "count.sh", "content": COUNT_SCRIPT},
                ],
            },
            constraints=where,
        )
    )
    directory = Path(env["directory"])
    staged = submit(
        TaskRequest(
            f"{name}-stage-in",
            "data_staging",
            {"source": source, "destination": f"{name}/input", "sha256": sha256},
            constraints=where,
        )
    )
    script, output = directory / "count.sh", directory / "outputs" / "count"
    cmdline = f"/bin/sh {script} {staged['path']} {output}"  # a script is never made executable
    job = submit(
        TaskRequest(
            f"{name}-job",
            "job_submission",
            {
                "job": {"role": "gateway", "environment": "demo", "name": name},
                "processes": [{"name": "count", "cmdline": cmdline}],
                "resources": {"cpus": 0.1, "ram_mb": 16, "disk_mb": 16},
                "timeout": 60,
            },
            constraints=where,
        )
    )
    out = submit(
        TaskRequest(
            f"{name}-stage-out",
            "data_staging",
            {"source": output.as_uri(), "destination": f"results/{name}/count.txt"},
            constraints=where,
        )
    )
    return {"env": env, "stage_in": staged, "job": job, "stage_out": out}
