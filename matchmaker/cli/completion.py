"""``completion bash``: a bash completion script, generated from the parser itself.

No extra package: the script is written from argparse's own tables (commands, their
actions, their options and the options' fixed choices), so it always matches the CLI it
came from. ``eval "$(python -m matchmaker completion bash)"`` loads it in this shell; put
it in ``/etc/bash_completion.d/matchmaker`` to have it everywhere. It completes
the command word ``matchmaker``: a console script of that name, or
``alias matchmaker='python -m matchmaker'`` (bash completes an alias by its name).
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from matchmaker.cli.common import add_json

TEMPLATE = """# bash completion for matchmaker (python -m matchmaker completion bash)
_matchmaker() {
    local cur prev i path="@" w
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        [[ "$w" == -* || -z "${_MM_SUBS[$path]+x}" ]] && continue
        [[ " ${_MM_SUBS[$path]} " == *" $w "* ]] && path="$path $w"
    done
    if [ -n "${_MM_CHOICES[$path|$prev]+x}" ]; then
        COMPREPLY=($(compgen -W "${_MM_CHOICES[$path|$prev]}" -- "$cur"))
        return
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "${_MM_OPTS[$path]}" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "${_MM_SUBS[$path]}" -- "$cur"))
    fi
}
"""


def _tables(parser: argparse.ArgumentParser, path: str, subs: dict[str, list[str]],
            opts: dict[str, list[str]], choices: dict[str, list[str]]) -> None:  # fmt: skip
    opts[path] = []
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            names = list(action.choices)
            subs[path] = names
            for name, child in action.choices.items():
                _tables(child, f"{path} {name}", subs, opts, choices)
        elif action.option_strings and action.help != argparse.SUPPRESS:
            opts[path] += action.option_strings
            if action.choices:
                for flag in action.option_strings:
                    choices[f"{path}|{flag}"] = [str(c) for c in action.choices]


def script(parser: argparse.ArgumentParser) -> str:
    subs: dict[str, list[str]] = {}
    opts: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    _tables(parser, "@", subs, opts, choices)  # bash has no empty key: "@" is the top

    def table(name: str, rows: dict[str, list[str]]) -> str:
        lines = [f"declare -gA {name}=("]
        lines += [
            f"    [{shlex.quote(k)}]={shlex.quote(' '.join(v))}" for k, v in sorted(rows.items())
        ]
        return "\n".join([*lines, ")"])

    return "\n".join(
        [
            TEMPLATE,
            table("_MM_SUBS", subs),
            table("_MM_OPTS", opts),
            table("_MM_CHOICES", choices),
            "complete -F _matchmaker matchmaker",
            "",
        ]
    )


def cmd_completion(args: argparse.Namespace) -> int:
    from matchmaker.cli import parser

    print(script(parser()), end="")
    return 0


def add_parser(sub: Any) -> None:
    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash"], help="the shell (bash)")
    add_json(completion)  # accepted everywhere; a script has no JSON form
    completion.set_defaults(func=cmd_completion)
