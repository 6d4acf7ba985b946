"""The receiving half of a stream client: received messages until the application takes them.

Received messages wait in a queue bounded in messages and in bytes (as they arrived on the
wire); when it is full the client stops reading the socket until the application catches up,
so memory stays bounded across reconnects too.

**Taken.** A message the iterator returned is *held*; it counts as taken when the application
asks for the next one, or calls :meth:`Inbound.commit`. Leaving ``async for`` (``break``, an
exception) or leaving ``async with`` does not take it: the application may have stopped before
processing it. Taking it saves the position (durable mode) and acknowledges it to the server.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from resume.errors import GapError
from resume.protocol.session import ClientSession, Gap, Message
from resume.store import Store
from resume.stream.options import StreamOptions, StreamStats

_END = object()  # queued after the last message: the client closed or failed


class Inbound:
    """Received messages and gaps for one client, and the position of what was taken."""

    def __init__(
        self,
        *,
        consumer: str | None,
        key: str,
        store: Store | None,
        options: StreamOptions,
        stats: StreamStats,
        wake: asyncio.Event,
        failed: Callable[[], BaseException | None],
        on_gap: Callable[[Gap], None] | None,
    ) -> None:
        self.consumer = consumer
        self.key = key
        self.store = store if consumer is not None else None
        self.options = options
        self.stats = stats
        self.wake = wake  # set when there is an ack to write
        self.failed = failed
        self.on_gap = on_gap
        self.session: ClientSession | None = None
        self.held: Message | None = None
        self._queue: deque[tuple[Any, int]] = deque()  # (Message | Gap | _END, bytes)
        self.queued_bytes = 0
        self._arrived = asyncio.Event()
        self.room = asyncio.Event()  # the queue is below its bounds: the reader may go on
        self.room.set()

    async def position(self) -> int | None:
        """The stored position of the consumer (durable mode), or None."""
        if self.store is None or self.consumer is None:
            return None
        return await asyncio.to_thread(self.store.stream_client.cursor, self.consumer, self.key)

    def put(self, events: list[Message | Gap], nbytes: int) -> None:
        """Queue what one frame of ``nbytes`` brought; its bytes are shared by its messages."""
        if not events:
            return
        share = max(1, nbytes // len(events))
        for event in events:
            self._queue.append((event, share))
            self.queued_bytes += share
        self._arrived.set()
        if not self._has_room():
            self.room.clear()

    def end(self) -> None:
        """No more messages: every receive() from now on ends."""
        self._queue.append((_END, 0))
        self._arrived.set()

    async def receive(self) -> Message | None:
        """The next message, or None once the client is closed (raises its fatal error)."""
        await self.commit()  # asking for the next one means the previous one was taken
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            item, size = self._queue[0]
            if item is _END:  # stays queued: every later call ends too
                error = self.failed()
                if error is not None:
                    raise error
                return None
            self._queue.popleft()
            self.queued_bytes -= size
            if self._has_room():
                self.room.set()
            if isinstance(item, Gap):
                if self.on_gap is not None:
                    self.on_gap(item)
                    continue
                raise GapError(
                    f"messages {item.first}..{item.last} were trimmed on the server before "
                    "this consumer took them: not recovered",
                    first=item.first,
                    last=item.last,
                )
            self.held = item
            self.stats.received += 1
            return item

    async def commit(self) -> None:
        """Count the message last returned as taken now (it otherwise is at the next one)."""
        if self.held is not None:
            held, self.held = self.held, None
            await self.take(held)

    async def take(self, message: Message) -> None:
        """Save the position after ``message`` (durable mode) and ack it to the server."""
        session = self.session
        assert session is not None
        if self.store is not None and self.consumer is not None:
            await asyncio.to_thread(
                self.store.stream_client.set_cursor, self.consumer, self.key, message.seq
            )
        session.take(message.seq)
        self.wake.set()

    def _has_room(self) -> bool:
        options = self.options
        return (
            len(self._queue) < options.max_received
            and self.queued_bytes < options.max_received_bytes
        )
