"""The CLI's arguments: parsing, one-line errors with exit 2, --version, the completion
script (run through bash itself)."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest

from matchmaker.cli import main, parser
from matchmaker.cli.completion import script
from matchmaker.cli.tasks import _since
from tests.cli_support import cli


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["tasks", "--limit", "0"], "--limit: '0' is not a positive integer"),
        (["tasks", "--state", "lost"], "invalid choice: 'lost'"),
        (["tasks", "--since", "yesterday-ish"], "is not a time"),
        (["tasks", "--type", "a b"], "is not a name"),
        (["drain", "w1", "--deadline", "soon"], "'soon' is not a number of seconds"),
        (["drain", "w1", "--deadline", "1e9"], "must be between 0 and 604800"),
        (["events", "--last", "-1"], "is not a count"),
        (["dead"], "the following arguments are required: action"),
        (["dead", "list", "--limit", "x"], "is not a positive integer"),
        (["completion", "zsh"], "invalid choice: 'zsh'"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["drain", "w1", "--undo", "--deadline", "5"], "--deadline is for a drain"),
        (["dead", "purge"], "purge deletes letters for good: add --yes"),
        (["dead", "replay"], "replay needs letter names or --all"),
    ],
)
def test_contradictory_arguments_are_one_sentence(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err, err


def test_parsing_keeps_the_values() -> None:
    args = parser().parse_args(["tasks", "--state", "dead", "--limit", "7", "--since", "2h"])
    assert (args.state, args.limit) == ("dead", 7)
    assert abs(args.since - (time.time() - 7200)) < 5
    args = parser().parse_args(["drain", "w1", "--deadline", "30", "--wait", "--json"])
    assert (args.worker, args.deadline, args.wait, args.json) == ("w1", 30.0, True, True)
    nested = parser().parse_args(["workers", "--state-dir", "s", "gc", "--dry-run"])
    assert (nested.state_dir, nested.dry_run, nested.action) == ("s", True, "gc")
    assert parser().parse_args(["workers", "--json"]).action is None
    assert _since("1700000000") == 1700000000.0
    assert _since("2024-01-02T03:04:05Z") == 1704164645.0


def test_every_command_but_run_takes_json() -> None:
    top: Any = parser()
    commands: Any = top._subparsers._group_actions[0].choices
    for name, command in commands.items():
        if name in ("run", "users", "dead", "ledger"):
            continue
        assert "--json" in command.format_help(), name
    for group, actions in (
        ("dead", ("list", "replay", "purge")),
        ("ledger", ("prune", "archive", "info")),
    ):
        for action in actions:
            choices = commands[group]._subparsers._group_actions[0].choices
            assert "--json" in choices[action].format_help(), (group, action)


def test_version_and_help() -> None:
    done = cli(None, "--version")
    assert done.returncode == 0 and done.stdout.startswith("matchmaker "), done
    assert cli(None, "dead", "--help").returncode == 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_completion_script_completes_in_bash() -> None:
    text = script(parser())

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        program = (
            f"{text}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _matchmaker; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert {"tasks", "events", "dead", "drain", "retry"} <= set(complete("matchmaker", "''"))
    assert complete("matchmaker", "dead", "''") == ["list", "replay", "purge"]
    assert complete("matchmaker", "dead", "purge", "--y") == ["--yes"]
    assert "--deadline" in complete("matchmaker", "drain", "w1", "--")
    assert complete("matchmaker", "tasks", "--state", "su") == ["succeeded"]
    assert complete("matchmaker", "workers", "''") == ["gc"]


def test_the_workers_table_is_aligned_whatever_the_cells() -> None:
    from membership.table import WorkerRow, format_workers

    rows = [
        WorkerRow("w1", ("sleep",), 2, {"site": "iu"}, "alive"),
        WorkerRow("a-longer-name", ("data_staging", "sleep"), 16, {}, "alive (drained)"),
        WorkerRow("名前", ("sleep",), 1, {"gpu": 1, "site": "tacc"}, "failed"),
        WorkerRow("odd", ("x\ny",), 1, {}, "alive"),
    ]
    lines = format_workers(rows, running={"w1": 1}).splitlines()
    assert len(lines) == 5  # a newline in a tag does not make a line of its own

    def column(line: str, word: str) -> int:  # display columns before ``word``
        before = line[: line.index(word)]
        return len(before) + sum(1 for c in before if c in "名前")

    assert (
        len(
            {
                column(line, word)
                for line, word in zip(
                    lines, ["STATUS", "alive", "alive", "failed", "alive"], strict=True
                )
            }
        )
        == 1
    )
    assert (
        len(
            {
                column(line, word)
                for line, word in zip(lines, ["SLOTS", "2", "16", "1", "1"], strict=True)
            }
        )
        == 1
    )
