"""A durable stream producer to SIGKILL in tests: publishes the integers 1..N exactly once.

    python -m tests.stream_child URL DB CLIENT_ID N [--batch B] [--pause SECONDS]

Message ``i`` is always given client seq ``i``: on start it reads from its own store how many
messages earlier (killed) runs handed to ``send()`` (the outbox's ``last_seq``, loaded when the
client starts and claims the producer) and goes on with the next one, while the client re-sends
whatever the server never confirmed. Prints ``resuming after K (P pending)`` once started, and
``done`` after the server confirmed everything; a fatal error is one line ``error: ...`` and
exit 5.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from resume.errors import ResumeError
from resume.net.backoff import Backoff
from resume.store import open_store
from resume.stream.client import StreamClient, StreamOptions


async def produce(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        client = StreamClient(
            args.url,
            client_id=args.client_id,
            subscribe=False,
            store=store,
            options=StreamOptions(backoff=Backoff(base=0.02, cap=0.2, min_uptime=0.5)),
        )
        await client.start()
        assert client.session is not None
        last_seq = client.session.last_seq
        print(f"resuming after {last_seq} ({client.session.unacked} pending)", flush=True)
        following = last_seq + 1
        while following <= args.total:
            last = min(args.total, following + args.batch - 1)
            items = list(range(following, last + 1))
            seqs = await client.send_many(items)
            if seqs != items:  # the invariant the test relies on: data i has client seq i
                print(f"client seqs {seqs[0]}.. for messages {items[0]}..", file=sys.stderr)
                return 3
            following = last + 1
            if args.pause:
                await asyncio.sleep(args.pause)
        await client.flush(timeout=120)
        left = await client.close()
    print("done", flush=True)
    return 0 if left == 0 else 4


async def run(args: argparse.Namespace) -> int:
    try:
        return await produce(args)
    except ResumeError as exc:
        print(f"error: {exc}", flush=True)
        return 5


def main() -> int:
    parser = argparse.ArgumentParser(prog="stream_child")
    parser.add_argument("url")
    parser.add_argument("db")
    parser.add_argument("client_id")
    parser.add_argument("total", type=int)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
