"""The naive baseline for small messages: a plain `websockets` server that counts JSON messages.

    python benchmarks/raw_stream_ws.py N   # prints "listening on ws://127.0.0.1:PORT"

Per connection it reads text frames, json-decodes each one and counts; once it has N it sends
one text frame ("N") back, so the client can time first send -> all N received. Nothing is
stored, nothing is acknowledged per message, nothing survives a drop: the fire-and-forget
floor against which `StreamClient` is measured (benchmarks/stream_throughput.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from websockets.asyncio.server import ServerConnection, serve


async def server(expected: int) -> None:
    async def receive(ws: ServerConnection) -> None:
        count = total = 0
        async for raw in ws:
            total += json.loads(raw)["i"]
            count += 1
            if count == expected:
                # the sum of 0..N-1: every message arrived once, intact
                assert total == expected * (expected - 1) // 2, total
                await ws.send(str(count))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(receive, "127.0.0.1", 0, compression=None, max_size=2**20) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(server(int(sys.argv[1])))
