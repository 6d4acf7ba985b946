"""The sending half of a stream client: the outbound buffer and, in durable mode, the outbox.

Every accepted message gets the next client seq and stays in the session's buffer until the
server's cumulative ack covers it. The buffer is bounded in messages and in bytes. In durable
mode a message is accepted only once it is committed to the local outbox, together with the
seq counter, so a restarted process sends what the server never confirmed and never reuses a
seq.

**Cancellation.** A ``send()`` / ``send_many()`` cancelled at any await leaves the outbox, the
counter and the session in agreement:

- cancelled while it waits (for room in the buffer, or for an earlier ``send()``): nothing was
  accepted and the messages are **never** sent;
- cancelled once the outbox write began: the write cannot be called back from its thread, so
  ``send()`` lets it finish, accepts the messages (they are **sent**, as if ``send()`` had
  returned; ``stats.sent`` counts them) and only then raises ``CancelledError``. The next
  ``send()`` gets the next seq. Without a store there is no such await: a cancelled ``send()``
  accepted nothing unless it was cancelled on its way out, after accepting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

from resume.errors import ClientIdConflict, UsageError, WaitTimeout
from resume.protocol.session import ClientSession
from resume.store import Store
from resume.store.stream_client import Outbox
from resume.stream.options import BufferFull, ClientClosed, StreamOptions, StreamStats


class Outbound:
    """Accepts messages for one client: numbering, bounds, the durable outbox, flush."""

    def __init__(
        self,
        *,
        client_id: str,
        key: str,
        store: Store | None,
        durable: bool,
        options: StreamOptions,
        stats: StreamStats,
        wake: asyncio.Event,
        failed: Callable[[], BaseException | None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.client_id = client_id
        self.key = key
        self.store = store if durable else None
        self.options = options
        self.stats = stats
        self.wake = wake  # set when there is something to write
        self.failed = failed
        self.fail = fail
        self.session: ClientSession | None = None
        self.closing = False
        self.holder: str | None = None  # our claim on the producer in the store
        self.space = asyncio.Condition()  # notified when the buffer shrank or the client failed
        self._lock = asyncio.Lock()  # one send at a time numbers its messages

    async def open(self) -> Outbox:
        """In durable mode: load the outbox and claim the producer; otherwise an empty one."""
        if self.store is None:
            return Outbox([], 0, 0)
        outbox = await asyncio.to_thread(
            self.store.stream_client.open_producer, self.client_id, self.key
        )
        self.holder = outbox.holder
        return outbox

    async def send_many(self, items: Iterable[Any]) -> list[int]:
        """Accept several messages at once (one store commit in durable mode); their seqs."""
        encoded = [self.encode(item) for item in items]  # (JSON text, its size in bytes)
        session = self._usable()
        if self.closing:
            raise ClientClosed("the client is closing; it takes no more messages")
        async with self._lock:  # cancelled while waiting here or for room: nothing accepted
            size = sum([item[1] for item in encoded])
            if not self._room(session, len(encoded), size):
                await self._wait_for_room(len(encoded), size)
            first = session.last_seq + 1
            seqs = list(range(first, first + len(encoded)))
            if self.store is not None:
                rows = [(seq, text) for seq, (text, _) in zip(seqs, encoded, strict=True)]
                cancelled = await self._write_outbox(rows)
            else:
                cancelled = False
            for text, size in encoded:
                session.send(text, size)
            self.stats.sent += len(encoded)
            self._count(session)
        self.wake.set()
        if cancelled:
            raise asyncio.CancelledError
        if session.unwritten >= session.max_batch:
            await asyncio.sleep(0)  # a full batch is waiting: let the writer send it now
        return seqs

    async def _write_outbox(self, rows: list[tuple[int, str]]) -> bool:
        """Commit ``rows`` to the outbox; True if we were cancelled meanwhile.

        The commit runs in a thread and cannot be called back, so a cancellation only takes
        effect after it: the caller then accepts the rows (they are in the outbox, so they
        will be sent) and raises CancelledError itself.
        """
        assert self.store is not None
        write = asyncio.ensure_future(
            asyncio.to_thread(
                self.store.stream_client.add, self.client_id, self.key, rows, holder=self.holder
            )
        )
        cancelled = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break  # raised below, from the future itself
        try:
            write.result()
        except ClientIdConflict as exc:  # another process took this producer over
            self.fail(exc)
            raise
        return cancelled

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server confirmed every message accepted so far."""
        session = self._usable()
        try:
            async with self.space:
                await asyncio.wait_for(
                    self.space.wait_for(lambda: session.unacked == 0 or self.failed() is not None),
                    timeout,
                )
        except TimeoutError:
            raise WaitTimeout(
                f"the server at {self.key} did not confirm {session.unacked} message(s) "
                f"within {timeout:g}s"
            ) from None
        self._raise_if_failed()

    async def confirmed(self, session: ClientSession, count: int) -> None:
        """The server confirmed ``count`` more messages (up to ``session.acked``)."""
        if self.store is not None:
            await asyncio.to_thread(
                self.store.stream_client.confirm, self.client_id, self.key, session.acked
            )
        self.stats.acked += count
        self._count(session)
        self.wake.set()  # a closing writer may be waiting for exactly this
        await self.notify()

    async def notify(self) -> None:
        """Wake every ``send()`` / ``flush()`` waiting for room or for acks."""
        async with self.space:
            self.space.notify_all()

    def encode(self, data: Any) -> tuple[str, int]:
        """The message as compact JSON, and its size in UTF-8 bytes (checked against the limit)."""
        try:
            # allow_nan=False: NaN and Infinity are not JSON; a peer's parser may refuse them.
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"message is not JSON-serializable: {exc}") from exc
        size = len(text.encode())
        if size > self.options.max_message_bytes:
            raise UsageError(
                f"message of {size} bytes is larger than the limit of "
                f"{self.options.max_message_bytes}"
            )
        return text, size

    def _room(self, session: ClientSession, count: int, size: int) -> bool:
        """Whether ``count`` messages of ``size`` bytes fit (an empty buffer takes anything)."""
        return session.unacked == 0 or (
            session.unacked + count <= self.options.max_buffered
            and session.unacked_bytes + size <= self.options.max_buffered_bytes
        )

    async def _wait_for_room(self, count: int, size: int) -> None:
        session = self._usable()
        options = self.options
        if self._room(session, count, size):
            return
        if options.overflow == "raise":
            raise BufferFull(
                f"{session.unacked} messages ({session.unacked_bytes} bytes) are waiting for "
                f"the server (limits {options.max_buffered} messages, "
                f"{options.max_buffered_bytes} bytes)"
            )
        async with self.space:
            await self.space.wait_for(
                lambda: self._room(session, count, size) or self.failed() is not None
            )
        self._raise_if_failed()

    def _count(self, session: ClientSession) -> None:
        self.stats.buffered = session.unacked
        self.stats.buffered_bytes = session.unacked_bytes

    def _usable(self) -> ClientSession:
        self._raise_if_failed()
        if self.session is None:
            raise UsageError("start the client first (await client.start() or async with)")
        return self.session

    def _raise_if_failed(self) -> None:
        error = self.failed()
        if error is not None:
            raise error
