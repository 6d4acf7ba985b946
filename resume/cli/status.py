"""``resume status``: what is in flight, how far, since when."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from resume.cli.format import format_bytes, iso_utc, relative_time
from resume.cli.options import add_db_option

if TYPE_CHECKING:
    from rich.table import Table

    from resume.store.transfers import TransferSummary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show transfers in the state store",
        description=(
            "Show every transfer this machine knows: state, committed bytes, chunk counts, "
            "whole-file checksum, last update and last error. Reads the store without "
            "blocking a running upload."
        ),
    )
    parser.add_argument(
        "file_id", nargs="?", metavar="FILE_ID", help="only this transfer (a prefix is enough)"
    )
    add_db_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from resume.store import open_store, store_exists

    summaries: list[TransferSummary] = []
    if store_exists(args.db):
        with open_store(args.db, readonly=True) as store:
            summaries = store.transfers.summaries(args.file_id)
    if args.json:
        json.dump([as_json(s) for s in summaries], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        # Piped output is read by tools like grep: do not wrap it to an imaginary 80 columns.
        Console(width=None if sys.stdout.isatty() else 200).print(as_table(summaries))
    return 0


def as_json(summary: TransferSummary) -> dict[str, object]:
    """The machine-readable form of one transfer."""
    t, c = summary.transfer, summary.chunks
    return {
        "file_id": t.file_id,
        "path": t.source_path,
        "name": t.name,
        "url": t.url,
        "size": t.size,
        "offset": t.offset,
        "checksum": t.checksum,
        "checksum_algo": t.checksum_algo,
        "state": t.state.value,
        "chunk_size": t.chunk_size,
        "chunks": {"committed": c.committed, "prepared": c.prepared, "total": c.total},
        "created_at": iso_utc(t.created_at),
        "updated_at": iso_utc(t.timestamp),
        "last_error": t.last_error,
    }


def as_table(summaries: list[TransferSummary]) -> Table:
    """The table people read."""
    from rich.table import Table

    from resume.store.models import utcnow

    table = Table(title="transfers" if summaries else "transfers (none)", title_justify="left")
    for column in (
        "file id",
        "name",
        "state",
        "committed",
        "chunks c/p/total",
        "checksum",
        "updated",
    ):
        table.add_column(column, no_wrap=True)
    table.add_column("error")
    now = utcnow()
    for summary in summaries:
        t, c = summary.transfer, summary.chunks
        percent = 100.0 if t.size == 0 else 100.0 * t.offset / t.size
        table.add_row(
            t.file_id[:8],
            t.name,
            t.state.value,
            f"{format_bytes(t.offset)} / {format_bytes(t.size)} ({percent:.0f}%)",
            f"{c.committed}/{c.prepared}/{c.total}",
            (t.checksum or "-")[:12],
            relative_time(t.timestamp, now),
            t.last_error or "",
        )
    return table
