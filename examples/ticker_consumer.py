"""Consume a stream channel from Python: print each tick, ride out server restarts.

    python examples/ticker_consumer.py [URL] [--from-start] [--count N] [--consumer NAME]

URL defaults to ws://127.0.0.1:8765/streams/ticker (start a server with `resume serve --root
DIR`, publish with examples/ticker_producer.py). Stop or restart the server while this runs:
the client reconnects by itself, asks for what it missed, and prints every tick once, in order.
Connection events go to stderr.

Without --consumer the position lives in memory: a restarted process starts over (at the end,
or with --from-start at the oldest tick the server keeps). With --consumer NAME it is kept in
./ticker-consumer.db (or --db), and a restarted process continues after the last tick it took.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from resume.errors import FatalError, RetryableError, UsageError
from resume.net.backoff import Backoff
from resume.protocol.session import Gap
from resume.store import Store, open_store
from resume.stream.client import StreamClient, StreamEvent, StreamOptions

log = logging.getLogger("ticker")


def show(data: Any) -> str:
    """A tick as one line of text."""
    if isinstance(data, dict) and "n" in data:
        return f"tick {data['n']} price {data.get('price')}"
    return f"message {data!r}"


async def consume(args: argparse.Namespace, store: Store | None) -> int:
    def on_event(event: StreamEvent) -> None:
        if event.kind == "connected":
            session = client.session  # position: the last seq handed to us (None: none yet)
            after = session.position if session is not None else None
            where = "from the start position" if after is None else f"after seq {after}"
            again = "reconnected" if client.stats.connects > 1 else "connected"
            log.info("%s; receiving %s", again, where)
        elif event.kind == "disconnected":
            log.info("disconnected: %s", event.error)
        elif event.kind == "retrying":
            log.info("retrying in %.2fs (%s)", event.delay, event.error)
        elif event.kind == "gave_up":
            log.error("gave up: %s", event.error)
        elif event.kind == "replay":  # only a client that also sends has anything to replay
            log.info("sending %d unacknowledged message(s) again", event.count)
        # "gap" is reported by on_gap below

    def on_gap(gap: Gap) -> None:
        log.warning("ticks %d..%d were trimmed on the server: not recovered", gap.first, gap.last)

    options = StreamOptions(
        backoff=Backoff(base=0.5, cap=10.0),  # reconnect delays: full jitter, at most 10 s
    )
    client = StreamClient(
        args.url,
        consumer=args.consumer,  # with a store: the name under which the position is kept
        store=store,
        start="start" if args.from_start else "end",
        token=args.token,
        options=options,
        on_event=on_event,
        on_gap=on_gap,  # without it, the iterator raises GapError once per gap
    )
    printed = 0
    try:
        async with client:
            async for message in client:  # asking for the next tick counts this one as taken
                print(f"{show(message.data)} (seq {message.seq})", flush=True)
                printed += 1
                if args.count is not None and printed >= args.count:
                    await client.commit()  # printed: taken (leaving the loop does not take it)
                    break
    except (FatalError, UsageError) as exc:  # 401/403/404, a bad URL, a broken protocol
        log.error("stopped: %s", exc)
        return 1
    except RetryableError as exc:  # only with max_attempts or give_up_after set
        log.error("server unreachable: %s", exc)
        return 1
    stats = client.stats
    log.info(
        "done: %d tick(s), %d reconnect(s), %d duplicate(s) dropped, %d gap(s)",
        printed,
        stats.reconnects,
        stats.duplicates,
        stats.gaps,
    )
    return 0


async def main(args: argparse.Namespace) -> int:
    if args.consumer is None:
        return await consume(args, None)
    with open_store(args.db) as store:
        return await consume(args, store)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/streams/ticker")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="without a stored position, begin at the oldest tick the server keeps",
    )
    parser.add_argument("--count", type=int, metavar="N", help="exit after N ticks")
    parser.add_argument("--consumer", metavar="NAME", help="keep the position under this name")
    parser.add_argument("--db", default="ticker-consumer.db", help="where --consumer keeps it")
    parser.add_argument("--token", default=os.environ.get("RESUME_TOKEN"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
