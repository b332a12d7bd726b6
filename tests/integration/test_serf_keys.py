"""Serf keys on by default: key files, the refusal without them, and agent directories swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from membership.agent import SerfAgent, free_port, sweep_stale_workdirs
from membership.errors import AgentError, KeyFileError, SerfAuthError
from membership.keys import (
    AUTH_FILE,
    ENCRYPT_FILE,
    INSECURE_HINT,
    check_encrypt_key,
    read_key_file,
    resolve,
)
from membership.rpc import SerfRPC
from tests.workers_support import wait_for

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True, timeout=60
    )


def test_keygen_writes_private_keys_and_keeps_them_unless_replaced(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    made = run("-m", "membership", "keygen", "--out", str(out))
    assert made.returncode == 0, made.stderr
    encrypt, auth = out / ENCRYPT_FILE, out / AUTH_FILE
    assert out.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in (encrypt, auth)} == {0o600}
    key = read_key_file(encrypt, "gossip key")
    assert check_encrypt_key(key) == key and len(key) == 24  # 16 bytes, base64
    assert len(read_key_file(auth, "RPC auth key")) >= 32
    again = run("-m", "membership", "keygen", "--out", str(out))
    assert again.returncode == 1 and "pass --replace" in again.stderr
    assert read_key_file(encrypt, "gossip key") == key
    rotated = run("-m", "membership", "keygen", "--out", str(out), "--replace")
    assert rotated.returncode == 0 and read_key_file(encrypt, "gossip key") != key


def test_key_files_others_can_read_or_empty_or_missing_are_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_text("c2VjcmV0c2VjcmV0c2VjcmV0\n")
    loose.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"readable by others .*chmod 600"):
        read_key_file(loose, "gossip key")
    empty = tmp_path / "empty.key"
    empty.touch(mode=0o600)
    with pytest.raises(KeyFileError, match="is empty"):
        read_key_file(empty, "gossip key")
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "nothing", "gossip key")


@pytest.mark.serf
def test_resolve_needs_both_keys_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as caught:
        resolve(environ={})
    assert str(caught.value) == INSECURE_HINT
    assert resolve(insecure=True, environ={}).insecure
    run("-m", "membership", "keygen", "--out", str(tmp_path))
    files = {
        "MM_SERF_ENCRYPT_FILE": str(tmp_path / ENCRYPT_FILE),
        "MM_SERF_AUTH_FILE": str(tmp_path / AUTH_FILE),
    }
    keys = resolve(environ=files)
    assert keys.encrypt and keys.auth and not keys.insecure
    only_auth = resolve(gossip=False, environ={"MM_SERF_AUTH": "token-in-env"})
    assert only_auth.auth == "token-in-env" and only_auth.encrypt is None
    with pytest.raises(KeyFileError, match="not valid base64"):
        resolve(encrypt="not base64!", auth="x", environ={})
    with pytest.raises(AgentError, match="python -m membership keygen"):
        SerfAgent("keyless", workdir=tmp_path / "agent")


def test_the_scheduler_and_its_cli_refuse_to_start_without_an_rpc_auth_key(
    tmp_path: Path,
) -> None:
    for command in ("run", "workers"):
        refused = run("-m", "matchmaker", command, "--state-dir", str(tmp_path))
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            "matchmaker: a Serf RPC auth key is required: create the keys with `python -m "
            "membership keygen --out DIR` and pass --serf-auth-key-file DIR/serf-rpc-auth.key "
            "(or set MM_SERF_AUTH_FILE), or run with --insecure to go without it."
        )
    leaky = tmp_path / "auth.key"
    leaky.write_text("s3cret\n")
    leaky.chmod(0o644)
    refused = run("-m", "matchmaker", "workers", "--serf-auth-key-file", str(leaky))
    assert refused.returncode == 2 and "readable by others" in refused.stderr


@pytest.mark.serf
def test_a_killed_process_s_agent_directory_is_swept_by_the_next_agent(tmp_path: Path) -> None:
    script = (
        "from membership.agent import SerfAgent\n"
        "a = SerfAgent('sweepme', insecure=True).start()\n"
        "print(a.workdir, a.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    workdir_text, agent_pid = owner.stdout.readline().split()
    workdir = Path(workdir_text)
    assert workdir.name.startswith("serf-sweepme-") and (workdir / "owner").exists()
    live = SerfAgent("bystander", insecure=True)  # sweeps, but both processes are alive
    assert workdir.exists()
    owner.kill()
    owner.wait()
    os.kill(int(agent_pid), signal.SIGKILL)  # the agent did not die with it (not a worker's)
    wait_for(lambda: not Path(f"/proc/{agent_pid}").exists(), what="the agent to be gone")
    assert workdir in sweep_stale_workdirs()
    assert not workdir.exists()
    assert live.workdir.exists()  # its creator, this process, is alive
    live.cleanup()
    assert not live.workdir.exists()


@pytest.mark.serf
def test_membership_agent_runs_a_keyed_agent_with_its_keys_out_of_ps(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("-m", "membership", "keygen", "--out", str(keys)).returncode == 0
    bind, rpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [sys.executable, "-m", "membership", "agent", "--node", "scheduler", "--bind", bind,
         "--rpc", rpc, "--tag", "role=scheduler", "--keys", str(keys),
         "--state-dir", str(tmp_path / "serf")],
        cwd=ROOT, env=CLEAN_ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        assert "scheduler up" in agent.stdout.readline()
        auth = read_key_file(keys / AUTH_FILE, "RPC auth key")
        with SerfRPC(rpc, auth) as client:
            (member,) = client.members()
            assert member.tags == {"role": "scheduler"}
            assert client.stats()["serf"]["encrypted"] == "true"
        with pytest.raises(SerfAuthError), SerfRPC(rpc) as anonymous:
            anonymous.members()
        config = tmp_path / "serf" / "scheduler" / "scheduler.json"
        assert config.stat().st_mode & 0o777 == 0o600
        serf_cmdlines = [
            p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if _readable(p)
        ]
        assert not any(auth.encode() in c for c in serf_cmdlines)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        assert "left the pool" in agent.stdout.read()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
