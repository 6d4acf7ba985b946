"""Options several commands share, spelled once."""

from __future__ import annotations

import argparse

DB_HELP = (
    "state database: a SQLAlchemy URL or a file path "
    "(default: $RESUME_DB, else $XDG_STATE_HOME/resume/state.db)"
)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """``--db URL``: which state database to use."""
    parser.add_argument("--db", metavar="URL", help=DB_HELP)
