"""A round-robin TCP load balancer on 127.0.0.1 for multi-node tests (and benchmarks).

Each new connection goes to the next backend in turn; a backend that refuses the connection
(its node is dead or restarting) is skipped for the next one, as a real balancer with health
checks would. Connections are plain byte pipes: when a node dies, the kernel resets its side
and the balancer closes the client's side, so the client sees its connection drop and
reconnects through the balancer to another node. Runs in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

READ_SIZE = 256 * 1024


class Balancer:
    """Round-robin over ``ports`` (on 127.0.0.1); ``port`` is where clients connect.

    ``rate`` slows each connection down to about that many bytes per second each way (so a
    test can act in the middle of an upload on a fast machine).
    """

    def __init__(self, ports: list[int], *, rate: float | None = None) -> None:
        self.ports = list(ports)
        self.rate = rate  # bytes per second per connection and direction (None: as fast as can)
        self.port = 0
        self.routed: Counter[int] = Counter()  # connections sent to each backend
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._by_port: dict[int, set[asyncio.StreamWriter]] = {}
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Balancer:
        ready = threading.Event()

        def main() -> None:
            loop = self._loop = asyncio.new_event_loop()

            async def start() -> None:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]

            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="balancer", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is None:
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _connect(self) -> tuple[int, Any, Any] | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # dead or restarting: the next one
            return port, reader, writer
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            writer.transport.abort()
            return
        port, up_reader, up_writer = upstream
        self.routed[port] += 1
        self._writers.update((writer, up_writer))
        self._by_port.setdefault(port, set()).add(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(READ_SIZE if self.rate is None else 64 * 1024):
                    dst.write(data)
                    await dst.drain()
                    if self.rate is not None:
                        await asyncio.sleep(len(data) / self.rate)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.transport.abort()  # the other side went: drop this one too

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)
            self._by_port.get(port, set()).discard(writer)

    def cut(self, port: int) -> None:
        """Reset every client connection routed to ``port`` (a partition from that node)."""
        assert self._loop is not None

        async def cut() -> None:
            for writer in list(self._by_port.get(port, ())):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)
