"""``resume status``: what is in flight, how far, since when."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import TYPE_CHECKING

from resume.cli.format import format_bytes, iso_utc, relative_time
from resume.cli.options import add_db_option
from resume.errors import ResumeError

if TYPE_CHECKING:
    from rich.table import Table

    from resume.store.streams import ConsumerState, ProducerState
    from resume.store.transfers import TransferSummary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show transfers in the state store",
        description=(
            "Show every transfer this machine knows: state, committed bytes, chunk counts, "
            "whole-file checksum, last update and last error; then, if there are any, the "
            "durable stream producers (messages waiting for the server) and consumer "
            "positions. Reads the store without blocking a running upload or stream."
        ),
    )
    parser.add_argument(
        "file_id", nargs="?", metavar="FILE_ID", help="only this transfer (a prefix is enough)"
    )
    add_db_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    parser.add_argument(
        "--streams",
        action="store_true",
        help=(
            "only the stream state: producers and consumers (with --json: an object "
            '{"producers": [...], "consumers": [...]})'
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resume.store import open_store, store_exists

    summaries: list[TransferSummary] = []
    producers: list[ProducerState] = []
    consumers: list[ConsumerState] = []
    if store_exists(args.db):
        with open_store(args.db, readonly=True) as store:
            if not args.streams:
                summaries = store.transfers.summaries(args.file_id)
            if args.streams or not (args.file_id or args.json):  # shown: the JSON list has none
                producers = store.stream_client.producers()
                consumers = store.stream_client.consumers()
    if args.file_id and not summaries and not args.streams:
        raise ResumeError(f"no transfer with id {args.file_id!r} (see `resume status`)")
    if args.json:
        document: object = (
            {
                "producers": [producer_json(p) for p in producers],
                "consumers": [consumer_json(c) for c in consumers],
            }
            if args.streams
            else [as_json(s) for s in summaries]
        )
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    # Piped output is read by tools like grep: names are not shortened for it.
    width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else None
    if not args.streams:
        sys.stdout.write(transfers_text(summaries, width))
        sys.stdout.flush()
    if args.streams or producers or consumers:
        from rich.console import Console

        Console(width=width or 200).print(streams_table(producers, consumers))
    return 0


def producer_json(p: ProducerState) -> dict[str, object]:
    """The machine-readable form of one durable producer."""
    return {
        "client_id": p.client_id,
        "channel": p.channel,
        "last_seq": p.last_seq,
        "acked": p.acked,
        "pending": p.pending,
        "updated_at": iso_utc(p.timestamp),
    }


def consumer_json(c: ConsumerState) -> dict[str, object]:
    """The machine-readable form of one consumer position."""
    return {
        "consumer": c.consumer,
        "channel": c.channel,
        "seq": c.seq,
        "updated_at": iso_utc(c.timestamp),
    }


def streams_table(producers: list[ProducerState], consumers: list[ConsumerState]) -> Table:
    """Producers and consumers in one table: who, which channel, how far, since when."""
    from rich.table import Table

    from resume.store.states import utcnow

    empty = not producers and not consumers
    table = Table(title="streams (none)" if empty else "streams", title_justify="left")
    for column in ("role", "name", "channel", "position", "waiting", "updated"):
        table.add_column(column, no_wrap=True)
    now = utcnow()
    for p in producers:
        table.add_row(
            "producer",
            p.client_id,
            p.channel,
            f"sent {p.last_seq}, acked {p.acked}",
            f"{p.pending} message(s)" if p.pending else "-",
            relative_time(p.timestamp, now),
        )
    for c in consumers:
        table.add_row(
            "consumer", c.consumer, c.channel, f"took {c.seq}", "-", relative_time(c.timestamp, now)
        )
    return table


def shown_state(summary: TransferSummary) -> str:
    """The state people and scripts see: ``interrupted`` for an active transfer whose
    process is gone (killed, crashed); it resumes with the same command."""
    state = summary.transfer.state.value
    if state == "active" and not summary.running:
        return "interrupted"
    return state


def as_json(summary: TransferSummary) -> dict[str, object]:
    """The machine-readable form of one transfer."""
    t, c = summary.transfer, summary.chunks
    return {
        "file_id": t.file_id,
        "path": t.source_path,
        "name": t.name,
        "url": t.url,
        "upload_url": t.upload_url,
        "server": t.server,
        "size": t.size,
        "offset": t.offset,
        "checksum": t.checksum,
        "checksum_algo": t.checksum_algo,
        "state": shown_state(summary),
        "running": summary.running,
        "chunk_size": t.chunk_size,
        "chunks": {"committed": c.committed, "prepared": c.prepared, "total": c.total},
        "created_at": iso_utc(t.created_at),
        "updated_at": iso_utc(t.timestamp),
        "last_error": t.last_error,
    }


def transfers_text(summaries: list[TransferSummary], width: int | None) -> str:
    """The transfers as people read them: one line each (two with an error), fitting
    ``width`` columns (None: as long as it takes). Numbers come first; names are shortened
    from the left, errors from the right.
    """
    from resume.cli.progress import shorten
    from resume.store.states import utcnow

    if not summaries:
        return "transfers: none\n"
    now = utcnow()
    rows = [("ID", "STATE", "PROGRESS", "UPDATED", "NAME")]
    errors: list[str | None] = [None]
    urls: list[str | None] = [None]
    for summary in summaries:
        t = summary.transfer
        urls.append(t.upload_url)
        percent = 100 if t.size == 0 else 100 * t.offset // t.size
        rows.append(
            (
                t.file_id[:8],
                shown_state(summary),
                f"{percent}% of {format_bytes(t.size)}",
                relative_time(t.timestamp, now),
                t.name,
            )
        )
        errors.append(t.last_error)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row, error, url in zip(rows, errors, urls, strict=True):
        head = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  "
        name = row[4] if width is None else shorten(row[4], max(8, width - 1 - len(head)))
        lines.append(head + name)
        if url:  # a tus transfer: where its upload lives on the server
            lines.append(f"{row[0].ljust(widths[0])}  upload: {url}")
        if error:  # under its transfer, with its id again: `grep ID` finds both lines
            text = f"{row[0].ljust(widths[0])}  error: {error}"
            lines.append(text if width is None else text[: width - 1])
    return "\n".join(lines) + "\n"
