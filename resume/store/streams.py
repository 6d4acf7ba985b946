"""Persistence of streams: the server's channel logs, and a client's outbox and cursors.

Server side (:class:`StreamLogRepository`): every published message is appended to its
channel's log with the next server seq, deduplicated by (client id, client seq), in one
transaction per batch. The server's store runs with ``synchronous=FULL``: when
:meth:`StreamLogRepository.append` returns, the batch is on disk, and only then is it acked.

Client side (:class:`StreamClientRepository`): the durable mode of the stream client keeps the
messages ``send()`` accepted until the server confirms them, the last seq given out (so seqs
are never reused), and each named consumer's position in each channel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Table,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Compiled, CursorResult
from sqlalchemy.sql import Executable

from resume.errors import ProtocolError
from resume.store.errors import store_errors
from resume.store.models import (
    ConsumerCursor,
    OutboxMessage,
    OutboxSequence,
    StreamChannel,
    StreamMessage,
    StreamProducer,
    utcnow,
)

CHANNELS = StreamChannel.__table__
MESSAGES = StreamMessage.__table__
PRODUCERS = StreamProducer.__table__
OUTBOX = OutboxMessage.__table__
SEQUENCES = OutboxSequence.__table__
CURSORS = ConsumerCursor.__table__

EPOCH = dt.datetime(1970, 1, 1)


def unix_time(timestamp: dt.datetime) -> float:
    """A naive-UTC timestamp column as Unix time."""
    return (timestamp - EPOCH).total_seconds()


@dataclass(frozen=True, slots=True)
class ChannelHead:
    """The retained range of one channel: seqs ``first..last`` (empty if first > last)."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Appended:
    """The outcome of one :meth:`StreamLogRepository.append`."""

    stored: int  # the highest client seq now stored for this producer (what to ack)
    first: int  # server seq of the first newly stored message (0 if none)
    count: int  # how many were newly stored (the rest were duplicates)
    head: ChannelHead
    timestamp: float = 0.0  # when they were stored (Unix time)


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """One message of a channel's log; ``data`` is its JSON text."""

    seq: int
    data: str
    timestamp: float


class _DriverStatement:
    """A statement compiled once per dialect and handed to the driver as it is.

    SQLAlchemy's per-row parameter processing was half the cost of storing a batch of log rows
    (and most of a cursor write). Here rows are plain dicts turned into the dialect's parameter
    form, and values that need conversion (timestamps) are converted once by the caller with
    :func:`_driver_time`, so the SQL stays dialect-neutral.
    """

    def __init__(self, build: Callable[[], Executable]) -> None:
        self.build = build
        self.compiled: dict[str, Compiled] = {}

    def execute(self, conn: Connection, rows: list[dict[str, Any]]) -> CursorResult[Any]:
        """Run for one row (execute) or many (executemany)."""
        dialect = conn.dialect
        compiled = self.compiled.get(dialect.name)
        if compiled is None:
            compiled = self.compiled.setdefault(dialect.name, self.build().compile(dialect=dialect))
        if compiled.positional:
            names = compiled.positiontup or ()
            params: list[Any] = [tuple(row[name] for name in names) for row in rows]
        else:
            params = rows
        return conn.exec_driver_sql(str(compiled), params[0] if len(params) == 1 else params)


def _driver_time(conn: Connection, now: dt.datetime) -> Any:
    """``now`` as the driver takes a timestamp column's value on this connection's dialect."""
    convert = DateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return convert(now) if convert else now


_INSERT_MESSAGES = _DriverStatement(MESSAGES.insert)
_UPDATE_CURSOR = _DriverStatement(
    lambda: (
        update(CURSORS)
        .where(
            CURSORS.c.consumer == bindparam("k_consumer"),
            CURSORS.c.channel == bindparam("k_channel"),
        )
        .values(seq=bindparam("seq"), timestamp=bindparam("timestamp"))
    )
)


