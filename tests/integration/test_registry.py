"""Task registration and the pieces of task logs and custom types that are pure logic."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from matchmaker.advertised import warnings
from matchmaker.messages import MAX_LOG_CHARS, MessageError, TaskResult, decode, encode
from tests.integration.test_imports import loaded_after
from workers.context import TaskContext, TaskLog
from workers.registry import (
    TASKS,
    Registry,
    RegistryError,
    check_name,
    load_entry_points,
    load_module,
    load_tasks,
    task,
)
from workers.runner import MAX_OUTPUT_BYTES, _logs

ROOT = Path(__file__).resolve().parents[2]


def noop(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    return {}


def other(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    return {"other": True}


@pytest.mark.parametrize("name", ["a", "wordcount", "bwa.mem", "x-1_2", "9lives", "a" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a:b", "a@b", "a/b", "é", "a" * 65, 7])
def test_bad_names(name: object) -> None:
    with pytest.raises(RegistryError, match="must be 1-64 letters"):
        check_name(name)


def test_a_collision_is_an_error_and_the_same_function_again_is_not() -> None:
    registry = Registry()
    task("one", registry=registry)(noop)
    task("one", registry=registry)(noop)  # a module imported twice: nothing changes
    twice = rf"'one' is defined twice: by {re.escape(__name__)}:noop"
    with pytest.raises(RegistryError, match=twice):
        task("one", registry=registry)(other)
    assert registry["one"] is noop and list(registry) == ["one"]
    with pytest.raises(RegistryError, match="must be 1-64"):
        task("no good")
    with pytest.raises(RegistryError, match="is not a function"):
        registry.add("two", 42)  # type: ignore[arg-type]


def test_built_ins_register_with_the_decorator() -> None:
    import workers.tasks

    assert set(workers.tasks.BUILT_IN) <= set(TASKS)
    assert TASKS.origin("sleep") == "workers.tasks.sleep:run"
    with pytest.raises(RegistryError, match="'sleep' is defined twice"):
        task("sleep")(noop)


def test_importing_workers_stays_light() -> None:
    modules = loaded_after("from workers import task, TaskContext, TaskError")
    assert not {"ortools", "numpy", "pika", "matchmaker.engine", "workers.tasks"} & modules


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for modules and distributions made by a test; the
    registry is restored afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = (dict(TASKS._tasks), dict(TASKS._origins))
    before = set(sys.modules)
    yield tmp_path
    TASKS._tasks, TASKS._origins = saved
    for name in set(sys.modules) - before:
        del sys.modules[name]
    importlib.invalidate_caches()


def distribution(site: Path, name: str, points: dict[str, str]) -> None:
    """A minimal installed distribution (``*.dist-info``) declaring ``points``."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in points.items())
    (info / "entry_points.txt").write_text(f"[matchmaker.tasks]\n{lines}")
    importlib.invalidate_caches()


MODULE = """
from workers import task

@task("{name}")
def run(payload, context):
    return {{"ran": "{name}"}}
"""


def test_load_module_registers_its_tasks_and_says_what_fails(site: Path) -> None:
    (site / "mm_reg_a.py").write_text(MODULE.format(name="reg_a"))
    assert load_module("mm_reg_a") == ["reg_a"]
    assert TASKS["reg_a"]({}, None) == {"ran": "reg_a"}  # type: ignore[arg-type]
    (site / "mm_reg_none.py").write_text("x = 1\n")
    (site / "mm_reg_boom.py").write_text("raise RuntimeError('boom')\n")
    (site / "mm_reg_clash.py").write_text(MODULE.format(name="sleep"))
    cases = {
        "mm_reg_missing": "--tasks mm_reg_missing: cannot import it: No module named",
        "mm_reg_none": "--tasks mm_reg_none: defines no task",
        "mm_reg_boom": "--tasks mm_reg_boom: importing it failed: RuntimeError('boom')",
        "mm_reg_clash": "--tasks mm_reg_clash: task type 'sleep' is defined twice",
        "../evil": "is not a module name",
    }
    for module, message in cases.items():
        with pytest.raises(RegistryError) as error:
            load_module(module)
        assert message in str(error.value)


