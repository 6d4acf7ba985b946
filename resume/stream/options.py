"""What a stream client can be told, what it counts, what it reports, and its own errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from resume.errors import ResumeError, UsageError
from resume.net.backoff import Backoff
from resume.net.connector import ConnectOptions
from resume.protocol.session import Gap

MAX_MESSAGE_BYTES = 1_000_000  # one encoded message; the server's default frame limit is 1 MiB


class BufferFull(ResumeError):
    """``send()`` found the outbound buffer full and the client was told not to wait."""


class ClientClosed(ResumeError):
    """The client was closed; it takes no more messages."""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """Something the client did: for callbacks, logs and tests.

    ``kind`` is one of ``connected``, ``disconnected``, ``retrying``, ``gave_up`` (from the
    reconnect loop), ``replay`` (``count`` unacknowledged messages are sent again after a
    reconnect) or ``gap`` (``gap`` was trimmed on the server: not recovered).
    """

    kind: Literal["connected", "disconnected", "retrying", "gave_up", "replay", "gap"]
    attempt: int = 0
    error: ResumeError | None = None
    delay: float | None = None
    count: int = 0
    gap: Gap | None = None


@dataclass(slots=True)
class StreamStats:
    """Counters of one client."""

    connects: int = 0
    reconnects: int = 0
    sent: int = 0  # messages send() accepted
    acked: int = 0  # of those, confirmed stored by the server
    replayed: int = 0  # messages written again after a reconnect
    received: int = 0  # messages handed to the application
    duplicates: int = 0  # messages received again and dropped by seq
    gaps: int = 0  # ranges reported as not recovered
    buffered: int = 0  # accepted, not yet confirmed (right now)
    buffered_bytes: int = 0  # their encoded size


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Tuning of a :class:`resume.stream.client.StreamClient`; the defaults suit most uses.

    Both buffers are bounded in bytes as well as in messages: outbound, what was accepted and
    not yet confirmed (``max_buffered``, ``max_buffered_bytes``); inbound, what was received and
    not yet taken by the application (``max_received``, ``max_received_bytes``; beyond them the
    client stops reading the socket). A single message larger than a byte bound still passes,
    alone.
    """

    connect: ConnectOptions = field(default_factory=lambda: ConnectOptions(max_size=4 * 2**20))
    backoff: Backoff = field(default_factory=Backoff)
    max_buffered: int = 10_000  # outbound messages held until acked; then send() waits/raises
    max_buffered_bytes: int = 16 * 2**20  # ... and their encoded bytes
    overflow: Literal["wait", "raise"] = "wait"
    max_received: int = 8192  # received messages not yet taken; then the client stops reading
    max_received_bytes: int = 8 * 2**20  # ... and their bytes as received
    handshake_timeout: float = 10.0  # hello sent, no welcome: reconnect
    ack_timeout: float = 30.0  # data sent, no ack for this long: reconnect
    close_timeout: float = 10.0  # how long close() waits for in-flight acks
    max_attempts: int | None = None  # consecutive failures before giving up (None: forever)
    give_up_after: float | None = None  # seconds of consecutive failure before giving up
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        for name in ("max_buffered", "max_buffered_bytes", "max_received", "max_received_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.overflow not in ("wait", "raise"):
            raise UsageError("overflow must be 'wait' or 'raise'")
