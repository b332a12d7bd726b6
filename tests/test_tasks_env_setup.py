"""env_setup with real directories, a real virtual environment and an offline pip install."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workers.tasks import REGISTRY, TaskContext, TaskError
from workers.tasks.env_setup import run


def ctx(sandbox: Path) -> TaskContext:
    return TaskContext("t1", 1, "w1", sandbox)


def test_registered() -> None:
    assert REGISTRY["env_setup"] is run


def test_directory_files_and_python_check(tmp_path: Path) -> None:
    steps = [
        {"step": "mkdir", "path": "inputs/raw"},
        {"step": "write_file", "path": "run.sh", "content": "echo hi\n", "executable": True},
        {"step": "check_python", "min_version": "3.11"},
    ]
    result = run({"directory": "exp-1", "steps": steps}, ctx(tmp_path))
    exp = tmp_path / "exp-1"
    assert result["directory"] == str(exp)
    assert (exp / "inputs/raw").is_dir()
    assert (exp / "run.sh").read_text() == "echo hi\n" and (exp / "run.sh").stat().st_mode & 0o100
    assert [s["step"] for s in result["steps"]] == ["mkdir", "write_file", "check_python"]
    assert result["steps"][2]["version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")


def test_disallowed_step_is_refused_before_anything_runs(tmp_path: Path) -> None:
    steps = [{"step": "mkdir", "path": "a"}, {"step": "shell", "command": "rm -rf /"}]
    with pytest.raises(TaskError, match=r"step 2 \('shell'\) is not allowed; allowed steps: "):
        run({"directory": "exp-2", "steps": steps}, ctx(tmp_path))
    assert not (tmp_path / "exp-2").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"directory": "../out"}, "'..'"),
        ({"directory": "/tmp/out"}, "absolute"),
        ({"directory": "e", "steps": [{"step": "mkdir", "path": "../../out"}]}, "'..'"),
        ({"directory": "e", "steps": [{"step": "write_file", "path": "f"}]}, "needs 'content'"),
        (
            {"directory": "e", "steps": [{"step": "check_python", "min_version": "99"}]},
            "older than",
        ),
        ({"directory": "e", "steps": "mkdir"}, "'steps' must be a list"),
        (
            {"directory": "e", "steps": [{"step": "pip_install", "packages": ["x; rm -rf /"]}]},
            "names",
        ),
    ],
)
def test_bad_payloads_are_refused(tmp_path: Path, payload: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        run(payload, ctx(tmp_path / "sandbox"))
    assert not (tmp_path / "out").exists()


def test_symlinked_experiment_directory_is_refused(tmp_path: Path) -> None:
    sandbox, outside = tmp_path / "sandbox", tmp_path / "outside"
    sandbox.mkdir()
    outside.mkdir()
    (sandbox / "exp").symlink_to(outside)
    with pytest.raises(TaskError, match="symbolic link"):
        run({"directory": "exp", "steps": [{"step": "mkdir", "path": "x"}]}, ctx(sandbox))
    assert list(outside.iterdir()) == []


def make_wheel(directory: Path) -> None:
    """A minimal pure-Python wheel ``mmdemo 1.0`` (a zip with metadata and a RECORD)."""
    files = {
        "mmdemo/__init__.py": b"VALUE = 42\n",
        "mmdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mmdemo\nVersion: 1.0\n",
        "mmdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(content)}")
    record.append("mmdemo-1.0.dist-info/RECORD,,")
    files["mmdemo-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    directory.mkdir(parents=True)
    with zipfile.ZipFile(directory / "mmdemo-1.0-py3-none-any.whl", "w") as wheel:
        for name, content in files.items():
            wheel.writestr(name, content)


def test_venv_and_offline_pip_install(tmp_path: Path) -> None:
    make_wheel(tmp_path / "exp" / "wheels")
    steps = [
        {"step": "venv", "path": "venv", "pip": True},
        {
            "step": "pip_install",
            "venv": "venv",
            "packages": ["mmdemo==1.0"],
            "find_links": "wheels",
        },
        {"step": "check_python", "venv": "venv", "min_version": "3"},
    ]
    result = run({"directory": "exp", "steps": steps}, ctx(tmp_path))
    python = tmp_path / "exp" / "venv" / "bin" / "python"
    assert result["python"] == str(python)
    out = subprocess.run(
        [python, "-c", "import mmdemo; print(mmdemo.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"
    with pytest.raises(TaskError, match="pip install failed"):  # not in the wheelhouse: no download
        run(
            {
                "directory": "exp",
                "steps": [
                    {
                        "step": "pip_install",
                        "venv": "venv",
                        "packages": ["requests"],
                        "find_links": "wheels",
                    }
                ],
            },
            ctx(tmp_path),
        )
