"""Bounds the stream server puts on what one peer can make it hold or do.

- :class:`ByteQueue`: frames read ahead of the appender, bounded in bytes (not in count: a few
  frames of the largest size must not add up to hundreds of MiB per connection);
- :class:`TokenBucket`: a publish quota (messages or bytes per second) per producer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ByteQueue(Generic[T]):
    """A FIFO for one reader task and one writer task, holding at most ``limit`` bytes.

    ``put`` waits while the queue is not empty and the item would take it over ``limit``; an
    item larger than ``limit`` still goes in alone, so progress never stops.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: deque[tuple[T, int]] = deque()
        self._not_empty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items

    async def put(self, item: T, size: int) -> None:
        """Queue ``item`` of ``size`` bytes, waiting for room first."""
        while self._items and self.bytes + size > self.limit:
            self._room.clear()
            await self._room.wait()
        self._items.append((item, size))
        self.bytes += size
        self._not_empty.set()

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self.get_nowait()

    def get_nowait(self) -> T:
        """The oldest item; IndexError if there is none."""
        item, size = self._items.popleft()
        self.bytes -= size
        self._room.set()
        return item

    def peek(self) -> T:
        """The oldest item without taking it; IndexError if there is none."""
        return self._items[0][0]


class TokenBucket:
    """``rate`` units per second on average, bursts of up to ``burst`` units.

    :meth:`take` always takes what is asked (a message larger than the burst must still get
    through) and returns how long to wait before acting on it, so the debt is paid in time.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("a quota rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate  # one second's worth
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    def take(self, amount: float) -> float:
        """Take ``amount`` units; the seconds to wait before using them (0: at once)."""
        self._refill()
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self) -> bool:
        """Whether the bucket has refilled completely (so forgetting it changes nothing)."""
        self._refill()
        return self.tokens >= self.burst

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class Quota:
    """A producer's publish quota: messages and/or bytes per second (``None``: no limit)."""

    def __init__(self, messages: float | None, nbytes: float | None) -> None:
        self.messages = TokenBucket(messages) if messages else None
        self.bytes = TokenBucket(nbytes) if nbytes else None

    def delay(self, count: int, size: int) -> float:
        """Take ``count`` messages of ``size`` bytes; seconds to wait before storing them."""
        waits = [0.0]
        if self.messages is not None:
            waits.append(self.messages.take(count))
        if self.bytes is not None:
            waits.append(self.bytes.take(size))
        return max(waits)

    def idle(self) -> bool:
        """Whether the quota is back to full (a new one would be the same)."""
        return all(b is None or b.full() for b in (self.messages, self.bytes))