def test_entry_points_load_only_what_is_asked_for(site: Path) -> None:
    (site / "mm_ep_pkg.py").write_text(MODULE.format(name="ep_one"))
    (site / "mm_ep_never.py").write_text("raise RuntimeError('must not be imported')\n")
    distribution(site, "ep_dist", {"ep_one": "mm_ep_pkg:run", "ep_never": "mm_ep_never:run"})
    assert load_entry_points(["sleep", "ep_one"]) == ["ep_one"]
    assert TASKS.origin("ep_one") == "mm_ep_pkg:run"
    assert "mm_ep_never" not in sys.modules
    with pytest.raises(RegistryError, match="ep_dist cannot be loaded: RuntimeError"):
        load_entry_points(["ep_never"])


def test_an_entry_point_may_be_a_plain_function_or_a_module(site: Path) -> None:
    (site / "mm_ep_plain.py").write_text("def count(payload, context):\n    return {}\n")
    (site / "mm_ep_mod.py").write_text(MODULE.format(name="ep_mod"))
    distribution(site, "ep_forms", {"ep_plain": "mm_ep_plain:count", "ep_mod": "mm_ep_mod"})
    assert load_entry_points(["ep_plain", "ep_mod"]) == ["ep_plain", "ep_mod"]
    assert TASKS.origin("ep_plain") == "mm_ep_plain:count"
    assert TASKS.origin("ep_mod") == "mm_ep_mod:run"


def test_entry_point_collisions_are_errors(site: Path) -> None:
    (site / "mm_ep_x.py").write_text(MODULE.format(name="ep_x"))
    distribution(site, "ep_first", {"ep_x": "mm_ep_x:run", "sleep": "mm_ep_x:run"})
    distribution(site, "ep_second", {"ep_x": "mm_ep_x:run"})
    with pytest.raises(RegistryError, match="'ep_x' is declared twice: entry point mm_ep_x:run"):
        load_entry_points(["ep_x"])
    with pytest.raises(RegistryError, match=r"'sleep' is defined twice: by workers\.tasks\.sleep"):
        load_entry_points(["sleep"])


def test_load_tasks_names_what_is_unknown(site: Path) -> None:
    (site / "mm_lt.py").write_text(MODULE.format(name="lt_known"))
    load_tasks(["sleep", "lt_known"], ["mm_lt"])
    with pytest.raises(RegistryError) as error:
        load_tasks(["sleep", "lt_unknown"], [])
    assert str(error.value).startswith("unknown task type(s) in --caps: lt_unknown (known: ")
    assert "'matchmaker.tasks' entry point" in str(error.value)
    with pytest.raises(RegistryError, match="must be 1-64"):
        load_tasks(["bad name"], [])


def test_task_log_keeps_the_tail_and_says_what_it_dropped() -> None:
    log = TaskLog(limit=10)
    assert not log and log.text() == ""
    print("0123456789", file=log)  # 11 bytes with its newline
    log.write("abc\r\x00\x1b[1m")
    assert log.dropped == 10  # the first line, but for its newline
    assert log.text() == "[... 10 bytes dropped ...]\n\nabc\n??[1m"  # \r ends a line
    assert log.text(limit=4).endswith("\n?[1m")


def test_a_context_logger_writes_to_the_attempt_log_only(tmp_path: Path) -> None:
    context = TaskContext("t1", 1, "w1", tmp_path, type="wordcount")
    context.logger.info("counted %d words", 3)
    assert context.log.text().endswith("INFO counted 3 words\n")
    assert context.logger is context.logger


def test_logs_fit_beside_the_output() -> None:
    log = TaskLog()
    log.write('"\\' * 40_000)  # 80 KB that JSON writes as 160 KB; the log keeps 64 KiB
    alone = _logs(log, None)
    assert alone is not None and len(alone) < 70_000
    big = {"x": "y" * (MAX_OUTPUT_BYTES - 100_000)}
    beside = _logs(log, big)
    assert beside is not None and beside.startswith("[... ")
    result = TaskResult("t", 1, "w", "succeeded", 1.0, 2.0, big, logs=beside)
    decoded = decode(encode(result))
    assert isinstance(decoded, TaskResult) and decoded.logs == beside
    assert _logs(TaskLog(), {"a": 1}) is None


