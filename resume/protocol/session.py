"""The stream session: seq numbers, cumulative acks, replay and dedup. Sans-I/O.

One :class:`ClientSession` lives as long as a stream client, across any number of connections.
The asyncio shell feeds it what happens (a connection opened or dropped, a message arrived, the
application took a message) and sends the frames it returns; it never does I/O, never sleeps
and never reads the clock, so every interleaving can be tested without sockets.

Wire messages on ``/streams/<channel>`` (JSON text frames)::

    client -> server
      {"type":"hello", "client_id":..., "instance":..., "after": N | "start" | "end",
       "subscribe": bool}
      {"type":"pub", "seq": first, "data": [m1, m2, ...]}        client seqs first, first+1, ...
      {"type":"ack", "seq": n}                                    took server seqs up to n
    server -> client
      {"type":"welcome", "acked": a, "first": f, "last": l, "position": p}
      {"type":"ack", "seq": n}                                    stored client seqs up to n
      {"type":"msgs", "first": s, "data": [...], "ts": [...]}     server seqs s, s+1, ...
      {"type":"gap", "first": a, "last": b}                       a..b were trimmed: not recovered

Outbound: every message gets the next client seq and stays buffered until the server's
cumulative ack covers it; after a reconnect the ``welcome`` says what the server already
stored and everything after it is sent again. The server drops anything at or below what it
stored for this client id, so nothing is stored twice.

Producer identity: ``hello.instance`` names this producer instance (a nonce kept with the seq
counter), so the server refuses another instance that presents the same client id. And the
server can never legitimately hold more of this producer's messages than it ever numbered
(what earlier processes gave out, plus what this one wrote): a ``welcome`` that says otherwise
means another producer used the id, and is a :class:`ClientIdConflict`, never silently taken
as an ack of messages the server does not have.

Inbound: the session remembers the last server seq it handed to the application; anything at
or below it is a duplicate and dropped. ``hello.after`` asks the server to replay from there.
Seqs that can never come (trimmed from the log) are reported as gaps, never skipped silently.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from resume.errors import ClientIdConflict, ProtocolError, StreamReset
from resume.protocol.frames import CloseCode, seq_field


class SessionState(enum.StrEnum):
    """Where the session is with respect to a connection."""

    DISCONNECTED = "disconnected"  # no connection; sends are buffered
    HANDSHAKING = "handshaking"  # hello sent, waiting for welcome
    OPEN = "open"  # welcome received; messages flow both ways
    CLOSED = "closed"  # closed by the application; no more sends
    ERROR = "error"  # the peer broke the protocol; nothing more is accepted


class Start(enum.StrEnum):
    """Where a consumer without a stored position starts."""

    START = "start"  # the oldest message the server still retains
    END = "end"  # only messages published after it subscribed


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the application sees it."""

    seq: int  # server seq: position in the channel's log
    data: Any
    timestamp: float | None = None  # when the server stored it (Unix time)


@dataclass(frozen=True, slots=True)
class Gap:
    """Server seqs ``first..last`` were trimmed before this consumer took them."""

    first: int
    last: int


@dataclass(slots=True)
class Received:
    """What one incoming frame produced: messages and gaps, in the order to report them."""

    events: list[Message | Gap] = field(default_factory=list)
    duplicates: int = 0
    newly_acked: int = 0  # outbound messages the server confirmed with this frame
    welcomed: bool = False

    @property
    def messages(self) -> list[Message]:
        """The new messages, in seq order."""
        return [e for e in self.events if isinstance(e, Message)]

    @property
    def gaps(self) -> list[Gap]:
        """The ranges reported as not recovered."""
        return [e for e in self.events if isinstance(e, Gap)]


def _protocol_error(message: str) -> ProtocolError:
    return ProtocolError(message, close_code=CloseCode.PROTOCOL_ERROR)


