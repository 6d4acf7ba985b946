"""What a stream endpoint does when several server nodes share one store (PostgreSQL).

- Wakes this node's subscribers when another node appends: :class:`resume.store.notify.Listener`
  hands it each ``NOTIFY``; the channel's head moves forward and its pushers read the log.
- Polls the heads of the channels this node serves every ``poll`` seconds, and after every
  (re)connect of the listener: a lost notification delays a delivery by at most that, and
  never loses one (the log is the truth).
- Renews the sessions of the producers connected here every third of a lease (a session that
  lapsed lets another instance claim the id) and fences a local connection whose session was
  taken by a newer connection on another node, at once when told, else at its next append.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from resume.errors import StoreError
from resume.store.notify import PRODUCERS, STREAMS, Listener
from resume.store.stream_log import ChannelHead

if TYPE_CHECKING:
    from resume.stream.endpoint import StreamEndpoint

log = logging.getLogger("resume.streams")

POLL = 2.0  # seconds between head polls of the channels served here


class ClusterLink:
    """Notifications, head polls and session renewals for one stream endpoint."""

    def __init__(
        self, endpoint: StreamEndpoint, url: str | None, lease: float, poll: float = POLL
    ) -> None:
        self.endpoint = endpoint
        self.lease = lease
        self.poll = poll
        self.listener = (
            Listener(url, (STREAMS, PRODUCERS), self.on_notify, self.refresh_heads)
            if url is not None
            else None
        )
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        """Start listening, polling and renewing (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())
            if self.listener is not None:
                self.listener.start()

    async def stop(self) -> None:
        """Stop everything started."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.listener is not None:
            await self.listener.stop()

    def on_notify(self, kind: str, payload: str) -> None:
        """One notification from a node (maybe this one): wake or fence what it concerns."""
        try:
            note = json.loads(payload)
        except ValueError:
            return
        if kind == STREAMS:
            channel = self.endpoint.channels.get(note.get("c"))
            if channel is not None:
                channel.advance(ChannelHead(int(note["f"]), int(note["l"])))
        elif kind == PRODUCERS:
            live = self.endpoint.producers.get((note.get("c"), note.get("p")))
            if live is not None and live.session != note.get("s") and not live.fenced:
                live.fence()

    async def refresh_heads(self) -> None:
        """Read the head of every channel served here from the log (after a lost wake-up)."""
        for name, channel in list(self.endpoint.channels.items()):
            head = await asyncio.to_thread(self.endpoint.log.head, name)
            channel.advance(head)

    async def renew_sessions(self) -> None:
        """Renew the live producer sessions of this node; fence those taken elsewhere."""
        live = {
            (c.name, c.producer, c.session): c
            for c in list(self.endpoint.producers.values())
            if c.session is not None and not c.fenced
        }
        if not live:
            return
        lost = await asyncio.to_thread(self.endpoint.log.renew_sessions, list(live), self.lease)
        for key in lost:
            connection = live[key]
            if not connection.fenced:
                connection.fence()

    async def _forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_renewal = next_poll = loop.time()
        while True:
            now = loop.time()
            try:
                if now >= next_renewal:
                    next_renewal = now + self.lease / 3
                    await self.renew_sessions()
                if now >= next_poll:
                    next_poll = now + self.poll
                    await self.refresh_heads()
            except StoreError as exc:
                log.warning("stream housekeeping across nodes failed: %s", exc)
            await asyncio.sleep(max(0.05, min(next_renewal, next_poll) - loop.time()))