def test_the_logs_field_is_checked_and_bounded() -> None:
    body = orjson.loads(encode(TaskResult("t", 1, "w", "failed", error="x")))
    assert "logs" in body
    long = decode(orjson.dumps({**body, "logs": "a" * MAX_LOG_CHARS + "tail"}))
    assert isinstance(long, TaskResult) and long.logs is not None
    assert len(long.logs) == MAX_LOG_CHARS and long.logs.endswith("tail")
    with pytest.raises(MessageError, match="'logs' must be a string or null"):
        decode(orjson.dumps({**body, "logs": ["a"]}))
    old = {k: v for k, v in body.items() if k != "logs"}  # an older worker's result
    assert isinstance(decode(orjson.dumps(old)), TaskResult)


def test_submit_takes_any_type_of_the_right_shape() -> None:
    ok = decode(b'{"v": 1, "id": "t", "type": "my.task-2"}')
    assert getattr(ok, "type", None) == "my.task-2"
    for bad in ("a:b", "x" * 65, "-x"):
        with pytest.raises(MessageError, match="'type' must be 1-64 characters"):
            decode(orjson.dumps({"v": 1, "id": "t", "type": bad}))


def test_submit_warnings() -> None:
    configured = ("sleep", "exec")
    assert warnings(["sleep", "wordcount"], {"sleep", "wordcount"}, configured) == []
    assert warnings(["sleep"], set(), configured) == [
        "no live worker advertises task type 'sleep'; its tasks wait until one does"
    ]
    assert warnings(["wordcoutn"], {"wordcount"}, configured) == [
        "no live worker advertises task type 'wordcoutn' (nor is it among the configured "
        "task_types); its tasks wait until one does"
    ]
    unknown = warnings(["sleep", "wordcount"], None, configured)
    assert len(unknown) == 1 and unknown[0].startswith("task type 'wordcount' is not among")


def test_custom_types_travel_in_serf_tags() -> None:
    from membership.tags import decode_worker, encode_worker_tags

    caps = ["wordcount", "bwa.mem", "a-b_c", "x" * 64]
    for name in caps:
        check_name(name)
    tags = encode_worker_tags("w1", caps, 2)
    info = decode_worker("w1", tags)
    assert info is not None and info.worker.capabilities == frozenset(caps)


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (MODULE.format(name="sleep"), ["--caps", "sleep"], "'sleep' is defined twice"),
        ("raise ImportError('no numpy here')", ["--caps", "sleep"], "no numpy here"),
        (MODULE.format(name="cli_ok"), ["--caps", "cli_nope"], "unknown task type(s) in --caps"),
        (MODULE.format(name="cli_ok"), ["--caps", "a:b"], "task type name 'a:b' must be 1-64"),
    ],
)
def test_the_worker_cli_says_what_is_wrong_with_its_tasks(
    module: str, args: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_tasks.py").write_text(module)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "workers", "--name", "w1", *args, "--tasks", "cli_tasks"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_config_file_names_task_modules(tmp_path: Path) -> None:
    (tmp_path / "cfg_tasks.py").write_text(MODULE.format(name="cfg_ok"))
    config = tmp_path / "worker.toml"
    config.write_text('tasks = ["cfg_tasks"]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    argv = [sys.executable, "-m", "workers", "--name", "w1", "--caps", "cfg_ok", "--no-serf"]
    argv += ["--config", str(config), "--broker-url", "amqp://u:p@127.0.0.1:1/none"]
    argv += ["--broker-wait", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert "cannot reach the broker" in done.stderr  # the caps were accepted: it got that far
    config.write_text('tasks = "cfg_tasks"\n')
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2 and "'tasks' must be a list of module names" in done.stderr
