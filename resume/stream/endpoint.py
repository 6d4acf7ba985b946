"""The server side of streams: the ``/streams/<channel>`` endpoint of `resume serve`.

Per connection: the client says ``hello`` (its client id and where its consumer is), the server
answers ``welcome`` (the highest client seq it stored for that id, the retained range, where
delivery starts). Then, concurrently:

- ``pub`` frames are appended to the channel's durable log in one commit per frame, skipping
  client seqs already stored (a replay), and acked with the highest stored client seq;
- a pusher sends everything after the consumer's position in ``msgs`` frames, at most
  ``window`` unacknowledged messages at a time, and ``gap`` for seqs trimmed before it got
  there. The client's cumulative ``ack`` frames open the window again.

The wire messages are listed in :mod:`resume.protocol.session`. A peer that breaks the protocol
is closed with the matching code; nothing it sent after the violation is stored, and every
other connection goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from resume.errors import ProtocolError, StoreError
from resume.housekeeping import Housekeeping
from resume.metrics import ServerMetrics
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.store import Store
from resume.store.models import utcnow
from resume.store.streams import ChannelHead, LoggedMessage

log = logging.getLogger("resume.streams")

HELLO_TIMEOUT = 10.0
MAX_CLIENT_ID = 64
PUB_QUEUE = 16  # pub frames read ahead of the appender (then the reader waits: backpressure)
PUSH_FRAME_BYTES = 512 * 1024  # a msgs frame stays near this size (one bigger message alone)
RECENT = 8192  # newest messages per channel kept in memory for subscribers that keep up
RECENT_BYTES = 8 * 2**20  # ... and at most this many bytes of them


class Channel:
    """One channel's retained range in memory, and a way to wait for it to grow.

    The newest messages are also kept in memory (``recent``), so subscribers that keep up are
    fed without reading the log back from the database.
    """

    def __init__(self, name: str, head: ChannelHead, recent: int = RECENT) -> None:
        self.name = name
        self.head = head
        self.lock = asyncio.Lock()  # one append at a time: seqs are assigned in commit order
        self.recent: deque[LoggedMessage] = deque()  # consecutive seqs
        self.recent_limit = recent
        self.recent_bytes = 0
        self._changed = asyncio.Event()

    def remember(self, first: int, texts: list[str], timestamp: float) -> None:
        """Newly stored messages with seqs ``first, first+1, ...``."""
        recent = self.recent
        if recent and recent[-1].seq + 1 != first:
            recent.clear()  # keep the cache contiguous
            self.recent_bytes = 0
        for i, text in enumerate(texts):
            recent.append(LoggedMessage(first + i, text, timestamp))
            self.recent_bytes += len(text)
        while recent and (len(recent) > self.recent_limit or self.recent_bytes > RECENT_BYTES):
            self.recent_bytes -= len(recent.popleft().data)

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
        """The log changed: record the new head and wake every pusher."""
        self.head = head
        event, self._changed = self._changed, asyncio.Event()
        event.set()


class StreamEndpoint:
    """Serves stream channels from the server's store; mount it at ``/streams``."""

    def __init__(
        self,
        store: Store,
        *,
        max_message_size: int = 2**20,
        retention_count: int | None = 1_000_000,
        retention_age: float | None = 7 * 86400,
        window: int = 4096,
        read_batch: int = 1000,
    ) -> None:
        self.log = store.streams
        self.max_message_size = max_message_size
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.window = window
        self.read_batch = read_batch
        self.channels: dict[str, Channel] = {}
        self.metrics = ServerMetrics()  # build_app puts the app's own here
        self._expiry = Housekeeping(
            self.expire_old, age=retention_age, what="trimming stream logs", errors=(StoreError,)
        )

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one client connection to channel ``argument`` until it ends."""
        self._expiry.ensure_started()
        await StreamConnection(self, connection, argument).run()

    async def channel(self, name: str) -> Channel:
        """The in-memory state of channel ``name``, loaded from the store on first use."""
        channel = self.channels.get(name)
        if channel is None:
            head = await asyncio.to_thread(self.log.head, name)
            channel = self.channels.setdefault(name, Channel(name, head))
        return channel

    async def expire_old(self) -> None:
        """Trim every channel's messages older than ``retention_age``."""
        if not self.retention_age:
            return
        before = utcnow() - dt.timedelta(seconds=self.retention_age)
        for name in await asyncio.to_thread(self.log.channels):
            channel = await self.channel(name)
            async with channel.lock:
                head = await asyncio.to_thread(self.log.trim, name, before=before)
                if head != channel.head:
                    channel.advance(head)

    async def close(self) -> None:
        """Stop the retention task (connections are closed by the server)."""
        await self._expiry.stop()


