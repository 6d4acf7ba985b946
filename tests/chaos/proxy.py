"""A fault-injecting TCP proxy on 127.0.0.1 for chaos tests.

It sits between a client and an upstream server and breaks the link the ways real networks do:

- ``cut()``: every open connection is reset at once (TCP RST on both sides), like a NAT box
  forgetting its table or a cable pulled and the kernel giving up.
- ``stall()`` / ``unstall()``: bytes stop moving in both directions but connections stay open
  (a frozen Wi-Fi link, a stuck middlebox); held bytes are delivered, in order, afterwards.
- ``refuse(True)``: new connections are accepted and reset at once (server down, port closed).
- ``delay``: added latency on every forwarded piece of data, order preserved (a long link).
- ``corrupt_once(after_bytes=N)``: flip one byte N bytes from now in one direction (a bad NIC
  or a broken TLS-less middlebox that TCP's weak checksum missed).
- ``corrupt_first_frames(count, direction)``: on each of the next ``count`` connections, flip
  the first payload byte of the first WebSocket frame after the HTTP handshake (a control
  message garbled in transit: invalid UTF-8, a 1007 close).
- ``set_upstream(port)``: new connections go elsewhere (the server restarted on another port).
- ``chaos(duration, rng)``: random cuts and stalls for a while.

``FaultProxy`` runs in the caller's event loop; ``ThreadedProxy`` runs one in a background
thread for synchronous tests that drive subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

READ_SIZE = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024


@dataclass
class ProxyStats:
    """Counters, for assertions and for reporting how much chaos happened."""

    connections: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    corrupted: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _first_payload_byte(data: bytes) -> int | None:
    """Where the first payload byte of the first frame after an HTTP head is, once known."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or len(data) < end + 6:
        return None
    start = end + 4
    second = data[start + 1]
    length = second & 0x7F
    header = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
    return start + header if len(data) > start + header else None


