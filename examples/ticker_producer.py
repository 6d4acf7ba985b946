"""Publish ticks on a stream channel from Python; none is lost or stored twice across drops.

    python examples/ticker_producer.py [URL] [--count N] [--interval SECONDS] [--client-id ID]

URL defaults to ws://127.0.0.1:8765/streams/ticker. Each tick is {"n": 1, 2, ..., "price": ...}.
While the server is down, send() keeps buffering (up to max_buffered, then it waits); after a
reconnect everything the server did not acknowledge is sent again and the server drops what it
already stored. Exits 0 once the server has acknowledged every tick.

With --client-id ID the unacknowledged ticks are also kept in ./ticker-producer.db (or --db),
so a producer killed with SIGKILL and started again with the same id sends them first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys

from resume.errors import FatalError, RetryableError, UsageError
from resume.store import Store, open_store
from resume.stream.client import StreamClient, StreamEvent

log = logging.getLogger("ticker")


def tick(n: int) -> dict[str, float | int]:
    """The n-th tick: a made-up price."""
    return {"n": n, "price": round(100 + 5 * math.sin(n / 10), 2)}


async def produce(args: argparse.Namespace, store: Store | None) -> int:
    def on_event(event: StreamEvent) -> None:
        if event.kind in ("connected", "disconnected", "replay"):
            detail = event.error or (
                f"{event.count} unacknowledged tick(s) to send" if event.count else ""
            )
            log.info("%s %s", event.kind, detail)

    client = StreamClient(
        args.url,
        client_id=args.client_id,  # None: a random id, the buffer lives in memory only
        subscribe=False,  # a pure producer: the server pushes nothing to it
        store=store,
        token=args.token,
        on_event=on_event,
    )
    try:
        async with client:
            for n in range(1, args.count + 1):
                await client.send(tick(n))  # returns once buffered (durable: once stored)
                await asyncio.sleep(args.interval)
            await client.flush()  # wait until the server acknowledged every tick
    except (FatalError, UsageError) as exc:  # refused (401/404), or a broken protocol
        log.error("stopped: %s", exc)
        return 1
    except RetryableError as exc:  # only with max_attempts or give_up_after set
        log.error("server unreachable: %s", exc)
        return 1
    stats = client.stats
    log.info("done: %d tick(s) acknowledged, %d replayed", stats.acked, stats.replayed)
    return 0


async def main(args: argparse.Namespace) -> int:
    if args.client_id is None:
        return await produce(args, None)
    with open_store(args.db) as store:
        return await produce(args, store)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/streams/ticker")
    parser.add_argument("--count", type=int, default=100, help="ticks to publish (default 100)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between ticks")
    parser.add_argument("--client-id", metavar="ID", help="stable producer id: durable buffer")
    parser.add_argument("--db", default="ticker-producer.db", help="where --client-id keeps it")
    parser.add_argument("--token", default=os.environ.get("RESUME_TOKEN"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