class StreamConnection:
    """One client connection to one channel."""

    def __init__(self, endpoint: StreamEndpoint, websocket: ServerConnection, name: str) -> None:
        self.endpoint = endpoint
        self.ws = websocket
        self.name = name
        self.client_id = ""
        self.in_flight: deque[list[int]] = deque()  # [first, last] runs pushed, not yet acked
        self.acked = asyncio.Event()
        # pub batches read but not yet stored: the reader goes on while the appender commits
        self.pubs: asyncio.Queue[tuple[int, list[str]]] = asyncio.Queue(PUB_QUEUE)

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            hello = frames.decode(await asyncio.wait_for(self.ws.recv(), HELLO_TIMEOUT))
            channel, position, subscribe = await self.on_hello(hello)
            tasks = [
                asyncio.create_task(self.read()),
                asyncio.create_task(self.append_forever(channel)),
            ]
            if subscribe:
                tasks.append(asyncio.create_task(self.push(channel, position)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the first to fail (or the reader, at the end) ends them all
        except ProtocolError as exc:
            log.warning("closing %s on %s: %s", self.ws.remote_address, self.name, exc)
            await self.ws.close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])
        except TimeoutError:
            await self.ws.close(CloseCode.POLICY_VIOLATION, "no hello in time")
        except ConnectionClosed:
            pass
        except StoreError:
            log.exception("storing messages of %s failed", self.name)
            await self.ws.close(CloseCode.INTERNAL_ERROR, "server could not store messages")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def read(self) -> None:
        async for raw in self.ws:
            message = frames.decode(raw)
            kind = message["type"]
            if kind == "pub":
                await self.pubs.put(self.parse_pub(message))
            elif kind == "ack":
                self.on_ack(frames.seq_field(message, "seq"))
            else:
                raise ProtocolError(
                    f"unexpected {kind!r} message", close_code=CloseCode.PROTOCOL_ERROR
                )

    async def on_hello(self, hello: dict[str, Any]) -> tuple[Channel, int, bool]:
        if hello["type"] != "hello":
            raise ProtocolError(
                f"expected hello, got {hello['type']!r}", close_code=CloseCode.PROTOCOL_ERROR
            )
        client_id = frames.field(hello, "client_id", str)
        if not 0 < len(client_id) <= MAX_CLIENT_ID:
            raise ProtocolError(
                f"client_id must be 1..{MAX_CLIENT_ID} characters",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        after = hello.get("after", "end")
        if not (after in ("start", "end") or frames.is_seq(after)):
            raise ProtocolError(
                f'hello: \'after\' must be a seq, "start" or "end", got {after!r}',
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        subscribe = hello.get("subscribe", True)
        if not isinstance(subscribe, bool):
            raise ProtocolError(
                "hello: 'subscribe' must be true or false", close_code=CloseCode.PROTOCOL_ERROR
            )
        self.client_id = client_id
        channel = await self.endpoint.channel(self.name)
        acked = await asyncio.to_thread(self.endpoint.log.producer_seq, self.name, client_id)
        head = channel.head
        if after == "end":
            position = head.last
        elif after == "start":
            position = head.first - 1
        else:
            position = after
        await self.ws.send(
            frames.encode(
                {
                    "type": "welcome",
                    "acked": acked,
                    "first": head.first,
                    "last": head.last,
                    "position": position,
                }
            )
        )
        return channel, position, subscribe

    @staticmethod
    def parse_pub(message: dict[str, Any]) -> tuple[int, list[str]]:
        """The first client seq and the messages (as JSON texts) of a ``pub`` frame."""
        first = frames.seq_field(message, "seq", minimum=1)
        data = message.get("data")
        if not isinstance(data, list) or not data:
            raise ProtocolError(
                "pub: 'data' must be a non-empty list", close_code=CloseCode.PROTOCOL_ERROR
            )
        return first, [json.dumps(item, separators=(",", ":"), ensure_ascii=False) for item in data]

    async def append_forever(self, channel: Channel) -> None:
        """Store queued pub batches, all that are waiting in one commit (group commit), and ack."""
        endpoint = self.endpoint
        carry: tuple[int, list[str]] | None = None
        while True:
            first, texts = carry or await self.pubs.get()
            carry = None
            while not self.pubs.empty():
                next_first, more = self.pubs.get_nowait()
                if next_first != first + len(texts):  # not a continuation: its own commit
                    carry = (next_first, more)
                    break
                texts.extend(more)
            async with channel.lock:
                with endpoint.metrics.commit_seconds.labels("stream").time():
                    appended = await asyncio.to_thread(
                        endpoint.log.append,
                        self.name,
                        self.client_id,
                        first,
                        texts,
                        keep=endpoint.retention_count,
                    )
                endpoint.metrics.stream_appended.inc(appended.count)
                if appended.count:
                    channel.remember(appended.first, texts[-appended.count :], appended.timestamp)
                    channel.advance(appended.head)
            await self.ws.send(frames.encode({"type": "ack", "seq": appended.stored}))

    def on_ack(self, seq: int) -> None:
        while self.in_flight and self.in_flight[0][1] <= seq:
            self.in_flight.popleft()
        if self.in_flight and self.in_flight[0][0] <= seq:
            self.in_flight[0][0] = seq + 1
        self.acked.set()

    def unacked(self) -> int:
        return sum(last - first + 1 for first, last in self.in_flight)

    async def push(self, channel: Channel, position: int) -> None:
        """Send everything after ``position``, now and as it arrives, within the window."""
        endpoint = self.endpoint
        while True:
            changed = channel.changed()
            head = channel.head
            if head.first > position + 1:
                await self._send_gap(position + 1, head.first - 1)
                position = head.first - 1
            if head.last <= position:
                await changed.wait()
                continue
            room = endpoint.window - self.unacked()
            if room <= 0:
                self.acked.clear()
                await self.acked.wait()
                continue
            limit = min(endpoint.read_batch, room)
            rows = channel.cached_after(position, limit)
            if rows is None:
                rows = await asyncio.to_thread(endpoint.log.read, self.name, position, limit)
            if not rows:  # trimmed while we read: the head says where to go on
                await asyncio.sleep(0)
                continue
            if rows[0].seq > position + 1:
                await self._send_gap(position + 1, rows[0].seq - 1)
            rows = _fit(rows, PUSH_FRAME_BYTES)
            await self.ws.send(_msgs_frame(rows))
            endpoint.metrics.stream_delivered.inc(len(rows))
            self.in_flight.append([rows[0].seq, rows[-1].seq])
            position = rows[-1].seq

    async def _send_gap(self, first: int, last: int) -> None:
        self.endpoint.metrics.stream_gaps.inc()
        log.info(
            "%s: seqs %d..%d were trimmed before %s took them",
            self.name,
            first,
            last,
            self.client_id,
        )
        await self.ws.send(frames.encode({"type": "gap", "first": first, "last": last}))


def _fit(rows: list[LoggedMessage], budget: int) -> list[LoggedMessage]:
    """The longest prefix of ``rows`` within ``budget`` bytes (at least one row)."""
    total = 0
    for index, row in enumerate(rows):
        total += len(row.data.encode()) + 24
        if total > budget and index:
            return rows[:index]
    return rows


def _msgs_frame(rows: list[LoggedMessage]) -> str:
    # Stored messages are JSON texts already: splice them in rather than decode and re-encode.
    data = ",".join(row.data for row in rows)
    stamps = ",".join(f"{row.timestamp:.6f}" for row in rows)
    return f'{{"type":"msgs","first":{rows[0].seq},"data":[{data}],"ts":[{stamps}]}}'