class _Pair:
    """One proxied connection: client <-> upstream, two pumps."""

    def __init__(
        self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ):
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.up_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        # directions in which this connection's first frame gets garbled
        self.garble = {d for d in ("up", "down") if proxy._take_frame_corruption(d)}

    async def run(self) -> None:
        proxy = self.proxy
        try:
            up_reader, self.up_writer = await asyncio.open_connection(
                proxy.upstream_host, proxy.upstream_port
            )
        except OSError:
            _reset(self.client_writer)
            return
        self.tasks = [
            asyncio.create_task(self.pump(self.client_reader, self.up_writer, "up")),
            asyncio.create_task(self.pump(up_reader, self.client_writer, "down")),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        proxy = self.proxy
        seen = bytearray()  # the stream so far, while looking for the first frame to garble
        try:
            while True:
                data = await reader.read(READ_SIZE)
                await proxy._flowing.wait()
                if direction in self.garble and data:
                    passed = len(seen)
                    seen += data
                    target = _first_payload_byte(bytes(seen))
                    if target is not None:
                        garbled = bytearray(data)
                        garbled[target - passed] ^= 0xFF
                        data = bytes(garbled)
                        self.garble.discard(direction)
                        proxy.stats.corrupted += 1
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                if proxy.delay:
                    await asyncio.sleep(proxy.delay)
                    await proxy._flowing.wait()
                data = proxy._maybe_corrupt(data, direction)
                if direction == "up":
                    proxy.stats.bytes_up += len(data)
                else:
                    proxy.stats.bytes_down += len(data)
                writer.write(data)
                if writer.transport.get_write_buffer_size() > HIGH_WATER:
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            self.cut()

    def cut(self) -> None:
        for writer in (self.client_writer, self.up_writer):
            if writer is not None:
                _reset(writer)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def close(self) -> None:
        for writer in (self.client_writer, self.up_writer):
            if writer is not None:
                writer.transport.close()


class FaultProxy:
    """asyncio TCP proxy on 127.0.0.1 that forwards to an upstream and injects faults."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_port = listen_port
        self.rng = random.Random(seed)
        self.port = 0
        self.delay = 0.0
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._corrupt: dict[str, int] = {}  # direction -> bytes still to pass before the flip
        self._frame_corruptions: dict[str, int] = {}  # direction -> connections still to garble

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_upstream(self, port: int, host: str = "127.0.0.1") -> None:
        self.upstream_host, self.upstream_port = host, port

    def cut(self) -> int:
        """Reset every open connection now; returns how many there were."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.cut()
        self._pairs.clear()
        if pairs:
            self.stats.cuts += 1
        return len(pairs)

    def stall(self) -> None:
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    def refuse(self, on: bool) -> None:
        self._refusing = on

    def corrupt_once(self, *, after_bytes: int, direction: str = "up") -> None:
        if direction not in ("up", "down"):
            raise ValueError("direction is 'up' or 'down'")
        self._corrupt[direction] = after_bytes

    def corrupt_first_frames(self, count: int, direction: str = "up") -> None:
        if direction not in ("up", "down"):
            raise ValueError("direction is 'up' or 'down'")
        self._frame_corruptions[direction] = count

    def _take_frame_corruption(self, direction: str) -> bool:
        left = self._frame_corruptions.get(direction, 0)
        if left <= 0:
            return False
        self._frame_corruptions[direction] = left - 1
        return True

    def _maybe_corrupt(self, data: bytes, direction: str) -> bytes:
        remaining = self._corrupt.get(direction)
        if remaining is None:
            return data
        if remaining >= len(data):
            self._corrupt[direction] = remaining - len(data)
            return data
        del self._corrupt[direction]
        flipped = bytearray(data)
        flipped[remaining] ^= 0xFF
        self.stats.corrupted += 1
        return bytes(flipped)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self._refusing:
            _reset(writer)
            return
        pair = _Pair(self, (reader, writer))
        self._pairs.add(pair)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await pair.run()
        finally:
            self._pairs.discard(pair)
            self._tasks.discard(task)

    async def chaos(
        self,
        *,
        duration: float,
        rng: random.Random,
        cut_every: tuple[float, float] = (0.3, 1.5),
        stall_for: tuple[float, float] = (0.0, 0.5),
        stall_probability: float = 0.3,
    ) -> None:
        """Random cuts and stalls for ``duration`` seconds; leaves the proxy flowing."""
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        try:
            while loop.time() < end:
                await asyncio.sleep(min(rng.uniform(*cut_every), max(0.0, end - loop.time())))
                if loop.time() >= end:
                    break
                if rng.random() < stall_probability:
                    self.stall()
                    await asyncio.sleep(rng.uniform(*stall_for))
                    self.unstall()
                else:
                    self.cut()
        finally:
            self.unstall()


class ThreadedProxy:
    """A :class:`FaultProxy` on its own event loop in a daemon thread, for synchronous tests."""

    def __init__(self, upstream_port: int, *, seed: int | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._proxy_args = (upstream_port, seed, kwargs)
        self._proxy: FaultProxy | None = None
        self._chaos: asyncio.Future[None] | None = None

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        upstream_port, seed, kwargs = self._proxy_args

        async def create() -> FaultProxy:
            proxy = FaultProxy(upstream_port, seed=seed, **kwargs)
            await proxy.start()
            return proxy

        self._proxy = self._call(create())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_chaos()
        if self._proxy is not None:
            self._call(self._proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def _do(self, function: Any, *args: Any) -> Any:
        async def run() -> Any:
            return function(*args)

        return self._call(run())

    @property
    def proxy(self) -> FaultProxy:
        assert self._proxy is not None, "use ThreadedProxy as a context manager"
        return self._proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def stats(self) -> ProxyStats:
        return self.proxy.stats

    @property
    def delay(self) -> float:
        return self.proxy.delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._do(setattr, self.proxy, "delay", value)

    def cut(self) -> int:
        return self._do(self.proxy.cut)

    def stall(self) -> None:
        self._do(self.proxy.stall)

    def unstall(self) -> None:
        self._do(self.proxy.unstall)

    def refuse(self, on: bool) -> None:
        self._do(self.proxy.refuse, on)

    def set_upstream(self, port: int, host: str = "127.0.0.1") -> None:
        self._do(self.proxy.set_upstream, port, host)

    def corrupt_once(self, *, after_bytes: int, direction: str = "up") -> None:
        self._do(lambda: self.proxy.corrupt_once(after_bytes=after_bytes, direction=direction))

    def corrupt_first_frames(self, count: int, direction: str = "up") -> None:
        self._do(self.proxy.corrupt_first_frames, count, direction)

    def start_chaos(self, *, duration: float, seed: int = 0, **kwargs: Any) -> None:
        """Run :meth:`FaultProxy.chaos` in the background; returns at once."""
        self.stop_chaos()
        self._chaos = asyncio.run_coroutine_threadsafe(
            self.proxy.chaos(duration=duration, rng=random.Random(seed), **kwargs), self._loop
        )

    def stop_chaos(self) -> None:
        if self._chaos is not None and not self._chaos.done():
            self._chaos.cancel()
            with contextlib.suppress(Exception):
                self._chaos.result(timeout=5)
        self._chaos = None
        if self._proxy is not None and self._loop.is_running():
            self._do(self.proxy.unstall)