def _upsert(conn: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Update the row with primary key ``key``, or insert it (dialect-neutral, in one txn)."""
    where = [table.c[name] == value for name, value in key.items()]
    if not conn.execute(update(table).where(*where).values(**values)).rowcount:
        conn.execute(table.insert().values(**key, **values))


class StreamLogRepository:
    """The server's channel logs; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self, channel: str) -> ChannelHead:
        """The retained range of ``channel`` (``1..0`` for a channel never published to)."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(
                select(CHANNELS.c.first_seq, CHANNELS.c.last_seq).where(
                    CHANNELS.c.channel == channel
                )
            ).first()
        return ChannelHead(row.first_seq, row.last_seq) if row else ChannelHead(1, 0)

    def producer_seq(self, channel: str, client_id: str) -> int:
        """The highest client seq stored for ``client_id`` in ``channel`` (0 if none)."""
        with store_errors(), self.engine.begin() as conn:
            value = conn.execute(
                select(PRODUCERS.c.last_seq).where(
                    PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == client_id
                )
            ).scalar()
        return int(value or 0)

    def append(
        self,
        channel: str,
        client_id: str,
        first_seq: int,
        items: Sequence[str],
        *,
        keep: int | None = None,
    ) -> Appended:
        """Store client seqs ``first_seq, first_seq+1, ...`` not stored before, in one commit.

        Messages at or below what is already stored for this producer are duplicates (a replay
        after a reconnect) and skipped. A batch that starts beyond the next expected client seq
        would leave a hole: that is a protocol violation, and nothing is stored. With ``keep``,
        the oldest messages beyond that many are trimmed in the same commit.
        """
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            stored = conn.execute(
                select(PRODUCERS.c.last_seq).where(
                    PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == client_id
                )
            ).scalar()
            head_row = conn.execute(
                select(CHANNELS.c.first_seq, CHANNELS.c.last_seq).where(
                    CHANNELS.c.channel == channel
                )
            ).first()
            already = int(stored or 0)
            if first_seq > already + 1:
                raise ProtocolError(
                    f"client {client_id!r} published seq {first_seq} but {already + 1} was next",
                    close_code=1002,
                )
            new = list(items[max(0, already + 1 - first_seq) :])
            first, last = (head_row.first_seq, head_row.last_seq) if head_row else (1, 0)
            if not new:
                return Appended(already, 0, 0, ChannelHead(first, last))
            producer_last = first_seq + len(items) - 1
            stamp = _driver_time(conn, now)
            first_producer_seq = producer_last - len(new) + 1
            _INSERT_MESSAGES.execute(
                conn,
                [
                    {
                        "channel": channel,
                        "seq": last + 1 + i,
                        "producer": client_id,
                        "producer_seq": first_producer_seq + i,
                        "data": data,
                        "timestamp": stamp,
                    }
                    for i, data in enumerate(new)
                ],
            )
            new_last = last + len(new)
            if keep is not None and new_last - first + 1 > keep:
                first = new_last - keep + 1
                conn.execute(
                    delete(MESSAGES).where(MESSAGES.c.channel == channel, MESSAGES.c.seq < first)
                )
            _upsert(
                conn,
                CHANNELS,
                {"channel": channel},
                {"first_seq": first, "last_seq": new_last, "timestamp": now},
            )
            _upsert(
                conn,
                PRODUCERS,
                {"channel": channel, "client_id": client_id},
                {"last_seq": producer_last, "timestamp": now},
            )
        return Appended(
            producer_last, last + 1, len(new), ChannelHead(first, new_last), unix_time(now)
        )

    def read(self, channel: str, after: int, limit: int) -> list[LoggedMessage]:
        """Up to ``limit`` retained messages with seq greater than ``after``, in order."""
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(
                select(MESSAGES.c.seq, MESSAGES.c.data, MESSAGES.c.timestamp)
                .where(MESSAGES.c.channel == channel, MESSAGES.c.seq > after)
                .order_by(MESSAGES.c.seq)
                .limit(limit)
            ).all()
        return [LoggedMessage(r.seq, r.data, unix_time(r.timestamp)) for r in rows]

    def trim(
        self, channel: str, *, keep: int | None = None, before: dt.datetime | None = None
    ) -> ChannelHead:
        """Drop the oldest messages beyond ``keep`` and those stored before ``before``."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(
                select(CHANNELS.c.first_seq, CHANNELS.c.last_seq).where(
                    CHANNELS.c.channel == channel
                )
            ).first()
            if row is None:
                return ChannelHead(1, 0)
            first = row.first_seq
            if keep is not None:
                first = max(first, row.last_seq - keep + 1)
            if before is not None:
                newest_old = conn.execute(
                    select(func.max(MESSAGES.c.seq)).where(
                        MESSAGES.c.channel == channel, MESSAGES.c.timestamp < before
                    )
                ).scalar()
                if newest_old is not None:
                    first = max(first, int(newest_old) + 1)
            if first > row.first_seq:
                conn.execute(
                    delete(MESSAGES).where(MESSAGES.c.channel == channel, MESSAGES.c.seq < first)
                )
                conn.execute(
                    update(CHANNELS).where(CHANNELS.c.channel == channel).values(first_seq=first)
                )
        return ChannelHead(first, row.last_seq)

    def channels(self) -> list[str]:
        """Every channel with a log."""
        with store_errors(), self.engine.begin() as conn:
            return list(conn.execute(select(CHANNELS.c.channel)).scalars())


