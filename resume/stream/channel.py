"""A channel as the stream server holds it in memory, and the one budget all their tails share.

The durable log is in the store; in memory a channel keeps only its head (the retained range),
a lock that orders its appends, a way to wait for it to grow, and its newest messages (the
*tail*) so subscribers that keep up are fed without reading the log back. A channel object
lives while connections use it and is evicted when the last one leaves. All tails together
stay within one :class:`TailBudget` (bytes): when it is exceeded, the oldest messages of the
channels that were appended to least recently go first, and the database serves what fell out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque

from resume.store.stream_log import ChannelHead, LoggedMessage

RECENT = 8192  # newest messages per channel kept in memory for subscribers that keep up
RECENT_BYTES = 8 * 2**20  # ... and at most this many bytes of them per channel
TAIL_MEMORY = 64 * 2**20  # all channels' tails together
MESSAGE_OVERHEAD = 170  # bytes a tail entry costs beyond its text (measured with tracemalloc)


def cost(text: str) -> int:
    """What one message costs in a tail, approximately, in bytes."""
    return len(text) + MESSAGE_OVERHEAD


class TailBudget:
    """One limit in bytes for the in-memory tails of every channel."""

    def __init__(self, limit: int = TAIL_MEMORY) -> None:
        self.limit = limit
        self.used = 0
        self._order: OrderedDict[Channel, None] = OrderedDict()  # least recently grown first

    def grew(self, channel: Channel, nbytes: int) -> None:
        """``channel``'s tail grew by ``nbytes``: trim tails until the budget holds again."""
        self.used += nbytes
        self._order[channel] = None
        self._order.move_to_end(channel)
        while self.used > self.limit and self._order:
            oldest = next(iter(self._order))
            oldest.drop_oldest(self.used - self.limit)
            if not oldest.recent:
                self._order.pop(oldest, None)

    def shrank(self, channel: Channel, nbytes: int) -> None:
        """``channel``'s tail gave back ``nbytes``."""
        self.used -= nbytes
        if not channel.recent:
            self._order.pop(channel, None)


class Channel:
    """One channel's retained range in memory, its tail, and a way to wait for it to grow."""

    def __init__(
        self, name: str, head: ChannelHead, budget: TailBudget | None = None, recent: int = RECENT
    ) -> None:
        self.name = name
        self.head = head
        self.budget = budget if budget is not None else TailBudget()
        self.lock = asyncio.Lock()  # one append at a time: seqs are assigned in commit order
        self.recent: deque[LoggedMessage] = deque()  # consecutive seqs
        self.recent_limit = recent
        self.recent_bytes = 0
        self.users = 0  # connections using this object; evicted at 0
        self._changed = asyncio.Event()

    def remember(self, first: int, texts: list[str], timestamp: float) -> None:
        """Newly stored messages with seqs ``first, first+1, ...``."""
        recent = self.recent
        if recent and recent[-1].seq + 1 != first:
            self.drop_oldest(self.recent_bytes)  # keep the tail contiguous
        added = 0
        for i, text in enumerate(texts):
            recent.append(LoggedMessage(first + i, text, timestamp))
            added += cost(text)
        self.recent_bytes += added
        over = len(recent) - self.recent_limit
        freed = 0
        while recent and (over > 0 or self.recent_bytes - freed > RECENT_BYTES):
            freed += cost(recent.popleft().data)
            over -= 1
        self.recent_bytes -= freed
        self.budget.grew(self, added - freed)

    def drop_oldest(self, nbytes: int) -> None:
        """Forget the oldest tail messages until at least ``nbytes`` are freed (or none left)."""
        recent = self.recent
        freed = 0
        while recent and freed < nbytes:
            freed += cost(recent.popleft().data)
        self.recent_bytes -= freed
        self.budget.shrank(self, freed)

    def forget_tail(self) -> None:
        """Give the whole tail back to the budget (the channel is being evicted)."""
        self.drop_oldest(self.recent_bytes)

    def cached_after(self, position: int, limit: int) -> list[LoggedMessage] | None:
        """Up to ``limit`` messages after ``position`` from memory; None if not all there."""
        recent = self.recent
        if not recent or not recent[0].seq <= position + 1 <= recent[-1].seq:
            return None
        start = position + 1 - recent[0].seq
        return list(itertools.islice(recent, start, start + limit))

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the head (take it before checking the head)."""
        return self._changed

    def advance(self, head: ChannelHead) -> None:
        """The log changed: record the new head and wake every pusher.

        Heads only move forward (several nodes: a notification may arrive after a newer
        head of our own append, or the reverse), so the newer of each end is kept.
        """
        merged = ChannelHead(max(self.head.first, head.first), max(self.head.last, head.last))
        if merged == self.head:
            return
        self.head = merged
        event, self._changed = self._changed, asyncio.Event()
        event.set()
