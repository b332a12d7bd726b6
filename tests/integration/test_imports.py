"""The worker side and clients import without the engine's heavy dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


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


def test_membership_imports_nothing_from_matchmaker() -> None:
    """Statically (every module of the package) and at run time (all of them loaded)."""
    root = Path(__file__).resolve().parents[2] / "membership"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "matchmaker"]
    assert offenders == []
    every = ", ".join(
        f"membership.{p.stem}" for p in sorted(root.glob("*.py")) if p.stem != "__main__"
    )
    modules = loaded_after(f"import membership, {every}")
    assert "membership.inventory" in modules
    assert not {m for m in modules if m.split(".")[0] == "matchmaker"}


def test_membership_speeds_are_the_engines() -> None:
    from matchmaker import models
    from membership import tags

    assert (tags.MIN_SPEED, tags.MAX_SPEED) == (models.MIN_SPEED, models.MAX_SPEED)
