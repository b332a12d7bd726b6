"""The worker side and clients import without the engine's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_workers_and_messages_do_not_load_the_engine() -> None:
    modules = loaded_after(
        "import workers, workers.runtime, matchmaker.messages, matchmaker.wire.broker"
    )
    assert "workers.runtime" in modules
    assert not {"ortools", "numpy", "matchmaker.engine"} & modules


def test_the_engine_loads_on_first_use() -> None:
    modules = loaded_after("from matchmaker import plan")
    assert "matchmaker.engine" in modules
