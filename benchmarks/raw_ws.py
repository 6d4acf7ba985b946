"""The naive baseline: stream a file over plain `websockets`, one fsync at the end.

    python benchmarks/raw_ws.py server DIR       # prints "listening on ws://127.0.0.1:PORT"
    python benchmarks/raw_ws.py client FILE URL  # prints the seconds from connect to "ok"

No chunk ledger, no checksums, no acks until the end, no resume: the fastest honest way to get
the bytes into a file on the other side, against which `resume upload` is measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

MESSAGE = 2**20


async def server(directory: Path) -> None:
    async def receive(ws: ServerConnection) -> None:
        with (directory / "received.bin").open("wb", buffering=0) as f:
            async for message in ws:
                if isinstance(message, str):  # "done": make it durable, then answer
                    os.fsync(f.fileno())
                    await ws.send("ok")
                    continue
                f.write(message)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(receive, "127.0.0.1", 0, compression=None, max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}", flush=True)
        await stop.wait()


async def client(path: Path, url: str) -> float:
    started = time.perf_counter()
    async with connect(url, compression=None, max_size=None, proxy=None) as ws:
        with path.open("rb", buffering=0) as f:
            while block := f.read(MESSAGE):
                await ws.send(block)
        await ws.send("done")
        assert await ws.recv() == "ok"
    return time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1] == "server":
        Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
        asyncio.run(server(Path(sys.argv[2])))
    else:
        print(f"{asyncio.run(client(Path(sys.argv[2]), sys.argv[3])):.6f}", flush=True)
