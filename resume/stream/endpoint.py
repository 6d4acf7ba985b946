"""The server side of streams: the ``/streams/<channel>`` endpoint of `resume serve`.

Per connection: the client says ``hello`` (its client id, its producer instance, where its
consumer is), the server answers ``welcome`` (the highest client seq it stored for that
producer, the retained range, where delivery starts). Then, concurrently:

- ``pub`` frames are appended to the channel's durable log in one commit per group of waiting
  frames, skipping client seqs already stored (a replay), and acked with the highest stored
  client seq;
- a pusher sends everything after the consumer's position in ``msgs`` frames, at most
  ``window`` unacknowledged messages at a time, and ``gap`` for seqs trimmed before it got
  there. The client's cumulative ``ack`` frames open the window again.

**Producer identity.** A producer is (principal, channel, client id), the client id namespaced
by the principal's ``sub`` (:mod:`resume.auth`), so principals never collide. One producer
*instance* (the nonce in ``hello.instance``, kept in the client's store) owns an id: a hello
from another instance while the owner is connected, or after the owner stored messages under
the id, is refused with close code 4409; a second connection of the same instance takes over
and the older one is fenced (closed with 4410, and nothing it still sends is stored).

**Permissions.** The upgrade is refused with 403 for a channel the token allows neither to
publish to nor to read (:meth:`StreamEndpoint.authorize`); a ``hello`` that subscribes without
``subscribe`` rights, or a ``pub`` without ``publish`` rights, is closed with 1008.

**Bounds.** Channel objects live while connections use them; all in-memory tails share one
byte budget (:class:`resume.stream.channel.TailBudget`); ``pub`` frames read ahead of the
appender are bounded in bytes; an optional quota throttles each producer's publishing.

The wire messages are listed in :mod:`resume.protocol.session`. A peer that breaks the protocol
is closed with the matching code; nothing it sent after the violation is stored, and every
other connection goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from resume.auth import Principal, principal_of
from resume.errors import (
    CLIENT_ID_CONFLICT,
    PRODUCER_FENCED,
    TOKEN_EXPIRED,
    ClientIdConflict,
    ProtocolError,
    Rejected,
    StoreError,
)
from resume.housekeeping import Housekeeping
from resume.metrics import ServerMetrics
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.store import Store
from resume.store.jobs import RoundGate
from resume.store.models import utcnow
from resume.store.stream_log import LoggedMessage, OwnedByAnother, ProducerLive, ProducerRecord
from resume.stream.channel import TAIL_MEMORY, Channel, TailBudget
from resume.stream.cluster import ClusterLink
from resume.stream.limits import ByteQueue, Quota

log = logging.getLogger("resume.streams")

HELLO_TIMEOUT = 10.0
MAX_CLIENT_ID = 64
MAX_INSTANCE = 64
READ_AHEAD_BYTES = 2**20  # pub frames read ahead of the appender (then the reader waits)
INCOMING_FRAMES = 4  # frames websockets buffers for one stream connection before pausing reads
QUOTAS_KEPT = 1024  # producers' quotas kept before the idle (refilled) ones are dropped
PUSH_FRAME_BYTES = 512 * 1024  # a msgs frame stays near this size (one bigger message alone)
SESSION_LEASE = 10.0  # seconds a producer's session lasts unless renewed (several nodes)


class TokenExpired(Exception):
    """The connection's token expired: it is closed (4401) and the client reconnects."""


