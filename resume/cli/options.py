"""Options several commands share, spelled once."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from resume.cli.format import parse_duration
from resume.errors import UsageError

if TYPE_CHECKING:
    from resume.net.backoff import Backoff

DB_HELP = (
    "state database: a SQLAlchemy URL or a file path "
    "(default: $RESUME_DB, else $XDG_STATE_HOME/resume/state.db)"
)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """``--db URL``: which state database to use."""
    parser.add_argument("--db", metavar="URL", help=DB_HELP)


def add_token_option(parser: argparse.ArgumentParser) -> None:
    """``--token T``: the bearer token the server requires."""
    parser.add_argument(
        "--token",
        default=os.environ.get("RESUME_TOKEN"),
        help="bearer token the server requires (default: $RESUME_TOKEN)",
    )


def add_retry_options(parser: argparse.ArgumentParser) -> None:
    """``--max-retry-delay`` and ``--give-up-after``: how the reconnect loop backs off."""
    parser.add_argument(
        "--max-retry-delay",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between reconnection attempts (default 30)",
    )
    parser.add_argument(
        "--give-up-after",
        metavar="AGE",
        help="stop retrying after the server was unreachable this long, e.g. 10m (default: never)",
    )


def retry_policy(args: argparse.Namespace) -> tuple[Backoff, float | None]:
    """The backoff and give-up time that :func:`add_retry_options` asked for."""
    from resume.net.backoff import Backoff

    if args.max_retry_delay <= 0:
        raise UsageError("--max-retry-delay must be positive")
    try:
        give_up = parse_duration(args.give_up_after) if args.give_up_after else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return Backoff(base=min(0.5, args.max_retry_delay), cap=args.max_retry_delay), give_up
