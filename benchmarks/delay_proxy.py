"""A userspace delay line on 127.0.0.1: every byte arrives RTT/2 later, in each direction.

    python benchmarks/delay_proxy.py UPSTREAM_PORT RTT_MS   # prints "listening on 127.0.0.1:PORT"

Models a long link with plenty of bandwidth: each piece read from one side is stamped with
its arrival time and written to the other side RTT/2 later, and reading goes on meanwhile
(up to BUFFER bytes in flight per direction), so the delay adds latency, not a rate limit.
(tests/chaos/proxy.py's ``delay`` sleeps before each 256 KiB forward in turn, which caps a
connection at 256 KiB per delay: fine for chaos tests, wrong for throughput.) RTT 0 is the
same proxy without delay, the baseline that the delayed runs are compared with.
SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import sys

READ_SIZE = 256 * 1024
BUFFER = 128 * 2**20  # bytes in flight per direction: > 100 ms at 1 GB/s


class Line:
    """One direction of one connection: a queue of (due time, bytes)."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.ready = asyncio.Event()
        self.room = asyncio.Event()


async def read_side(reader: asyncio.StreamReader, line: Line, delay: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await reader.read(READ_SIZE)
        except (OSError, ConnectionError):
            data = b""
        line.queue.append((loop.time() + delay, data))
        line.queued += len(data)
        line.ready.set()
        if not data:
            return
        while line.queued > BUFFER:
            line.room.clear()
            await line.room.wait()


async def write_side(writer: asyncio.StreamWriter, line: Line) -> None:
    loop = asyncio.get_running_loop()
    while True:
        while not line.queue:
            line.ready.clear()
            await line.ready.wait()
        due, data = line.queue.popleft()
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        if not data:
            with contextlib.suppress(OSError):
                writer.write_eof()
            return
        writer.write(data)
        line.queued -= len(data)
        line.room.set()
        await writer.drain()


async def main(upstream_port: int, rtt_ms: float) -> None:
    delay = rtt_ms / 2000

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            c_writer.transport.abort()
            return
        for w in (c_writer, u_writer):
            w.transport.set_write_buffer_limits(high=4 * 2**20)
        up, down = Line(), Line()
        tasks = [
            asyncio.create_task(read_side(c_reader, up, delay)),
            asyncio.create_task(write_side(u_writer, up)),
            asyncio.create_task(read_side(u_reader, down, delay)),
            asyncio.create_task(write_side(c_writer, down)),
        ]
        try:
            await asyncio.gather(*tasks)
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass  # a reset, or the proxy stopping: end this connection quietly
        finally:
            for task in tasks:
                task.cancel()
            for w in (c_writer, u_writer):
                w.transport.close()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