@dataclass(frozen=True, slots=True)
class ProducerState:
    """A durable producer as ``resume status --streams`` shows it."""

    client_id: str
    channel: str
    last_seq: int  # the last client seq given out
    acked: int  # the highest one the server confirmed
    pending: int  # messages in the outbox, waiting for the server
    timestamp: dt.datetime


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """A named consumer's position as ``resume status --streams`` shows it."""

    consumer: str
    channel: str
    seq: int
    timestamp: dt.datetime


@dataclass(frozen=True, slots=True)
class Outbox:
    """What a producer left unconfirmed: restored into a new client session."""

    pending: list[tuple[int, str]]  # (client seq, JSON text)
    last_seq: int
    acked: int


class StreamClientRepository:
    """A client's durable outbox, seq counter and consumer cursors; one transaction a call.

    ``channel`` here is the channel's URL, so one client store can talk to many servers.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load_outbox(self, client_id: str, channel: str) -> Outbox:
        """The unconfirmed messages and seq counter of ``client_id`` on ``channel``."""
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(
                select(OUTBOX.c.seq, OUTBOX.c.data)
                .where(OUTBOX.c.client_id == client_id, OUTBOX.c.channel == channel)
                .order_by(OUTBOX.c.seq)
            ).all()
            counter = conn.execute(
                select(SEQUENCES.c.last_seq, SEQUENCES.c.acked_seq).where(
                    SEQUENCES.c.client_id == client_id, SEQUENCES.c.channel == channel
                )
            ).first()
        last, acked = (counter.last_seq, counter.acked_seq) if counter else (0, 0)
        return Outbox([(r.seq, r.data) for r in rows], last, acked)

    def add(self, client_id: str, channel: str, items: Sequence[tuple[int, str]]) -> None:
        """Persist newly accepted messages and advance the seq counter, in one commit."""
        if not items:
            return
        now = utcnow()
        last = max(seq for seq, _ in items)
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                OUTBOX.insert(),
                [
                    {
                        "client_id": client_id,
                        "channel": channel,
                        "seq": s,
                        "data": d,
                        "timestamp": now,
                    }
                    for s, d in items
                ],
            )
            changed = conn.execute(
                update(SEQUENCES)
                .where(SEQUENCES.c.client_id == client_id, SEQUENCES.c.channel == channel)
                .values(
                    last_seq=case((SEQUENCES.c.last_seq < last, last), else_=SEQUENCES.c.last_seq),
                    timestamp=now,
                )
            ).rowcount
            if not changed:
                conn.execute(
                    SEQUENCES.insert().values(
                        client_id=client_id,
                        channel=channel,
                        last_seq=last,
                        acked_seq=0,
                        timestamp=now,
                    )
                )

    def confirm(self, client_id: str, channel: str, seq: int) -> None:
        """The server stored everything up to ``seq``: drop it from the outbox."""
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                delete(OUTBOX).where(
                    OUTBOX.c.client_id == client_id,
                    OUTBOX.c.channel == channel,
                    OUTBOX.c.seq <= seq,
                )
            )
            conn.execute(
                update(SEQUENCES)
                .where(
                    SEQUENCES.c.client_id == client_id,
                    SEQUENCES.c.channel == channel,
                    SEQUENCES.c.acked_seq < seq,
                )
                .values(acked_seq=seq, timestamp=now)
            )

    def cursor(self, consumer: str, channel: str) -> int | None:
        """The last server seq ``consumer`` took from ``channel``; None for a new consumer."""
        with store_errors(), self.engine.begin() as conn:
            value = conn.execute(
                select(CURSORS.c.seq).where(
                    CURSORS.c.consumer == consumer, CURSORS.c.channel == channel
                )
            ).scalar()
        return None if value is None else int(value)

    def set_cursor(self, consumer: str, channel: str, seq: int) -> None:
        """Record that ``consumer`` took everything up to ``seq``.

        Called once per message a consumer takes, so the common case (the row exists) is one
        UPDATE compiled once and handed to the driver as it is.
        """
        with store_errors(), self.engine.begin() as conn:
            now = utcnow()
            row = {
                "seq": seq,
                "timestamp": _driver_time(conn, now),
                "k_consumer": consumer,
                "k_channel": channel,
            }
            if _UPDATE_CURSOR.execute(conn, [row]).rowcount:
                return
            _upsert(
                conn,
                CURSORS,
                {"consumer": consumer, "channel": channel},
                {"seq": seq, "timestamp": now},
            )

    def producers(self) -> list[ProducerState]:
        """Every durable producer with its seq counter and outbox size."""
        pending = (
            select(OUTBOX.c.client_id, OUTBOX.c.channel, func.count().label("n"))
            .group_by(OUTBOX.c.client_id, OUTBOX.c.channel)
            .subquery()
        )
        query = (
            select(SEQUENCES, func.coalesce(pending.c.n, 0).label("pending"))
            .outerjoin(
                pending,
                (pending.c.client_id == SEQUENCES.c.client_id)
                & (pending.c.channel == SEQUENCES.c.channel),
            )
            .order_by(SEQUENCES.c.channel, SEQUENCES.c.client_id)
        )
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return [
            ProducerState(r.client_id, r.channel, r.last_seq, r.acked_seq, r.pending, r.timestamp)
            for r in rows
        ]

    def consumers(self) -> list[ConsumerState]:
        """Every named consumer's position."""
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(
                select(CURSORS).order_by(CURSORS.c.channel, CURSORS.c.consumer)
            ).all()
        return [ConsumerState(r.consumer, r.channel, r.seq, r.timestamp) for r in rows]

    def reset_cursor(self, consumer: str, channel: str) -> None:
        """Forget ``consumer``'s position so it starts anew."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                delete(CURSORS).where(CURSORS.c.consumer == consumer, CURSORS.c.channel == channel)
            )

    def drop_outbox(self, client_id: str) -> int | None:
        """Give up the unsent messages of producer ``client_id`` on every channel.

        Returns how many were dropped, None if there is no such producer. The seq counter
        stays (seqs are never reused); it counts the dropped messages as settled.
        """
        with store_errors(), self.engine.begin() as conn:
            known = conn.execute(
                select(func.count())
                .select_from(SEQUENCES)
                .where(SEQUENCES.c.client_id == client_id)
            ).scalar()
            if not known:
                return None
            dropped = conn.execute(delete(OUTBOX).where(OUTBOX.c.client_id == client_id)).rowcount
            conn.execute(
                update(SEQUENCES)
                .where(SEQUENCES.c.client_id == client_id)
                .values(acked_seq=SEQUENCES.c.last_seq, timestamp=utcnow())
            )
        return int(dropped)