class StreamEndpoint:
    """Serves stream channels from the server's store; mount it at ``/streams``.

    ``tail_memory``: bytes of newest messages kept in memory over all channels.
    ``publish_rate`` / ``publish_bytes``: per producer, messages / bytes per second (None: no
    limit); a producer over its quota is slowed down (its acks come later), never refused.
    ``read_ahead_bytes``: ``pub`` frames read ahead of the appender, per connection.

    Several nodes on one store: ``shared=True`` keeps producer sessions across nodes alive
    (renewed every third of ``lease`` seconds) and polls the heads of channels served here;
    ``listen_url`` (PostgreSQL) also wakes subscribers at once when another node appends
    (:mod:`resume.stream.cluster`); ``gate`` runs the retention rounds once across nodes.
    With one node (``shared=False``) sessions left by a crashed predecessor are dropped at
    start.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_message_size: int = 2**20,
        retention_count: int | None = 1_000_000,
        retention_age: float | None = 7 * 86400,
        window: int = 4096,
        read_batch: int = 1000,
        tail_memory: int = TAIL_MEMORY,
        publish_rate: float | None = None,
        publish_bytes: float | None = None,
        read_ahead_bytes: int = READ_AHEAD_BYTES,
        shared: bool = False,
        lease: float = SESSION_LEASE,
        listen_url: str | None = None,
        gate: RoundGate | None = None,
    ) -> None:
        self.log = store.streams
        self.max_message_size = max_message_size
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.window = window
        self.read_batch = read_batch
        self.read_ahead_bytes = read_ahead_bytes
        self.publish_rate = publish_rate
        self.publish_bytes = publish_bytes
        self.budget = TailBudget(tail_memory)
        self.channels: dict[str, Channel] = {}  # only those some connection uses
        self.producers: dict[tuple[str, str], StreamConnection] = {}  # the live connection
        self.quotas: dict[str, Quota] = {}  # per namespaced producer id, while not idle
        self.metrics = ServerMetrics()  # build_app puts the app's own here
        self.lease = lease
        self.cluster = ClusterLink(self, listen_url, lease) if shared else None
        if not shared:
            self.log.forget_sessions()  # one node: no connection of an earlier run is live
        self._expiry = Housekeeping(
            self.expire_old,
            age=retention_age,
            what="trimming stream logs",
            errors=(StoreError,),
            gate=gate,
        )

    def authorize(self, principal: Principal, argument: str) -> str | None:
        """Why ``principal`` may not open channel ``argument`` (None: it may), at the upgrade."""
        if principal.may_use_channel(argument):
            return None
        return f"this token does not allow channel {argument!r}"

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one client connection to channel ``argument`` until it ends."""
        self._expiry.ensure_started()
        if self.cluster is not None:
            self.cluster.ensure_started()
        _bound_incoming_frames(connection)
        await StreamConnection(self, connection, argument, principal_of(connection)).run()

    async def acquire(self, name: str) -> Channel:
        """The in-memory state of channel ``name`` for one more connection (loaded if needed)."""
        channel = self.channels.get(name)
        if channel is None:
            head = await asyncio.to_thread(self.log.head, name)
            channel = self.channels.setdefault(name, Channel(name, head, self.budget))
        channel.users += 1
        return channel

    def release(self, channel: Channel) -> None:
        """A connection stopped using ``channel``: evict it when no connection is left."""
        channel.users -= 1
        if channel.users <= 0 and self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
            channel.forget_tail()

    def quota(self, producer: str) -> Quota | None:
        """The publish quota of ``producer`` (None when the server sets none)."""
        if not (self.publish_rate or self.publish_bytes):
            return None
        quota = self.quotas.get(producer)
        if quota is None:
            if len(self.quotas) >= QUOTAS_KEPT:  # amortized: most of them refilled long ago
                self.forget_idle_quotas()
            quota = self.quotas[producer] = Quota(self.publish_rate, self.publish_bytes)
        return quota

    def forget_idle_quotas(self) -> None:
        """Drop quotas that refilled completely: a new one would be the same."""
        for producer in [p for p, q in self.quotas.items() if q.idle()]:
            del self.quotas[producer]

    async def expire_old(self) -> None:
        """Trim every channel's messages older than ``retention_age``."""
        if not self.retention_age:
            return
        before = utcnow() - dt.timedelta(seconds=self.retention_age)
        for name in await asyncio.to_thread(self.log.channels):
            channel = self.channels.get(name)
            if channel is None:  # nobody uses it: trim in the store only, load nothing
                await asyncio.to_thread(self.log.trim, name, before=before)
                continue
            async with channel.lock:
                head = await asyncio.to_thread(self.log.trim, name, before=before)
                if head != channel.head:
                    channel.advance(head)
        if self.cluster is not None:  # rows of producers whose node died before they published
            await asyncio.to_thread(self.log.drop_lapsed_sessions)
        self.forget_idle_quotas()

    async def close(self) -> None:
        """Stop the retention task (connections are closed by the server)."""
        await self._expiry.stop()
        if self.cluster is not None:
            await self.cluster.stop()