class ClientSession:
    """Client-side seq/ack/replay state for one channel.

    ``after`` is the last server seq this consumer already took (from a durable cursor), or a
    :class:`Start` for a consumer without one. ``pending`` are outbound messages a previous
    process accepted but the server never confirmed (a durable outbox); ``last_seq`` is the
    highest client seq ever given out, so seqs are never reused. ``instance`` is the producer
    instance nonce sent in ``hello`` (None: the server cannot tell instances apart).
    """

    def __init__(
        self,
        client_id: str,
        *,
        instance: str | None = None,
        after: int | Start = Start.END,
        pending: Iterable[tuple[int, Any]] = (),
        last_seq: int = 0,
        acked: int = 0,
        max_batch: int = 2048,
        max_batch_bytes: int = 512 * 1024,
    ) -> None:
        self.client_id = client_id
        self.instance = instance
        self.state = SessionState.DISCONNECTED
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        # (client seq, data, size in bytes as the shell encodes it)
        self._outbox: deque[tuple[int, Any, int]] = deque(
            sorted((seq, data, _size(data)) for seq, data in pending)
        )
        self.last_seq = max([last_seq, acked, *(item[0] for item in self._outbox)])
        self.unacked_bytes = sum(item[2] for item in self._outbox)
        # The most the server can hold from us: every seq earlier processes gave out (they may
        # have written them all), plus what this one wrote. More in a welcome: another producer.
        self._may_be_stored = self.last_seq
        self.acked = acked  # highest client seq the server confirmed
        self._written = acked  # highest client seq written on the current connection
        self._after: int | Start = after
        self.position: int | None = after if isinstance(after, int) else None
        self.taken = self.position or 0  # highest server seq the application took
        self._acked_in = self.taken  # highest server seq we acked to the server
        self._error: ProtocolError | None = None

    # -- outbound --------------------------------------------------------------------------------

    def send(self, data: Any, size: int | None = None) -> int:
        """Accept one outbound message; returns its client seq.

        ``size`` is the message's encoded size, used to keep ``pub`` frames under
        ``max_batch_bytes`` (by default the length of ``data`` if it is a string, else 1).
        """
        self._check_usable()
        if self.state is SessionState.CLOSED:
            raise _protocol_error("session is closed")
        self.last_seq += 1
        size = _size(data) if size is None else size
        self._outbox.append((self.last_seq, data, size))
        self.unacked_bytes += size
        return self.last_seq

    @property
    def unwritten(self) -> int:
        """Outbound messages accepted but not yet written on the current connection."""
        return self.last_seq - self._written

    @property
    def in_flight(self) -> int:
        """Outbound messages written on a connection and not yet confirmed."""
        return sum(1 for item in self._outbox if item[0] <= self._written)

    @property
    def unacked(self) -> int:
        """Outbound messages not yet confirmed by the server (buffered or in flight)."""
        return len(self._outbox)

    def outgoing(self) -> list[dict[str, Any]]:
        """``pub`` frames for messages not yet written on this connection, in seq order."""
        if self.state is not SessionState.OPEN:
            return []
        frames: list[dict[str, Any]] = []
        batch: list[Any] = []
        first = batch_bytes = 0
        # outbox seqs are consecutive: skip what was written without looking at it
        start = self._written + 1 - self._outbox[0][0] if self._outbox else 0
        for seq, data, size in itertools.islice(self._outbox, max(start, 0), None):
            if batch and (
                len(batch) >= self.max_batch or batch_bytes + size > self.max_batch_bytes
            ):
                frames.append({"type": "pub", "seq": first, "data": batch})
                batch, batch_bytes = [], 0
            if not batch:
                first = seq
            batch.append(data)
            batch_bytes += size + 1
        if batch:
            frames.append({"type": "pub", "seq": first, "data": batch})
        if frames:
            self._written = self._outbox[-1][0]
            self._may_be_stored = max(self._may_be_stored, self._written)
        return frames

    # -- connection lifecycle --------------------------------------------------------------------

    def connected(self) -> dict[str, Any]:
        """A connection opened: the hello frame to send first."""
        self._check_usable()
        if self.state is SessionState.CLOSED:
            raise _protocol_error("session is closed")
        self.state = SessionState.HANDSHAKING
        self._written = self.acked
        after: int | str = self.position if self.position is not None else str(self._after)
        hello: dict[str, Any] = {"type": "hello", "client_id": self.client_id, "after": after}
        if self.instance is not None:
            hello["instance"] = self.instance
        return hello

    def disconnected(self) -> None:
        """The connection dropped: everything unacked will be written again on the next one."""
        if self.state in (SessionState.HANDSHAKING, SessionState.OPEN):
            self.state = SessionState.DISCONNECTED

    def close(self) -> None:
        """No more sends; the shell flushes what is buffered and closes the connection."""
        self.state = SessionState.CLOSED if self.state is not SessionState.ERROR else self.state

    # -- inbound ---------------------------------------------------------------------------------

    def receive(self, message: dict[str, Any]) -> Received:
        """Apply one server frame; returns the messages to hand to the application and more."""
        self._check_usable()
        try:
            return self._receive(message)
        except ProtocolError as exc:
            self._error = exc
            self.state = SessionState.ERROR
            raise

    def _receive(self, message: dict[str, Any]) -> Received:
        kind = message.get("type")
        result = Received()
        if kind == "welcome":
            if self.state is not SessionState.HANDSHAKING:
                raise _protocol_error(f"welcome while {self.state}")
            acked = seq_field(message, "acked")
            if acked > self._may_be_stored:
                raise ClientIdConflict(
                    f"the server holds messages up to seq {acked} from client id "
                    f"{self.client_id!r}, but this producer only ever numbered "
                    f"{self._may_be_stored}: another producer used this id (or this producer's "
                    "store is older than the server's); give each producer its own client id",
                    client_id=self.client_id,
                )
            result.newly_acked = self._confirm(acked)
            position = seq_field(message, "position")
            last = seq_field(message, "last")
            if self.position is not None and self.position > last:
                raise StreamReset(
                    f"the server's log ends at seq {last} but this consumer already took "
                    f"{self.position}: the server's state was reset; reset the consumer's "
                    "position to start over",
                    position=self.position,
                    last=last,
                )
            if self.position is None:  # a new consumer: the server says where it starts
                self.position = self.taken = self._acked_in = position
            self.state = SessionState.OPEN
            result.welcomed = True
        elif self.state is not SessionState.OPEN and self.state is not SessionState.CLOSED:
            raise _protocol_error(f"{kind!r} before welcome")
        elif kind == "ack":
            result.newly_acked = self._confirm(seq_field(message, "seq"))
        elif kind == "msgs":
            first = seq_field(message, "first")
            data = message.get("data")
            stamps = message.get("ts")
            if not isinstance(data, list) or not data:
                raise _protocol_error("'msgs': 'data' must be a non-empty list")
            if not isinstance(stamps, list) or len(stamps) != len(data):
                raise _protocol_error("'msgs': 'ts' must list one timestamp per message")
            for offset, item in enumerate(data):
                self._deliver(first + offset, item, stamps[offset], result)
        elif kind == "gap":
            first, last = seq_field(message, "first"), seq_field(message, "last")
            if last < first:
                raise _protocol_error("'gap': last before first")
            assert self.position is not None
            if last > self.position:
                result.events.append(Gap(max(first, self.position + 1), last))
                self.position = last
        else:
            raise _protocol_error(f"unknown message type {kind!r}")
        return result

    def _deliver(self, seq: int, data: Any, timestamp: Any, result: Received) -> None:
        assert self.position is not None
        if seq <= self.position:  # replayed again after a reconnect: already delivered
            result.duplicates += 1
            return
        if seq > self.position + 1:  # trimmed between two messages we did get
            result.events.append(Gap(self.position + 1, seq - 1))
        self.position = seq
        stamp = float(timestamp) if isinstance(timestamp, int | float) else None
        result.events.append(Message(seq, data, stamp))

    def _confirm(self, seq: int) -> int:
        if seq > self.last_seq:
            raise _protocol_error(f"server acknowledged seq {seq}, we only sent {self.last_seq}")
        confirmed = 0
        while self._outbox and self._outbox[0][0] <= seq:
            self.unacked_bytes -= self._outbox.popleft()[2]
            confirmed += 1
        self.acked = max(self.acked, seq)
        self._written = max(self._written, self.acked)
        return confirmed

    # -- acknowledging what the application took -------------------------------------------------

    def take(self, seq: int) -> None:
        """The application is done with every message up to ``seq``."""
        if self.position is not None and seq > self.position:
            raise ValueError(f"cannot take seq {seq}: only {self.position} was delivered")
        self.taken = max(self.taken, seq)

    def ack_frame(self) -> dict[str, Any] | None:
        """A cumulative ack for what the application took since the last one, if anything."""
        if self.state is not SessionState.OPEN or self.taken <= self._acked_in:
            return None
        self._acked_in = self.taken
        return {"type": "ack", "seq": self.taken}

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ProtocolError(
                f"session is unusable after a protocol error: {self._error}",
                close_code=self._error.close_code,
            )


def _size(data: Any) -> int:
    return len(data) if isinstance(data, str | bytes) else 1
