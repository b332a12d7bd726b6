"""env_setup with real directories, a real virtual environment and an offline pip install."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
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
        {"step": "write_file", "path": "run.sh", "content": "echo hi\n"},
        {"step": "check_python", "min_version": "3.11"},
    ]
    result = run({"directory": "exp-1", "steps": steps}, ctx(tmp_path))
    exp = tmp_path / "exp-1"
    assert result["directory"] == str(exp)
    assert (exp / "inputs/raw").is_dir()
    assert (exp / "run.sh").read_text() == "echo hi\n"
    assert stat.S_IMODE((exp / "run.sh").stat().st_mode) == 0o600
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


# -- only the worker's own interpreters run, with nothing of the worker's environment ----

FAKE_PYTHON = "#!/bin/sh\ntouch {marker}\necho 3.99.0\n"


def test_the_fake_interpreter_attack_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fake = {"step": "write_file", "path": "fake/bin/python",
            "content": FAKE_PYTHON.format(marker=marker)}  # fmt: skip
    with pytest.raises(TaskError, match="write_file cannot make a file executable"):
        run({"directory": "e", "steps": [{**fake, "executable": True}]}, ctx(tmp_path))
    assert not (tmp_path / "e" / "fake" / "bin" / "python").exists()
    wheels = {"step": "mkdir", "path": "wheels"}
    for use in (
        {"step": "check_python", "venv": "fake"},
        {"step": "pip_install", "venv": "fake", "packages": ["x"], "find_links": "wheels"},
    ):
        with pytest.raises(TaskError, match="'fake' is not a virtual environment this worker"):
            run({"directory": "e", "steps": [fake, wheels, use]}, ctx(tmp_path))
    # even made executable by some other means, it is not an interpreter the worker made
    (tmp_path / "e" / "fake" / "bin" / "python").chmod(0o755)
    with pytest.raises(TaskError, match="not a virtual environment this worker made"):
        run({"directory": "e", "steps": [{"step": "check_python", "venv": "fake"}]}, ctx(tmp_path))
    with pytest.raises(TaskError, match="already exists and is not an environment"):
        run({"directory": "e", "steps": [{"step": "venv", "path": "fake"}]}, ctx(tmp_path))
    assert not marker.exists()


def test_a_swapped_interpreter_of_a_real_environment_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run({"directory": "e", "steps": [{"step": "venv", "path": "venv"}]}, ctx(tmp_path))
    check = {"step": "check_python", "venv": "venv", "min_version": "3.11"}
    assert run({"directory": "e", "steps": [check]}, ctx(tmp_path))["steps"][0]["version"]
    into_venv = {"step": "write_file", "path": "venv/bin/python", "content": "#!/bin/sh\n"}
    with pytest.raises(TaskError, match="inside a virtual environment this worker made"):
        run({"directory": "e", "steps": [into_venv]}, ctx(tmp_path))
    python = tmp_path / "e" / "venv" / "bin" / "python"
    python.unlink()  # changed behind the worker's back (say, by a job on the same machine)
    python.write_text(FAKE_PYTHON.format(marker=marker))
    python.chmod(0o755)
    with pytest.raises(TaskError, match="no longer the one this worker made; refusing"):
        run({"directory": "e", "steps": [check]}, ctx(tmp_path))
    assert not marker.exists()


def test_commands_see_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_BROKER_URL", "amqp://worker:s3cret-password@broker/")
    monkeypatch.setenv("MM_TEST_SECRET", "s3cret-token")
    run({"directory": "e", "steps": [{"step": "venv", "path": "venv"}]}, ctx(tmp_path))
    # code that runs in the environment's interpreter (as an installed package's would)
    dump = tmp_path / "environ.txt"
    (site,) = (tmp_path / "e" / "venv" / "lib").glob("python3*/site-packages")
    (site / "sitecustomize.py").write_text(
        f"import os\nopen({str(dump)!r}, 'w').write(repr(dict(os.environ)))\n"
    )
    check = {"step": "check_python", "venv": "venv"}
    run({"directory": "e", "steps": [check]}, ctx(tmp_path))
    seen = eval(dump.read_text())
    assert "s3cret" not in repr(seen)
    assert {"PATH", "HOME", "LANG"} <= set(seen) <= {"PATH", "HOME", "LANG", *PIP_SETTINGS}
    assert seen["HOME"] == str(tmp_path) and os.environ["MM_TEST_SECRET"] == "s3cret-token"


PIP_SETTINGS = {
    "PIP_CONFIG_FILE",
    "PIP_NO_INDEX",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
