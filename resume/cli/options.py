"""Options several commands share, spelled once."""

from __future__ import annotations

import argparse
import os

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
