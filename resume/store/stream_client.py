"""A stream client's side of streams: the durable outbox, the seq counter, consumer cursors.

The durable mode of the stream client keeps the messages ``send()`` accepted until the server
confirms them, the last seq given out (so seqs are never reused), and each named consumer's
position in each channel. ``channel`` here is the channel's URL (or the client's ``key``), so
one client store can talk to many servers.

Producer identity: next to the seq counter each (client id, channel) keeps an ``instance``
nonce, made once and sent in every ``hello``, so the server tells a restart of this producer
(same store, same nonce) from another producer that reuses its client id. The ``holder`` is
the process currently producing from this store: :meth:`StreamClientRepository.open_producer`
takes it over, and :meth:`StreamClientRepository.add` refuses a process that lost it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, case, delete, func, select, update

from resume.errors import ClientIdConflict
from resume.store.errors import store_errors
from resume.store.models import ConsumerCursor, OutboxMessage, OutboxSequence, utcnow
from resume.store.statements import DriverStatement, driver_time, upsert

OUTBOX = OutboxMessage.__table__
SEQUENCES = OutboxSequence.__table__
CURSORS = ConsumerCursor.__table__

_UPDATE_CURSOR = DriverStatement(
    lambda: (
        update(CURSORS)
        .where(
            CURSORS.c.consumer == bindparam("k_consumer"),
            CURSORS.c.channel == bindparam("k_channel"),
        )
        .values(seq=bindparam("seq"), timestamp=bindparam("timestamp"))
    )
)


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
    instance: str | None = None  # the producer instance nonce (None: never opened)
    holder: str | None = None  # this process's claim (from open_producer)


class StreamClientRepository:
    """A client's durable outbox, seq counter and consumer cursors; one transaction a call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load_outbox(self, client_id: str, channel: str) -> Outbox:
        """The unconfirmed messages and seq counter of ``client_id`` on ``channel`` (read only)."""
        with store_errors(), self.engine.begin() as conn:
            return self._outbox(conn, client_id, channel)

    def open_producer(self, client_id: str, channel: str) -> Outbox:
        """Load the outbox and become its producing process, in one transaction.

        Makes the instance nonce on first use. Any other process that was producing as
        ``client_id`` on ``channel`` from this store loses its claim: its next :meth:`add`
        raises :class:`ClientIdConflict`, so two processes never number messages from the
        same counter.
        """
        holder = uuid.uuid4().hex
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            outbox = self._outbox(conn, client_id, channel)
            instance = outbox.instance or uuid.uuid4().hex
            upsert(
                conn,
                SEQUENCES,
                {"client_id": client_id, "channel": channel},
                {
                    "last_seq": outbox.last_seq,
                    "acked_seq": outbox.acked,
                    "instance": instance,
                    "holder": holder,
                    "timestamp": now,
                },
            )
        return Outbox(outbox.pending, outbox.last_seq, outbox.acked, instance, holder)

    @staticmethod
    def _outbox(conn: Connection, client_id: str, channel: str) -> Outbox:
        rows = conn.execute(
            select(OUTBOX.c.seq, OUTBOX.c.data)
            .where(OUTBOX.c.client_id == client_id, OUTBOX.c.channel == channel)
            .order_by(OUTBOX.c.seq)
        ).all()
        counter = conn.execute(
            select(
                SEQUENCES.c.last_seq,
                SEQUENCES.c.acked_seq,
                SEQUENCES.c.instance,
                SEQUENCES.c.holder,
            ).where(SEQUENCES.c.client_id == client_id, SEQUENCES.c.channel == channel)
        ).first()
        if counter is None:
            return Outbox([(r.seq, r.data) for r in rows], 0, 0)
        return Outbox(
            [(r.seq, r.data) for r in rows],
            counter.last_seq,
            counter.acked_seq,
            counter.instance,
            counter.holder,
        )

    def add(
        self,
        client_id: str,
        channel: str,
        items: Sequence[tuple[int, str]],
        *,
        holder: str | None = None,
    ) -> None:
        """Persist newly accepted messages and advance the seq counter, in one commit.

        With ``holder`` (from :meth:`open_producer`), refuse with :class:`ClientIdConflict`
        and store nothing if another process has opened this producer since.
        """
        if not items:
            return
        now = utcnow()
        last = max(seq for seq, _ in items)
        where = [SEQUENCES.c.client_id == client_id, SEQUENCES.c.channel == channel]
        if holder is not None:
            where.append(SEQUENCES.c.holder == holder)
        with store_errors(), self.engine.begin() as conn:
            changed = conn.execute(
                update(SEQUENCES)
                .where(*where)
                .values(
                    last_seq=case((SEQUENCES.c.last_seq < last, last), else_=SEQUENCES.c.last_seq),
                    timestamp=now,
                )
            ).rowcount
            if not changed:
                if holder is not None:
                    raise ClientIdConflict(
                        f"another process opened client id {client_id!r} on {channel} from "
                        "the same state database and now produces as it: this one stops",
                        client_id=client_id,
                    )
                conn.execute(
                    SEQUENCES.insert().values(
                        client_id=client_id,
                        channel=channel,
                        last_seq=last,
                        acked_seq=0,
                        timestamp=now,
                    )
                )
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
                "timestamp": driver_time(conn, now),
                "k_consumer": consumer,
                "k_channel": channel,
            }
            if _UPDATE_CURSOR.execute(conn, [row]).rowcount:
                return
            upsert(
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