class StreamConnection:
    """One client connection to one channel."""

    def __init__(
        self,
        endpoint: StreamEndpoint,
        websocket: ServerConnection,
        name: str,
        principal: Principal,
    ) -> None:
        self.endpoint = endpoint
        self.ws = websocket
        self.name = name
        self.principal = principal
        self.client_id = ""
        self.producer = ""  # client_id in the principal's namespace
        self.instance: str | None = None
        self.session: str | None = None  # this connection's producer session in the store
        self.fenced = False
        self._closing: asyncio.Task[None] | None = None
        self.in_flight: deque[list[int]] = deque()  # [first, last] runs pushed, not yet acked
        self.acked = asyncio.Event()
        # pub batches read but not yet stored: the reader goes on while the appender commits
        self.pubs: ByteQueue[tuple[int, list[str]]] = ByteQueue(endpoint.read_ahead_bytes)

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        channel: Channel | None = None
        try:
            hello = frames.decode(await asyncio.wait_for(self.ws.recv(), HELLO_TIMEOUT))
            channel = await self.endpoint.acquire(self.name)
            position, subscribe = await self.on_hello(channel, hello)
            tasks = [
                asyncio.create_task(self.read()),
                asyncio.create_task(self.append_forever(channel)),
            ]
            if subscribe:
                tasks.append(asyncio.create_task(self.push(channel, position)))
            if self.principal.expires is not None:
                tasks.append(asyncio.create_task(self.expire_at(self.principal.expires)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the first to fail (or the reader, at the end) ends them all
        except ProtocolError as exc:
            log.warning("closing %s on %s: %s", self.ws.remote_address, self.name, exc)
            await self._close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc))
        except Rejected as exc:
            log.warning("refusing %s on %s: %s", self.principal.describe(), self.name, exc)
            await self._close(CloseCode.POLICY_VIOLATION, str(exc))
        except ClientIdConflict as exc:
            log.warning("refusing producer %r on %s: %s", self.producer, self.name, exc)
            await self._close(exc.close_code or CLIENT_ID_CONFLICT, self._conflict_reason(exc))
        except TokenExpired:
            await self._close(TOKEN_EXPIRED, "token expired")
        except TimeoutError:
            await self._close(CloseCode.POLICY_VIOLATION, "no hello in time")
        except ConnectionClosed:
            pass
        except StoreError:
            log.exception("storing messages of %s failed", self.name)
            await self._close(CloseCode.INTERNAL_ERROR, "server could not store messages")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.endpoint.producers.get((self.name, self.producer)) is self:
                del self.endpoint.producers[(self.name, self.producer)]
            if self.session is not None:
                try:
                    await asyncio.to_thread(
                        self.endpoint.log.release_session, self.name, self.producer, self.session
                    )
                except StoreError as exc:
                    log.warning("cannot end producer session on %s: %s", self.name, exc)
            if channel is not None:
                self.endpoint.release(channel)

    async def _close(self, code: int, reason: str) -> None:
        # A close reason is at most 123 bytes of UTF-8.
        await self.ws.close(code, reason.encode()[:123].decode("utf-8", "ignore"))

    def _conflict_reason(self, exc: ClientIdConflict) -> str:
        if exc.close_code == PRODUCER_FENCED or exc.client_id == self.client_id:
            return str(exc)  # our own messages name the client id as the client knows it
        return f"client id {self.client_id!r} belongs to another producer instance"

    async def read(self) -> None:
        async for raw in self.ws:
            message = frames.decode(raw)
            kind = message["type"]
            if kind == "pub":
                if not self.principal.may_publish(self.name):
                    raise Rejected(f"this token does not allow publishing to {self.name!r}")
                await self.pubs.put(self.parse_pub(message), len(raw))
            elif kind == "ack":
                self.on_ack(frames.seq_field(message, "seq"))
            else:
                raise ProtocolError(
                    f"unexpected {kind!r} message", close_code=CloseCode.PROTOCOL_ERROR
                )

    async def on_hello(self, channel: Channel, hello: dict[str, Any]) -> tuple[int, bool]:
        """Check ``hello``, claim the producer id, answer ``welcome``; (position, subscribe)."""
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
        instance = hello.get("instance")
        if instance is not None and not (
            isinstance(instance, str) and 0 < len(instance) <= MAX_INSTANCE
        ):
            raise ProtocolError(
                f"hello: 'instance' must be 1..{MAX_INSTANCE} characters",
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
        if subscribe and not self.principal.may_subscribe(self.name):
            raise Rejected(f"this token does not allow reading {self.name!r}")
        if not subscribe and not self.principal.may_publish(self.name):
            raise Rejected(f"this token does not allow publishing to {self.name!r}")
        self.client_id = client_id
        self.producer = self.principal.namespaced(client_id)
        self.instance = instance
        acked = await self.claim(channel)
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
        return position, subscribe

    async def claim(self, channel: Channel) -> int:
        """Become the live connection of this producer; the highest client seq stored for it.

        Refused (ClientIdConflict) if another instance owns the id, in the store or on a live
        connection on any node; a live connection of the same instance is fenced (on another
        node through the session in the store). Under the channel's lock, so no append of this
        producer is half done while we read what it stored.

        A connection that may not publish only reads what is stored: it claims nothing.
        """
        endpoint = self.endpoint
        key = (self.name, self.producer)
        async with channel.lock:
            holder = endpoint.producers.get(key)
            if holder is not None and holder.instance != self.instance:
                raise ClientIdConflict(
                    f"client id {self.client_id!r} is in use by another live producer",
                    client_id=self.client_id,
                )
            if not self.principal.may_publish(self.name):
                record = await asyncio.to_thread(endpoint.log.producer, self.name, self.producer)
                return (record or ProducerRecord(0, None)).last_seq
            session = uuid.uuid4().hex
            try:
                record = await asyncio.to_thread(
                    endpoint.log.claim_session,
                    self.name,
                    self.producer,
                    instance=self.instance,
                    session=session,
                    lease=endpoint.lease,
                )
            except ProducerLive:
                raise ClientIdConflict(
                    f"client id {self.client_id!r} is in use by another live producer",
                    client_id=self.client_id,
                ) from None
            except OwnedByAnother as exc:
                raise ClientIdConflict(
                    f"client id {self.client_id!r} belongs to another producer instance "
                    f"(the server holds its messages up to seq {exc.held})",
                    client_id=self.client_id,
                ) from None
            self.session = session
            if holder is not None:
                holder.fence()
            endpoint.producers[key] = self
        return record.last_seq

    def fence(self) -> None:
        """A newer connection of this producer took over: store nothing more, close 4410."""
        self.fenced = True
        log.info(
            "%s: producer %r reconnected; fencing its older connection", self.name, self.producer
        )
        reason = f"client id {self.client_id!r}: a newer connection of this producer took over"
        self._closing = asyncio.create_task(self._close(PRODUCER_FENCED, reason))

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
        """Store queued pub batches, all that are waiting in one commit (group commit), and ack.

        With a publish quota, each frame is its own commit, stored once the quota allows it.
        """
        quota = self.endpoint.quota(self.producer)
        while True:
            # One batch per call: its messages are not kept alive while we wait for the next.
            await self._append_next(channel, quota)

    async def _append_next(self, channel: Channel, quota: Quota | None) -> None:
        endpoint = self.endpoint
        first, texts = await self.pubs.get()
        while quota is None and not self.pubs.empty():
            next_first, more = self.pubs.peek()
            if next_first != first + len(texts):  # not a continuation: its own commit
                break
            self.pubs.get_nowait()
            texts.extend(more)  # parse_pub made the list: ours to grow
        if quota is not None:
            delay = quota.delay(len(texts), sum(len(t) for t in texts))
            if delay:
                await asyncio.sleep(delay)
        async with channel.lock:
            if self.fenced:  # a newer connection of this producer took over
                raise ClientIdConflict(
                    "fenced: a newer connection of this producer took over",
                    close_code=PRODUCER_FENCED,
                )
            with endpoint.metrics.commit_seconds.labels("stream").time():
                appended = await asyncio.to_thread(
                    endpoint.log.append,
                    self.name,
                    self.producer,
                    first,
                    texts,
                    instance=self.instance,
                    keep=endpoint.retention_count,
                    session=self.session,
                    lease=endpoint.lease if endpoint.cluster is not None else None,
                )
            endpoint.metrics.stream_appended.inc(appended.count)
            if appended.count:
                channel.remember(appended.first, texts[-appended.count :], appended.timestamp)
                channel.advance(appended.head)
        await self.ws.send(frames.encode({"type": "ack", "seq": appended.stored}))

    async def expire_at(self, expires: float) -> None:
        """End the connection when its token expires (the client reconnects with a new one)."""
        await asyncio.sleep(max(0.0, expires - time.time()))
        raise TokenExpired()

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


def _bound_incoming_frames(connection: ServerConnection) -> None:
    """Let websockets buffer only a few frames of this connection before it stops reading.

    The server's ``max_queue`` suits uploads; stream frames may be 1 MiB each, and the bytes a
    connection can make us hold must stay small. (``recv_messages`` is websockets' frame
    assembler; its high/low water marks are read on every frame.)
    """
    assembler = getattr(connection, "recv_messages", None)
    if assembler is not None and hasattr(assembler, "high"):
        assembler.high, assembler.low = INCOMING_FRAMES, max(1, INCOMING_FRAMES // 4)


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
