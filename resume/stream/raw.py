"""A reconnecting client for WebSocket servers that do not speak the `resume` seq protocol.

It gives reconnects with backoff and full jitter, heartbeats, a bounded outbound buffer while
disconnected, and an ``on_connect`` hook to resubscribe after every (re)connect. It does NOT
give replay or dedup: a message written just before a drop may be lost or arrive twice, and
what the server sent while we were away is gone. Use :class:`resume.stream.client.StreamClient`
with `resume serve` when that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

from websockets.asyncio.client import ClientConnection

from resume.errors import ConnectionLost, UsageError
from resume.net.backoff import Backoff
from resume.net.connector import (
    ConnectionEvent,
    ConnectOptions,
    ConnectorStats,
    Reconnector,
    check_url,
)
from resume.stream.client import BufferFull, ClientClosed

Data = str | bytes
_END = object()


class RawClient:
    """Reconnecting, buffering, heartbeating client for any WebSocket server; no replay.

    ``on_connect(connection)`` runs after every connect, before buffered messages are written
    (send a subscribe message there). Received frames are yielded by ``async for``.
    """

    def __init__(
        self,
        url: str,
        *,
        on_connect: Callable[[ClientConnection], Awaitable[None]] | None = None,
        options: ConnectOptions | None = None,
        backoff: Backoff | None = None,
        max_buffered: int = 1000,
        overflow: Literal["wait", "raise"] = "wait",
        max_attempts: int | None = None,
        give_up_after: float | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
    ) -> None:
        check_url(url)
        if max_buffered < 1:
            raise UsageError("max_buffered must be at least 1")
        if overflow not in ("wait", "raise"):
            raise UsageError("overflow must be 'wait' or 'raise'")
        self.on_connect = on_connect
        self.max_buffered = max_buffered
        self.overflow = overflow
        self._reconnector = Reconnector(
            url,
            options=options or ConnectOptions(subprotocol=None),
            backoff=backoff,
            max_attempts=max_attempts,
            give_up_after=give_up_after,
            on_event=on_event,
        )
        self._outbox: deque[Data] = deque()
        self._inbound: asyncio.Queue[object] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closing = False

    @property
    def stats(self) -> ConnectorStats:
        """The reconnect loop's counters (connects, reconnects, failures)."""
        return self._reconnector.stats

    async def __aenter__(self) -> RawClient:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, data: Data) -> None:
        """Buffer ``data`` and write it when connected; waits (or raises) when the buffer is full."""
        self._check()
        async with self._changed:
            if len(self._outbox) >= self.max_buffered:
                if self.overflow == "raise":
                    raise BufferFull(f"{len(self._outbox)} messages buffered (limit)")
                await self._changed.wait_for(
                    lambda: len(self._outbox) < self.max_buffered or self._error is not None
                )
                self._check()
            self._outbox.append(data)
            self._changed.notify_all()

    def __aiter__(self) -> RawClient:
        return self

    async def __anext__(self) -> Data:
        item = await self._inbound.get()
        if item is _END:
            self._inbound.put_nowait(_END)
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        assert isinstance(item, str | bytes)
        return item

    async def close(self, timeout: float = 5.0) -> int:
        """Write what is buffered (bounded by ``timeout``) and close; returns how many were not."""
        if self._task is None:
            return len(self._outbox)
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: not self._outbox or self._task.done()),  # type: ignore[union-attr]
                    timeout,
                )
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._inbound.put_nowait(_END)
        return len(self._outbox)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ClientClosed("the client is closing")

    async def _run(self) -> None:
        try:
            await self._reconnector.run(self._connection)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
        finally:
            self._inbound.put_nowait(_END)
            async with self._changed:
                self._changed.notify_all()

    async def _connection(self, ws: ClientConnection) -> None:
        if self.on_connect is not None:
            await self.on_connect(ws)
        reader = asyncio.create_task(self._read(ws))
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._outbox or reader.done())
                    if reader.done():
                        reader.result()
                    data = self._outbox[0]
                await ws.send(data)
                async with self._changed:
                    self._outbox.popleft()  # written; whether it arrived is unknowable here
                    self._changed.notify_all()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self._inbound.put_nowait(message)
            raise ConnectionLost(f"server closed the connection ({ws.close_code})")
        finally:
            async with self._changed:
                self._changed.notify_all()


__all__ = ["RawClient"]
