"""``resume upload``, ``resume cancel`` and ``resume gc``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from resume.cli.format import format_bytes, parse_duration, parse_size
from resume.cli.options import (
    add_connection_options,
    add_db_option,
    add_retry_options,
    add_token_option,
    connection_settings,
    retry_policy,
)
from resume.errors import Interrupted, ResumeError, UsageError
from resume.transfer.defaults import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW

if TYPE_CHECKING:
    from resume.cli.progress import ProgressReporter
    from resume.transfer.plan import FileJob, Skipped
    from resume.transfer.routed import AnyUploader
    from resume.transfer.upload import FileResult, UploadOptions

# Heavy imports (websockets, the store) live inside the run functions, so that `resume --help`
# and every other command start quickly.

EXIT_INTERRUPTED = 130


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_upload(subparsers)
    _add_cancel(subparsers)
    _add_gc(subparsers)


def _add_upload(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upload",
        help="send files to a resume server, resuming where any earlier run stopped",
        description=(
            "Send files (directories recursively, keeping relative paths) to `resume serve` at "
            "URL, e.g. ws://127.0.0.1:8765. Each chunk is recorded PREPARED before it is sent "
            "and COMMITTED when the server has made it durable; after a crash, a dropped "
            "connection or an interrupt, run the same command again to continue. The server "
            "verifies every file (xxh3-128) before it appears under its name; a file sent "
            "earlier is checked on the server again, not skipped on the local record's word. "
            "A file that cannot be sent (unreadable, special, a name or size the server "
            "refuses, changed while sent) is reported on stderr and the others go on. Exit "
            "status: 0 when every file is on the server, 1 when any was not (or another "
            "failure), 2 for bad arguments, 130 when interrupted."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to send")
    parser.add_argument(
        "url",
        metavar="URL",
        help="server, e.g. ws://127.0.0.1:8765, or any tus 1.0 server's http(s)://HOST/files/",
    )
    add_db_option(parser)
    parser.add_argument(
        "--chunk-size",
        default=format_bytes(DEFAULT_CHUNK_SIZE).replace(".0 ", ""),
        metavar="SIZE",
        help="bytes per chunk for new transfers, e.g. 4MiB, 512k (default 4MiB)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"chunks in flight at once (default {DEFAULT_WINDOW}); memory is about N x SIZE",
    )
    parser.add_argument(
        "--via",
        choices=("auto", "ws", "http"),
        default="auto",
        help=(
            "how to reach a ws:// server: auto (default) sends new files of 64 MiB or more "
            "over HTTP (POST/PATCH to its /files/, sent straight from the file; faster, less "
            "CPU) when the server verifies whole files there, the rest over WebSocket; a "
            "transfer an earlier run began continues the way it began"
        ),
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help=(
            "over HTTP, to servers that offer tus concatenation: send each file as N partial "
            "uploads at once"
        ),
    )
    parser.add_argument(
        "--name", metavar="NAME", help="remote name of a single file (default: its file name)"
    )
    add_token_option(parser)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start over: drop earlier partial transfers of these files, here and on the server",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files that already exist on the server (default: refuse them)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="files sent earlier: have the server re-hash them, not only check they are unchanged",
    )
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="exit 0 even if some files could not be sent (they are still reported on stderr)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_retry_options(parser)
    add_connection_options(parser)
    parser.set_defaults(run=run_upload)


def _add_cancel(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a transfer: the server drops its partial data",
        description=(
            "Cancel an unfinished transfer (FILE_ID as `resume status` shows it; a unique "
            "prefix is enough). The server deletes the partial file; the local record is kept "
            "as cancelled until `resume gc`."
        ),
    )
    parser.add_argument(
        "file_id", metavar="FILE_ID", help="the transfer (a unique prefix is enough)"
    )
    add_db_option(parser)
    add_token_option(parser)
    parser.add_argument(
        "--local",
        action="store_true",
        help="only mark it cancelled here, without reaching the server",
    )
    add_connection_options(parser)
    parser.set_defaults(run=run_cancel)


def _add_gc(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="forget finished transfers and stale stream outboxes",
        description=(
            "Delete records of completed and cancelled transfers (with --failed, failed ones "
            "too) from the state store. --outbox drops what a durable stream producer left "
            "unsent: those messages are never sent."
        ),
    )
    add_db_option(parser)
    parser.add_argument(
        "--older-than",
        default="7d",
        metavar="AGE",
        help="only those last changed longer ago than this (default 7d; 0 = all)",
    )
    parser.add_argument(
        "--failed", action="store_true", help="failed transfers too (they cannot be resumed then)"
    )
    parser.add_argument(
        "--outbox",
        metavar="ID",
        action="append",
        help="drop the stream outbox of producer ID (repeatable); its unsent messages are lost",
    )
    parser.set_defaults(run=run_gc)


# -- upload ------------------------------------------------------------------------------------


def options_from(args: argparse.Namespace) -> UploadOptions:
    """Validate the command line into :class:`UploadOptions`."""
    from resume.net.connector import ConnectOptions
    from resume.transfer.upload import UploadOptions

    try:
        chunk_size = parse_size(args.chunk_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if chunk_size < 1024 or chunk_size > 64 * 2**20:
        raise UsageError("--chunk-size must be between 1KiB and 64MiB")
    if not 1 <= args.window <= 1024:
        raise UsageError("--window must be between 1 and 1024")
    backoff, give_up = retry_policy(args)
    return UploadOptions(
        chunk_size=chunk_size,
        window=args.window,
        restart=args.restart,
        overwrite=args.overwrite,
        verify=args.verify,
        connect=ConnectOptions(
            token=args.token or None,
            max_size=64 * 2**20,
            write_limit=4 * 2**20,
            **connection_settings(args, args.url),
        ),
        backoff=backoff,
        give_up_after=give_up,
    )


def run_upload(args: argparse.Namespace) -> int:
    from resume.cli.progress import ProgressReporter
    from resume.store import open_store
    from resume.transfer.plan import collect_jobs
    from resume.transfer.routed import check_target, make_uploader

    options = options_from(args)
    # httpx imports its own command-line client (click, rich, pygments: about 0.1 s) when
    # those happen to be installed; this process never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
    check_target(args.url, via=args.via, parallel=args.parallel)
    skipped: list[Skipped] = []
    jobs = collect_jobs(args.paths, name=args.name, on_skip=skipped.append)
    live = not args.no_progress and not args.json and sys.stderr.isatty()
    reporter = ProgressReporter(sys.stderr, jobs, live=live)
    for item in skipped:
        reporter.skip(item)
    started = time.monotonic()
    results: list[FileResult] = []
    error: ResumeError | None = None
    with open_store(args.db) as store:
        # Everything is imported and the store is open: the collector need not walk those
        # objects again and again (it took 5-9% of the client's CPU on a large upload).
        gc.freeze()
        uploader = make_uploader(
            store, args.url, options, via=args.via, parallel=args.parallel, progress=reporter
        )
        try:
            results = asyncio.run(_run_with_signals(uploader, jobs, reporter))
        except ResumeError as exc:
            error = exc
        finally:
            reporter.close()
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(summary(results, skipped, elapsed, error), indent=2), flush=True)
    elif error is None:
        print(reporter.summary(elapsed), file=sys.stderr, flush=True)
    if isinstance(error, Interrupted):
        print(f"resume: {error}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if error is not None:
        raise error
    not_sent = len(skipped) + sum(r.state == "failed" for r in results)
    return 1 if not_sent and not args.skip_errors else 0


async def _run_with_signals(
    uploader: AnyUploader, jobs: list[FileJob], reporter: ProgressReporter
) -> list[FileResult]:
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(name: str) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            # Safe at any instant: every chunk is PREPARED before it leaves, COMMITTED after.
            os._exit(EXIT_INTERRUPTED)
        reporter.line(f"resume: {name}: stopping (again to quit at once)")
        uploader.stop()

    loop.add_signal_handler(signal.SIGINT, on_signal, "interrupted")
    loop.add_signal_handler(signal.SIGTERM, on_signal, "terminated")
    try:
        return await uploader.run(jobs)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


def summary(
    results: list[FileResult],
    skipped: list[Skipped],
    elapsed: float,
    error: ResumeError | None,
) -> dict[str, Any]:
    """The ``--json`` output."""
    failed = [r for r in results if r.state == "failed"]
    return {
        "ok": error is None and not failed and not skipped,
        "error": str(error) if error else None,
        "interrupted": isinstance(error, Interrupted),
        "elapsed_s": round(elapsed, 3),
        "bytes_sent": sum(r.bytes_sent for r in results),
        "files": [
            {
                "file_id": r.file_id,
                "path": str(r.job.path),
                "name": r.job.name,
                "size": r.size,
                "state": r.state,
                "checksum": r.checksum,
                "resumed_from": r.resumed_from,
                "bytes_sent": r.bytes_sent,
                "error": r.error,
                "via": r.via,
            }
            for r in results
        ],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
    }


# -- cancel and gc -----------------------------------------------------------------------------


def run_cancel(args: argparse.Namespace) -> int:
    from resume.net.connector import ConnectOptions
    from resume.protocol.tus import is_tus_url
    from resume.store import open_store
    from resume.store.states import TransferState
    from resume.transfer.remote import cancel_on_server

    with open_store(args.db) as store:
        matches = store.transfers.match(args.file_id)
        if not matches:
            raise UsageError(f"no transfer with id {args.file_id!r} (see `resume status`)")
        if len(matches) > 1:
            raise UsageError(f"{args.file_id!r} matches {len(matches)} transfers; give more digits")
        record = matches[0]
        if record.state is TransferState.COMPLETED:
            raise UsageError(f"transfer {record.file_id[:8]} is already completed")
        holder = store.transfers.holder(record.file_id)
        if holder is not None:
            raise UsageError(
                f"transfer {record.file_id[:8]} ({record.name}) is being sent by pid "
                f"{holder.pid}; stop that upload first"
            )
        if not args.local:
            connect = ConnectOptions(
                token=args.token or None, **connection_settings(args, record.url)
            )
        if not args.local and is_tus_url(record.url):
            from resume.transfer.tus_client import cancel_upload, upload_urls

            asyncio.run(cancel_upload(record, upload_urls(store, record), connect))
        elif not args.local:
            asyncio.run(cancel_on_server(record.url, record.file_id, connect))
        store.transfers.update(
            record.file_id, state=TransferState.CANCELLED, last_error="cancelled by the user"
        )
    where = "here" if args.local else "here and on the server"
    print(f"cancelled {record.file_id[:8]} ({record.name}) {where}")
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from resume.store import open_store
    from resume.store.states import TransferState, utcnow

    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    cutoff = utcnow() - dt.timedelta(seconds=age)
    states = {TransferState.COMPLETED, TransferState.CANCELLED}
    if args.failed:
        states.add(TransferState.FAILED)
    with open_store(args.db) as store:
        finished = [
            s.transfer.file_id
            for s in store.transfers.summaries()
            if s.transfer.state in states and s.transfer.timestamp <= cutoff
        ]
        removed = store.transfers.delete(finished)
        dropped = 0
        for client_id in args.outbox or []:
            count = store.stream_client.drop_outbox(client_id)
            if count is None:
                raise UsageError(
                    f"no stream outbox for producer {client_id!r} (see `resume status --streams`)"
                )
            dropped += count
    what = "finished or failed" if args.failed else "finished"
    print(f"forgot {removed} {what} transfer(s)")
    if args.outbox:
        print(f"dropped {len(args.outbox)} outbox(es) with {dropped} unsent message(s)")
    return 0
