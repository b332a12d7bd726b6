"""The wheel, installed in a fresh virtual environment outside the repository, runs the
scheduler's CLI, a worker's and the benchmarks, with no extras (no matplotlib, networkx or
thrift)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("matchmaker", "membership", "workers", "aurora", "benchmarks")
FILES = ("pyproject.toml", "README.md", "LICENSE")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from a copy of the sources (the tree stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "state")
    for name in SOURCES:
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in FILES:
        shutil.copy2(ROOT / name, source / name)
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), "."], source)
    (wheel,) = dist.glob("matchmaker_scheduler-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp)
    return venv


def test_the_wheel_names_its_distribution_license_and_scripts(installed: Path) -> None:
    (info,) = installed.glob("lib/python*/site-packages/matchmaker_scheduler-*.dist-info")
    metadata = (info / "METADATA").read_text()
    assert "Name: matchmaker-scheduler" in metadata and "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in next(info.rglob("LICENSE")).read_text()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [line for line in requires if "extra ==" not in line]
    assert not [line for line in core if "networkx" in line or "thrift" in line]
    assert any("thrift" in line and 'extra == "aurora"' in line for line in requires)
    assert (installed / "bin" / "matchmaker").exists()
    assert (installed / "bin" / "matchmaker-worker").exists()


def test_the_installed_commands_run_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    bin_ = installed / "bin"
    where = run(
        [str(bin_ / "python"), "-c", "import matchmaker; print(matchmaker.__file__)"], tmp_path
    )
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout
    assert "run" in run([str(bin_ / "matchmaker"), "--help"], tmp_path).stdout
    assert run([str(bin_ / "matchmaker"), "--version"], tmp_path).stdout.startswith("matchmaker ")
    assert "--caps" in run([str(bin_ / "matchmaker-worker"), "--help"], tmp_path).stdout
    assert "worker" in run([str(bin_ / "matchmaker-worker"), "--version"], tmp_path).stdout


def test_the_installed_benchmarks_say_what_to_install(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    solver = [python, "-m", "benchmarks", "solver", "--sizes", "200x20", "--rounds", "1"]
    done = run([*solver, "--out", str(tmp_path / "solver.json")], tmp_path)
    assert (tmp_path / "solver.json").exists()
    assert "matplotlib is not installed" in done.stderr and "[bench]" in done.stderr
    assert "networkx is not installed" in done.stdout + (tmp_path / "solver.json").read_text()
    assert "Traceback" not in done.stderr
