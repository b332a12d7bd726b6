"""Reading the Thermos task instance in the executor data (pure logic)."""

from __future__ import annotations

import json

import pytest

from aurora.thermos import ExecutorDataError, parse_task, task_instance


def data(processes: list[dict[str, object]], constraints: list[dict[str, object]]) -> str:
    return json.dumps({"task": {"processes": processes, "constraints": constraints}})


def p(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "cmdline": f"echo {name}", **extra}


def test_processes_follow_every_ordering_constraint() -> None:
    raw = data([p("c"), p("b"), p("a"), p("z")], [{"order": ["a", "b"]}, {"order": ["b", "c"]}])
    assert [x.name for x in parse_task(raw)] == ["a", "b", "c", "z"]


def test_final_processes_run_last() -> None:
    raw = data([p("cleanup", final=True), p("work")], [])
    assert [(x.name, x.final) for x in parse_task(raw)] == [("work", False), ("cleanup", True)]


def test_client_format_parses_back() -> None:
    parsed = parse_task(task_instance("r", "e", "n", [("one", "true"), ("two", "false")], 1, 1, 1))
    assert [(x.name, x.cmdline, x.max_failures) for x in parsed] == [
        ("one", "true", 1),
        ("two", "false", 1),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ("{}", "no 'task'"),
        (data([], []), "no processes"),
        (data([p("a"), p("a")], []), "not unique"),
        (data([p("a"), p("b")], [{"order": ["a", "b"]}, {"order": ["b", "a"]}]), "cycle"),
        (data([p("a")], [{"order": ["a", "ghost"]}]), "unknown process"),
        (data([{"name": "a"}], []), "no cmdline"),
        (data([p("bad name")], []), "invalid"),
    ],
)
def test_bad_executor_data_is_refused_with_a_reason(raw: str, message: str) -> None:
    with pytest.raises(ExecutorDataError, match=message):
        parse_task(raw)
