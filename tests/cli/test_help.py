"""`--help` of every command is tidy: a help line per option, upper-case metavars, no Ctrl-C."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from resume.cli import build_parser


def commands(
    parser: argparse.ArgumentParser, prefix: str = "resume"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prefix} {name}")


def test_every_option_has_help_and_an_upper_case_metavar() -> None:
    """Each option says what it does; each value is named like SIZE, AGE, URL, N (one word)."""
    problems = []
    for command, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{command} {action.dest}: no help")
            takes_value = action.nargs != 0 and not isinstance(
                action, argparse._CountAction | argparse._StoreTrueAction | argparse._VersionAction
            )
            if takes_value and action.option_strings and action.choices is None:
                metavar = action.metavar or action.dest.upper()
                if not str(metavar).isupper() or "_" in str(metavar):  # SIZE, not MAX_SIZE
                    problems.append(f"{command} {action.option_strings[0]}: metavar {metavar!r}")
        text = parser.format_help()
        if "Ctrl-C" in text:
            problems.append(f"{command}: says Ctrl-C (SIGINT or SIGTERM, or 'interrupted')")
    assert problems == []


def test_verbose_is_listed_for_every_command() -> None:
    """-v appears in the help of each subcommand, since it is accepted there."""
    for command, parser in commands(build_parser()):
        if command == "resume" or parser._subparsers is not None:
            continue
        assert "-v, --verbose" in parser.format_help(), command
