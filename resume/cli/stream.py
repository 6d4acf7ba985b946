"""``resume send`` and ``resume tail``: the stream client on the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from resume.cli.options import (
    add_connection_options,
    add_db_option,
    add_retry_options,
    add_token_option,
    connection_settings,
    retry_policy,
)
from resume.errors import Interrupted, UsageError

if TYPE_CHECKING:
    from resume.protocol.session import Gap
    from resume.stream.client import StreamClient, StreamEvent

EXIT_INTERRUPTED = 130
READ_SIZE = 64 * 1024


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_send(subparsers)
    _add_tail(subparsers)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", metavar="URL", help="channel, e.g. ws://127.0.0.1:8765/streams/orders"
    )
    add_db_option(parser)
    add_token_option(parser)
    add_retry_options(parser)
    add_connection_options(parser)


def _add_send(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "send",
        help="publish each line of stdin as one message on a stream channel",
        description=(
            "Publish each line of standard input as one message on the channel at URL. Lines "
            "are numbered and re-sent after any reconnect until the server has stored them "
            "(it drops what it already has, so nothing is stored twice). Exits 0 once every "
            "line is acknowledged; server restarts and dropped connections meanwhile are "
            "retried with backoff. A wrong token or another fatal error exits 1 at once."
        ),
    )
    _add_common(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="each line is a JSON value to publish as is (default: each line is a string)",
    )
    parser.add_argument(
        "--client-id",
        metavar="ID",
        help=(
            "stable producer id: lines are kept in the state database until acknowledged, and "
            "a run with the same id first re-sends what an interrupted run left (default: a "
            "random id, lines kept in memory)"
        ),
    )
    parser.set_defaults(run=run_send)


def _add_tail(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="print the messages of a stream channel, continuing where this consumer stopped",
        description=(
            "Print each message of the channel at URL as one line on stdout (strings as they "
            "are, anything else as JSON), flushed. The consumer's position is kept in the state "
            "database: a restarted tail continues after the last message it printed. Messages "
            "the server trimmed before this consumer took them are reported on stderr as not "
            "recovered. Exits 0 after --count messages; SIGINT or SIGTERM saves the position and exits 130."
        ),
    )
    _add_common(parser)
    parser.add_argument(
        "--consumer", required=True, metavar="NAME", help="name under which the position is kept"
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help=(
            "a consumer without a stored position starts at the oldest retained message "
            "(default: only messages published from now on)"
        ),
    )
    parser.add_argument(
        "--reset", action="store_true", help="forget the stored position of this consumer first"
    )
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="exit 0 after N messages (default: run until interrupted)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every message as one JSON document per line (strings quoted), for `send --json`",
    )
    parser.set_defaults(run=run_tail)


def _check_url(url: str) -> None:
    from resume.protocol.frames import channel_problem

    problem = channel_problem(url)
    if problem:
        raise UsageError(f"not a channel URL: {url!r} ({problem})")


def _options(args: argparse.Namespace) -> Any:
    import dataclasses

    from resume.stream.client import StreamOptions

    backoff, give_up = retry_policy(args)
    defaults = StreamOptions()
    connect = dataclasses.replace(defaults.connect, **connection_settings(args, args.url))
    return dataclasses.replace(defaults, backoff=backoff, give_up_after=give_up, connect=connect)


def _report_event(event: StreamEvent) -> None:
    """Retry warnings on stderr, terminal or not: a command waiting for a server says so."""
    if event.kind == "retrying" and event.delay is not None:
        clear = "\r\033[K" if sys.stderr.isatty() else ""
        print(
            f"{clear}resume: warning: {event.error}; retrying in {event.delay:.1f}s",
            file=sys.stderr,
            flush=True,
        )


# -- send ---------------------------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    _check_url(args.url)
    if args.client_id is not None and not 0 < len(args.client_id) <= 64:
        raise UsageError("--client-id must be 1..64 characters")
    return asyncio.run(_send(args))


async def _send(args: argparse.Namespace) -> int:
    from resume.store import open_store
    from resume.stream.client import StreamClient

    store = open_store(args.db) if args.client_id else None
    client = StreamClient(
        args.url,
        client_id=args.client_id,
        subscribe=False,
        store=store,
        token=args.token,
        options=_options(args),
        on_event=_report_event,
    )
    # A live counter on a terminal, unless someone is typing the lines on it: their input
    # and a redrawn counter would run together on one line.
    live = sys.stderr.isatty() and not sys.stdin.isatty()
    progress = asyncio.create_task(_show_progress(client)) if live else None
    bad = 0
    try:
        await client.start()
        pump = asyncio.create_task(_pump_stdin(client, sys.stdin.buffer, as_json=args.json))
        bad = (await _until_done_or_interrupted(client, pump))[1]
        await _until_done_or_interrupted(client, asyncio.create_task(client.flush()))
        # even with nothing to send, exit 0 only once the server accepted us (token, path)
        await _until_done_or_interrupted(client, asyncio.create_task(client.ready()))
        if bad:
            print(f"resume: {bad} line(s) not sent (see above)", file=sys.stderr, flush=True)
        return 1 if bad else 0
    except Interrupted:
        left = await client.close(timeout=3)
        print(
            f"resume: interrupted; {left} message(s) not acknowledged"
            + (" (kept: run again with the same --client-id)" if store and left else ""),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.cancel()
            sys.stderr.write("\r\033[K")  # leave no half line behind
            _progress_line(client, final=True)
        await client.close()
        if store is not None:
            store.close()


async def _show_progress(client: StreamClient) -> None:
    """On a terminal: how many lines were read and how many the server has acknowledged."""
    while True:
        _progress_line(client)
        await asyncio.sleep(0.5)


def _progress_line(client: StreamClient, *, final: bool = False) -> None:
    stats = client.stats
    line = f"{stats.acked} of {stats.sent} message(s) acknowledged"
    if stats.reconnects:
        line += f", {stats.reconnects} reconnect(s)"
    sys.stderr.write(("" if final else "\r\033[K") + line + ("\n" if final else ""))
    sys.stderr.flush()


async def _pump_stdin(client: StreamClient, stream: BinaryIO, *, as_json: bool) -> tuple[int, int]:
    """Publish every line of ``stream``; returns (lines sent, lines refused).

    A line that cannot be sent (not JSON with --json, NaN, over the message size limit) is
    reported with its line number and skipped; the lines after it are still sent.
    """
    pending = b""
    number = sent = bad = 0

    async def publish(lines: list[bytes]) -> None:
        nonlocal number, sent, bad
        messages = []
        for line in lines:
            number += 1
            try:
                message = _line_message(line, as_json)
                client.check_message(message)
            except UsageError as exc:
                bad += 1
                print(f"resume: line {number}: {exc}; not sent", file=sys.stderr, flush=True)
                continue
            messages.append(message)
        if messages:
            await client.send_many(messages)
            sent += len(messages)

    while True:
        chunk = await asyncio.to_thread(_read_some, stream)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        if lines:
            await publish(lines)
    if pending:
        await publish([pending])
    return sent, bad


def _read_some(stream: BinaryIO) -> bytes:
    read1 = getattr(stream, "read1", None)
    return read1(READ_SIZE) if read1 is not None else stream.read(READ_SIZE)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _line_message(line: bytes, as_json: bool) -> Any:
    text = line.removesuffix(b"\r").decode("utf-8", "replace")
    if not as_json:
        return text
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise UsageError(f"not a JSON value: {text[:60]!r} ({exc})") from exc


async def _until_done_or_interrupted(client: StreamClient, work: asyncio.Task[Any]) -> Any:
    """Await ``work``; stop early if the client fails (fatal error) or on SIGINT/SIGTERM."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    stopper = asyncio.create_task(interrupted.wait())
    failed = asyncio.create_task(client.wait())
    try:
        await asyncio.wait({work, stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        if failed.done():
            failed.result()  # raises the client's fatal error
        raise Interrupted("interrupted")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for task in (work, stopper, failed):
            task.cancel()
        await asyncio.gather(work, stopper, failed, return_exceptions=True)


# -- tail ---------------------------------------------------------------------------------------


def run_tail(args: argparse.Namespace) -> int:
    _check_url(args.url)
    if not 0 < len(args.consumer) <= 128:
        raise UsageError("--consumer must be 1..128 characters")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    return asyncio.run(_tail(args))


async def _tail(args: argparse.Namespace) -> int:
    from resume.store import open_store
    from resume.stream.client import StreamClient

    with open_store(args.db) as store:
        if args.reset:
            await asyncio.to_thread(store.stream_client.reset_cursor, args.consumer, args.url)
        client = StreamClient(
            args.url,
            client_id=None,
            consumer=args.consumer,
            start="start" if args.from_start else "end",
            store=store,
            token=args.token,
            options=_options(args),
            on_gap=_report_gap,
            on_event=_report_event,
        )
        await client.start()
        try:
            await _until_done_or_interrupted(
                client, asyncio.create_task(_print(client, args.count, as_json=args.json))
            )
        except Interrupted:
            return EXIT_INTERRUPTED  # every printed line was committed as it was printed
        except BrokenPipeError:
            return 0  # the last line may not have been read: it stays untaken
        finally:
            await client.close()
        return 0


async def _print(client: StreamClient, count: int | None, *, as_json: bool = False) -> None:
    printed = 0
    async for message in client:
        text = json.dumps(message.data, ensure_ascii=False) if as_json else _line(message.data)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        # Printed: taken, even if we stop before asking for the next. A Ctrl-C arriving now
        # waits for this commit, so the next run starts after the line it saw.
        commit = asyncio.ensure_future(client.commit())
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await commit
            raise
        printed += 1
        if count is not None and printed >= count:
            return


def _line(data: Any) -> str:
    if isinstance(data, str) and "\n" not in data and "\r" not in data:
        return data
    return json.dumps(data, ensure_ascii=False)


def _report_gap(gap: Gap) -> None:
    print(
        f"resume: warning: messages {gap.first}..{gap.last} were trimmed on the server before "
        "this consumer took them: not recovered",
        file=sys.stderr,
        flush=True,
    )
