"""The reconnecting stream client that applications embed.

::

    async with StreamClient("ws://127.0.0.1:8765/streams/orders", consumer="billing") as client:
        await client.send({"order": 42})          # buffered, numbered, replayed until acked
        async for message in client:              # each message once, in order
            handle(message.data)                  # taken when you ask for the next one

The client keeps one WebSocket session alive across drops with the shared reconnect loop
(:class:`resume.net.connector.Reconnector`: exponential backoff with full jitter, a reset
only after a connection stayed up, heartbeats, fatal errors raised at once). The seq/ack/replay
logic is the sans-I/O :class:`resume.protocol.session.ClientSession`; this module moves frames
and time through it, and hands sending to :class:`resume.stream.outbound.Outbound` and receiving
to :class:`resume.stream.inbound.Inbound`.

Durable mode (``store=`` and a stable ``client_id``): ``send()`` returns once the message is in
the local outbox, and a restarted process resends what the server never confirmed; with a
``consumer`` name the position is saved each time the application takes a message, so a
restarted consumer continues after the last message it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection

from resume.errors import (
    AckTimeout,
    ConnectionLost,
    HandshakeTimeout,
    ProtocolError,
    ResumeError,
    UsageError,
    WaitTimeout,
)
from resume.net.connector import ConnectionEvent, HeadersFactory, Reconnector, UrlFactory
from resume.protocol import frames
from resume.protocol.frames import channel_problem
from resume.protocol.session import ClientSession, Gap, Message, Received, SessionState, Start
from resume.store import Store
from resume.stream.inbound import Inbound
from resume.stream.options import (
    MAX_MESSAGE_BYTES,
    BufferFull,
    ClientClosed,
    StreamEvent,
    StreamOptions,
    StreamStats,
)
from resume.stream.outbound import Outbound

log = logging.getLogger("resume.stream")

MAX_QUEUED = StreamOptions().max_received  # the default bound of received, not taken messages


class StreamClient:
    """A reconnecting, replaying client for one channel (``ws://host:port/streams/NAME``).

    ``key`` names this stream's durable state (default: the URL). ``client_id`` names this
    producer to the server (dedup of replays): a stable one needs ``store`` (the seq counter
    must survive the process); without one a random id is made per client. Each producer
    (each process with its own store) needs its own client id: the server refuses a second one
    with :class:`resume.errors.ClientIdConflict`. ``consumer`` names the position kept in
    ``store``. ``start`` is where a consumer without a stored position begins: ``"end"`` (only
    new messages) or ``"start"`` (the oldest the server still keeps). ``subscribe=False`` makes
    a producer that receives nothing. ``on_gap``: called for ranges the server trimmed before
    we took them; without it the iterator raises :class:`resume.errors.GapError` once per gap
    (you may catch it and go on iterating).
    """

    def __init__(
        self,
        url: str | UrlFactory,
        *,
        client_id: str | None = None,
        consumer: str | None = None,
        subscribe: bool = True,
        start: Literal["start", "end"] = "end",
        store: Store | None = None,
        key: str | None = None,
        token: str | None = None,
        headers: HeadersFactory | None = None,
        options: StreamOptions | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.options = options or StreamOptions()
        if store is not None and client_id is None and consumer is None:
            raise UsageError(
                "durable mode (store=...) needs a client_id (for sends) or a consumer (for "
                "the position)"
            )
        if start not in ("start", "end"):
            raise UsageError(f"start must be 'start' or 'end', got {start!r}")
        if consumer is not None and store is None:
            raise UsageError(
                "a consumer name keeps its position in a store: pass store=open_store(...), or "
                "omit consumer= to read without a stored position"
            )
        if isinstance(url, str):
            problem = channel_problem(url)
            if problem:
                raise UsageError(f"not a channel URL: {url!r} ({problem})")
        self.url = url
        if key is None and not isinstance(url, str):
            raise UsageError("with a URL factory, give key= (the name of this stream's state)")
        self.key = key if key is not None else str(url)
        if client_id is not None and not 0 < len(client_id) <= 64:
            raise UsageError("client_id must be 1..64 characters")
        if client_id is not None and store is None:
            # The server drops client seqs it already stored for an id. A restarted process
            # without the stored seq counter would start again at 1 and be dropped as replays.
            raise UsageError(
                "a client_id without store= would reuse seqs after a restart (and the server "
                "would drop them as replays): pass store=open_store(...) or omit client_id"
            )
        self._random_id = client_id is None
        self.client_id = client_id or uuid.uuid4().hex[:16]
        self.consumer = consumer
        self.subscribe = subscribe
        self.start_at = Start(start)
        self.store = store
        self.on_event = on_event
        self.stats = StreamStats()
        connect = self.options.connect
        if token is not None:
            connect = dataclasses.replace(connect, token=token)
        self._reconnector = Reconnector(
            url,
            options=connect,
            backoff=self.options.backoff,
            headers=headers,
            max_attempts=self.options.max_attempts,
            give_up_after=self.options.give_up_after,
            on_event=self._connection_event,
            sleep=sleep,
            app_handshake=True,
        )
        self.session: ClientSession | None = None
        self._wake = asyncio.Event()  # something to write
        self._ready = asyncio.Event()  # welcomed once, or failed
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._waiting_since: float | None = None  # unacked data written, no ack since
        self._outbound = Outbound(
            client_id=self.client_id,
            key=self.key,
            store=store,
            durable=store is not None and not self._random_id,
            options=self.options,
            stats=self.stats,
            wake=self._wake,
            failed=lambda: self._error,
            fail=self._fail,
        )
        self._inbound = Inbound(
            consumer=consumer,
            key=self.key,
            store=store,
            options=self.options,
            stats=self.stats,
            wake=self._wake,
            failed=lambda: self._error,
            on_gap=on_gap,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> StreamClient:
        """Load the durable state (if any) and start connecting in the background."""
        if self._task is not None:
            return self
        outbox = await self._outbound.open()
        cursor = await self._inbound.position()
        self.session = ClientSession(
            self.client_id,
            # a random id is its own producer; a durable one is the instance in its store
            instance=outbox.instance or uuid.uuid4().hex,
            after=self.start_at if cursor is None else cursor,
            pending=outbox.pending,
            last_seq=outbox.last_seq,
            acked=outbox.acked,
            max_batch_bytes=min(512 * 1024, self.options.max_message_bytes),
        )
        self._outbound.session = self._inbound.session = self.session
        self.stats.buffered = self.session.unacked
        self.stats.buffered_bytes = self.session.unacked_bytes
        self._task = asyncio.create_task(self._run(), name=f"resume-stream {self.key}")
        return self

    async def __aenter__(self) -> StreamClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        # The held message is not taken: leaving the block (a break out of `async for`, an
        # exception) may come before the application processed it. commit() first if it did.
        await self.close(take_held=False)

    async def close(self, *, take_held: bool = False, timeout: float | None = None) -> int:
        """Stop taking messages, wait (bounded) for in-flight acks, close with 1000.

        ``take_held=True`` counts the message the iterator last returned as taken (the same
        as :meth:`commit` first). Returns how many sent messages the server has not confirmed
        (0 is a clean close; in durable mode they stay in the outbox for the next run).
        """
        if self._task is None:
            return 0
        self._closing = self._outbound.closing = True
        if take_held and self._error is None:
            await self._inbound.commit()
        self._inbound.held = None
        self._wake.set()
        session = self.session
        assert session is not None
        if session.unacked == 0 and not self._connected():
            self._task.cancel()
        try:
            await asyncio.wait_for(
                asyncio.shield(self._task), timeout or self.options.close_timeout
            )
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except ResumeError:
            pass  # already recorded in self._error
        await asyncio.gather(self._task, return_exceptions=True)
        self._inbound.end()
        unconfirmed = session.unacked
        if unconfirmed and self._error is None:  # after a fatal error, the error says it all
            log.warning("closed with %d message(s) not confirmed by the server", unconfirmed)
        return unconfirmed

    async def wait(self) -> None:
        """Return when the client stops: raises its fatal error, returns after close()."""
        if self._task is None:
            raise UsageError("start the client first (await client.start() or async with)")
        await asyncio.wait([self._task])  # not gather: cancelling us must not cancel it
        self._raise_if_failed()

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until the server has welcomed this client once; raises its fatal error."""
        self._usable_session()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise WaitTimeout(
                f"no welcome from the server at {self.key} within {timeout:g}s "
                f"({self.stats.connects} connection(s) made, {self._reconnector.stats.failures} "
                "failed)"
            ) from None
        self._raise_if_failed()

    @property
    def error(self) -> BaseException | None:
        """The fatal error that stopped the client, if any."""
        return self._error

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, data: Any) -> int:
        """Queue one JSON-serializable message; returns its client seq.

        Returns once the message is buffered (durable mode: once it is in the local store).
        Waits while the buffer is full (or raises :class:`BufferFull` with
        ``overflow="raise"``); raises the client's fatal error if it has one. Cancelled, it
        either accepted the message (then it is sent) or not (then it never is): see
        :mod:`resume.stream.outbound`.
        """
        [seq] = await self.send_many([data])
        return seq

    async def send_many(self, items: Iterable[Any]) -> list[int]:
        """Queue several messages at once (one store commit in durable mode)."""
        self._usable_session()
        if self.store is not None and self._random_id:
            raise UsageError("durable sends need a stable client_id; this client has none")
        return await self._outbound.send_many(items)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server confirmed every message sent so far (:class:`WaitTimeout`
        after ``timeout`` seconds)."""
        await self._outbound.flush(timeout)

    def check_message(self, data: Any) -> None:
        """Raise :class:`UsageError` if ``data`` cannot be sent (not JSON, NaN, too large)."""
        self._outbound.encode(data)

    # -- receiving -------------------------------------------------------------------------------

    def __aiter__(self) -> StreamClient:
        return self

    async def __anext__(self) -> Message:
        """The next message; asking for it counts the previous one as taken."""
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def receive(self) -> Message | None:
        """The next message, or None once the client is closed (raises its fatal error)."""
        return await self._inbound.receive()

    async def commit(self) -> None:
        """Count the message last returned as taken now (it otherwise is at the next one)."""
        await self._inbound.commit()

    # -- the connection --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnector.run(self._connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # kept, and raised to the application by every later call
            self._error = exc
            log.debug("stream %s stopped: %s", self.key, exc)
        finally:
            self._ready.set()
            self._inbound.end()
            await self._outbound.notify()

    def _fail(self, error: BaseException) -> None:
        """A fatal error found outside the connection (e.g. by send()): stop the client."""
        if self._error is None:
            self._error = error
        if self._task is not None:
            self._task.cancel()

    async def _connection(self, ws: ClientConnection) -> None:
        session = self.session
        assert session is not None
        try:
            resend = session.in_flight  # written on the last connection, never confirmed
            hello = session.connected()
            hello["subscribe"] = self.subscribe
            await ws.send(frames.encode(hello))
            try:
                raw = await asyncio.wait_for(ws.recv(), self.options.handshake_timeout)
            except TimeoutError:
                raise HandshakeTimeout("the server did not answer hello") from None
            result = session.receive(frames.decode(raw))
            if not result.welcomed:
                raise ProtocolError("expected welcome", close_code=frames.CloseCode.PROTOCOL_ERROR)
            self._reconnector.established()
            self._ready.set()
            await self._apply(result, len(raw))
            resend = min(resend, session.unacked)  # the welcome may confirm some of them
            if resend:
                self.stats.replayed += resend
                self._emit(StreamEvent("replay", count=resend))
            self._waiting_since = None
            reader = asyncio.create_task(self._read(ws))
            writer = asyncio.create_task(self._write(ws))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)
        finally:
            session.disconnected()

    async def _read(self, ws: ClientConnection) -> None:
        session = self.session
        assert session is not None
        room = self._inbound.room
        async for raw in ws:
            await self._apply(session.receive(frames.decode(raw)), len(raw))
            if not room.is_set():  # the application is behind: stop reading until it catches up
                await room.wait()
                if self._waiting_since is not None:  # acks could not be read meanwhile
                    self._waiting_since = time.monotonic()
        # websockets ends the iteration quietly on a 1000/1001 close: for us that is a drop
        code = ws.close_code
        raise ConnectionLost(f"server closed the connection ({code})", close_code=code)

    async def _apply(self, result: Received, nbytes: int) -> None:
        session = self.session
        assert session is not None
        if result.newly_acked:
            await self._outbound.confirmed(session, result.newly_acked)
            self._waiting_since = time.monotonic() if session.unacked else None
        self.stats.duplicates += result.duplicates
        for event in result.events:
            if isinstance(event, Gap):
                self.stats.gaps += 1
                self._emit(StreamEvent("gap", gap=event))
        self._inbound.put(result.events, nbytes)

    async def _write(self, ws: ClientConnection) -> None:
        session = self.session
        assert session is not None
        timeout = self.options.ack_timeout
        while True:
            self._wake.clear()
            out = session.outgoing()
            for frame in out:
                await ws.send(_pub_frame(frame))
            if out and self._waiting_since is None:
                self._waiting_since = time.monotonic()
            ack = session.ack_frame()
            if ack is not None:
                await ws.send(frames.encode(ack))
            if self._closing and session.unacked == 0:
                return
            if self._waiting_since is not None and self._inbound.room.is_set():
                waited = time.monotonic() - self._waiting_since
                if waited > timeout:
                    raise AckTimeout(f"no acknowledgement from the server for {waited:.0f}s")
                budget = timeout - waited + 0.01
            else:
                budget = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), budget)

    def _connected(self) -> bool:
        return self.session is not None and self.session.state in (
            SessionState.OPEN,
            SessionState.HANDSHAKING,
        )

    # -- errors and events -----------------------------------------------------------------------

    def _usable_session(self) -> ClientSession:
        self._raise_if_failed()
        if self.session is None:
            raise UsageError("start the client first (await client.start() or async with)")
        return self.session

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _connection_event(self, event: ConnectionEvent) -> None:
        counted = self._reconnector.stats  # the reconnect loop counts connections already
        self.stats.connects, self.stats.reconnects = counted.connects, counted.reconnects
        self._emit(StreamEvent(event.kind, event.attempt, event.error, event.delay))

    def _emit(self, event: StreamEvent) -> None:
        # Structured: every record carries the stream, the event and its numbers as fields
        # (record.stream, record.event, ...) for JSON log formatters; the message reads alone.
        fields = {
            "stream": self.key,
            "event": event.kind,
            "attempt": event.attempt,
            "delay": event.delay,
            "count": event.count,
            "error": str(event.error) if event.error else None,
        }
        detail: object = event.error or (f"{event.count} message(s)" if event.count else "")
        level = logging.DEBUG if event.kind == "connected" and not event.attempt else logging.INFO
        if event.gap is not None:
            fields.update(first=event.gap.first, last=event.gap.last)
            detail = f"seqs {event.gap.first}..{event.gap.last} not recovered"
            level = logging.WARNING
        log.log(level, "stream %s: %s %s", self.key, event.kind, detail, extra=fields)
        if self.on_event is not None:
            self.on_event(event)


def _pub_frame(frame: Mapping[str, Any]) -> str:
    # Messages were encoded once by send(): splice the JSON texts in.
    return f'{{"type":"pub","seq":{frame["seq"]},"data":[{",".join(frame["data"])}]}}'


__all__ = [
    "MAX_MESSAGE_BYTES",
    "BufferFull",
    "ClientClosed",
    "StreamClient",
    "StreamEvent",
    "StreamOptions",
    "StreamStats",
]
