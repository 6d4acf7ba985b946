"""PostgreSQL ``LISTEN/NOTIFY`` between server nodes: wake-ups, never the truth.

A node that appends to a channel sends ``NOTIFY`` in the same transaction (PostgreSQL delivers
it at commit, never for a rolled-back append); every node listens on one connection of its own
and wakes its subscribers of that channel, which then read the log. A notification can be lost
(the listening connection drops, the node is busy): the log is the truth, so that only delays a
delivery, and :class:`Listener` reports every reconnect so its user reloads what it holds.

psycopg is imported only here and only when a node listens (``pip install 'resume-ws[postgres]'``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from sqlalchemy import Connection, text

log = logging.getLogger("resume.server")

STREAMS = "resume_streams"  # payload: {"c": channel, "f": first, "l": last} (JSON)
PRODUCERS = "resume_producers"  # payload: {"c": channel, "p": producer, "s": session}
MAX_PAYLOAD = 7900  # PostgreSQL refuses payloads of 8000 bytes and more


def libpq_conninfo(url: str) -> str:
    """The libpq connection string (a ``postgresql://`` URI) for a SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def notify(conn: Connection, channel: str, payload: str) -> None:
    """Send a notification when ``conn``'s transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql" and len(payload.encode()) <= MAX_PAYLOAD:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


class Listener:
    """One connection that LISTENs on ``channels`` and hands each notification to ``on_notify``.

    Reconnects with backoff (full jitter, 0.1..5 s) when the connection fails; after every
    (re)connect it awaits ``on_connect``, so the user can reload what notifications it may have
    missed. Runs until :meth:`stop`.
    """

    def __init__(
        self,
        url: str,
        channels: tuple[str, ...],
        on_notify: Callable[[str, str], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.conninfo = libpq_conninfo(url)
        self.channels = channels
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in the background (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        import psycopg

        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            except (psycopg.Error, OSError) as exc:
                log.warning("cannot listen for other nodes' notifications: %s", exc)
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 5.0)
                continue
            try:
                async with conn:
                    for channel in self.channels:
                        await conn.execute(f'LISTEN "{channel}"')
                    self.connected.set()
                    if self.on_connect is not None:
                        await self.on_connect()
                    delay = 0.1
                    async for note in conn.notifies():
                        self.on_notify(note.channel, note.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("lost the notification connection: %s; reconnecting", exc)
            finally:
                self.connected.clear()
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
