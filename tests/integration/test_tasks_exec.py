"""The ``exec`` driver: a real worker process with named commands, fed over the real broker."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matchmaker.messages import Cancel, encode
from matchmaker.wire.broker import CONTROL
from tests.workers_support import ROOT, Client, client, spawn, wait_for  # noqa: F401

pytestmark = pytest.mark.broker

NO_SERF = ("--no-serf",)


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(
        "[commands]\n"
        'echo = ["/bin/echo", "said:"]\n'
        'sh = ["/bin/sh", "-c"]\n'  # a test's convenience; an operator names real programs
        'env = ["/usr/bin/env"]\n'
    )
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def ended(pid: int) -> bool:
    return not alive(pid)


def pids(directory: Path) -> list[int]:
    """The pids a test command wrote (its shell's and its child's)."""
    return [int(p) for p in (directory / "pids").read_text().split()]


SPAWNER = "sleep 60 & echo $$ $! > pids; echo started; wait"


def test_a_configured_command_runs_with_its_output_and_log(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF)
    client.dispatch("w1", "hello", {"command": "echo", "args": ["a b", "$HOME;", "*"]}, type="exec")
    final = client.final("hello")
    assert final.state == "succeeded", final.error
    assert final.output is not None
    assert final.output["exit_code"] == 0
    assert final.output["stdout"] == "said: a b $HOME; *\n"  # no shell: nothing expanded
    assert final.logs == "said: a b $HOME; *\n"
    client.dispatch("w1", "env", {"command": "env"}, type="exec")
    env = client.final("env")
    assert env.output is not None
    names = {line.split("=", 1)[0] for line in env.output["stdout"].splitlines()}
    assert names == {"PATH", "HOME", "TMPDIR", "LANG", "MM_TASK_ID", "MM_ATTEMPT"}
    home = next(v for v in env.output["stdout"].splitlines() if v.startswith("HOME="))
    assert home == f"HOME={tmp_path / 'sandbox' / 'w1' / 'exec' / 'env'}"


def test_stderr_and_a_failing_exit_are_reported(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF)
    script = "echo to-out; echo first-err >&2; echo last-err >&2; exit 3"
    client.dispatch("w1", "bad", {"command": "sh", "args": [script]}, type="exec")
    final = client.final("bad")
    assert final.state == "failed"
    assert final.error == "exec: sh exited with 3: last-err"
    assert final.logs is not None
    assert "first-err\n" in final.logs and "to-out\n" in final.logs


def test_unknown_command_and_bad_arguments_are_refused(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF)
    client.dispatch("w1", "rm", {"command": "rm", "args": ["-rf", "/"]}, type="exec")
    rm = client.final("rm")
    assert rm.state == "failed"
    assert (
        rm.error == "exec: command 'rm' is not configured on worker w1 (configured: echo, env, sh)"
    )
    client.dispatch("w1", "many", {"command": "echo", "args": ["x"] * 257}, type="exec")
    assert "at most 256 strings" in (client.final("many").error or "")
    client.dispatch("w1", "nul", {"command": "echo", "args": ["a\0b"]}, type="exec")
    assert "without a NUL byte" in (client.final("nul").error or "")
    client.dispatch("w1", "out", {"command": "echo", "directory": "../x"}, type="exec")
    assert "escape the sandbox" in (client.final("out").error or "")


def test_the_deadline_kills_the_whole_process_group(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF)
    payload = {"command": "sh", "args": [SPAWNER], "directory": "slow"}
    client.dispatch("w1", "slow", payload, type="exec", deadline=time.time() + 2.0)
    directory = tmp_path / "sandbox" / "w1" / "slow"
    wait_for(lambda: (directory / "pids").exists() and pids(directory), what="the command's pids")
    final = client.final("slow", timeout=20)
    assert final.state == "failed"
    assert final.error is not None and "deadline passed" in final.error
    for pid in pids(directory):
        wait_for(functools.partial(ended, pid), 10, f"process {pid} to be killed")
    assert final.logs is not None and "started" in final.logs


def test_a_cancel_kills_the_command(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    worker = spawn(
        "--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF
    )
    payload = {"command": "sh", "args": [SPAWNER], "directory": "doomed"}
    client.dispatch("w1", "doomed", payload, type="exec")
    directory = tmp_path / "sandbox" / "w1" / "doomed"
    wait_for(lambda: (directory / "pids").exists() and pids(directory), what="the command's pids")
    started = time.monotonic()
    client.channel.basic_publish(CONTROL, "cancel.w1", encode(Cancel("doomed")))
    final = client.final("doomed", timeout=20)
    assert final.state == "failed"
    assert final.error is not None and final.error.startswith("exec: sh was stopped after")
    assert final.error.endswith(": cancelled")
    for pid in pids(directory):
        wait_for(functools.partial(ended, pid), 10, f"process {pid} to be killed")
    assert time.monotonic() - started < 10
    assert "withheld" not in worker.text()  # it stopped in time: no slot lost


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args, "--no-serf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MM_BROKER_URL": "amqp://nobody@127.0.0.1:1/none"},
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (None, "--caps exec needs named commands: a [commands] table in the --config file"),
        ('[commands]\nls = ["ls"]\n', "'ls' must be an absolute path (no PATH lookup)"),
        ('[commands]\nx = ["/nonexistent/x"]\n', "/nonexistent/x is not an executable file"),
        ("[commands]\nx = []\n", "must be a non-empty list of strings"),
        ('[commands]\n"a b" = ["/bin/echo"]\n', "command name 'a b' must be 1-64"),
        ('commands = "ls"\n', "[commands] must be a table"),
        ("shell = true\n", "unknown key(s) shell (known: commands, limits, tasks)"),
        ("[limits]\nswap = 1\n", "unknown limit(s) swap (known: memory, cpu, files, file_size)"),
        ('[limits]\nmemory = "lots"\n', "limit 'memory' must be bytes"),
        ("[limits]\ncpu = -1\n", "limit 'cpu' must be a whole number from 1 to 2**62"),
        ('[limits]\nfiles = "64"\n', "limit 'files' must be a whole number"),
        ('limits = "2G"\n', "[limits] must be a table"),
        ("[commands\n", "not valid TOML"),
    ],
)
def test_bad_exec_configuration_is_one_sentence(
    toml: str | None, message: str, tmp_path: Path
) -> None:
    args = ["--name", "w1", "--caps", "exec"]
    if toml is not None:
        path = tmp_path / "worker.toml"
        path.write_text(toml)
        args += ["--config", str(path)]
    done = _cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_flood_of_output_is_kept_bounded(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    spawn("--name", "w1", "--caps", "exec", "--config", str(config_file(tmp_path)), *NO_SERF)
    script = "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo the-end"
    client.dispatch("w1", "flood", {"command": "sh", "args": [script]}, type="exec")
    final = client.final("flood", timeout=30)
    assert final.state == "succeeded", final.error
    assert final.output is not None
    assert len(final.output["stdout"]) == 16 * 1024
    assert final.output["stdout"].endswith("x\nthe-end\n")
    assert final.logs is not None and final.logs.endswith("x\nthe-end\n")
    head, _, tail = final.logs.partition("\n")
    assert head == f"[... {3_000_009 - 64 * 1024} bytes dropped ...]"
    assert len(tail) == 64 * 1024


def test_limits_hold_a_command_from_its_first_instruction(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The worker file's [limits] are the command's rlimits, soft and hard, inherited by
    its children; one exceeded kills it, and the error names the limits."""
    path = config_file(tmp_path)
    path.write_text(path.read_text() + '[limits]\nfiles = 32\nfile_size = "1M"\ncpu = 1\n')
    spawn("--name", "w1", "--caps", "exec", "--config", str(path), *NO_SERF)
    client.dispatch(
        "w1", "shown", {"command": "sh", "args": ["cat /proc/self/limits"]}, type="exec"
    )
    final = client.final("shown")  # read by a child of the command
    assert final.state == "succeeded", final.error
    assert final.output is not None
    shown = {
        line[:26].strip(): line[26:].split()[:2] for line in final.output["stdout"].splitlines()
    }
    assert shown["Max cpu time"] == ["1", "1"]  # soft, hard
    assert shown["Max file size"] == ["1048576", "1048576"]
    assert shown["Max open files"] == ["32", "32"]
    assert shown["Max address space"] == ["unlimited", "unlimited"]  # not set: not changed
    big = "exec head -c 2000000 /dev/zero > big"
    client.dispatch("w1", "big", {"command": "sh", "args": [big]}, type="exec")
    final = client.final("big")
    assert final.state == "failed"
    assert final.error is not None
    assert "was killed by SIGXFSZ (limits: cpu 1, file_size 1048576, files 32)" in final.error
