"""The ``resume`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from resume import __version__, logs
from resume.cli import db, serve, status, stream, upload
from resume.errors import ResumeError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

COMMANDS = (upload, serve, status, stream, db)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subcommand per module in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="resume",
        description=(
            "Move data over networks that fail: resumable, verified uploads and a "
            "reconnecting WebSocket stream, with their state in a local SQLite store."
        ),
    )
    parser.add_argument("--version", action="version", version=f"resume {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``resume`` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logs.quiet_third_party(unless=args.verbose >= 2)  # -v: resume's INFO, not Alembic's
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"resume: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResumeError as exc:
        print(f"resume: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
