"""The server's side of streams: every channel's durable log and its producers' dedup state.

Every published message is appended to its channel's log with the next server seq,
deduplicated by (producer, client seq), in one transaction per batch. The server's store runs
with ``synchronous=FULL``: when :meth:`StreamLogRepository.append` returns, the batch is on
disk, and only then is it acked.

A producer is named by its client id, namespaced by the principal that authenticated it (see
:meth:`resume.auth.Principal.namespaced`), and owned by one producer *instance* (a nonce the
client keeps next to its seq counter): the first instance that stores a message under an id
owns it, and another instance's messages under that id are refused with
:class:`resume.errors.ClientIdConflict` instead of being dropped as replays.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update

from resume.errors import PRODUCER_FENCED, ClientIdConflict, ProtocolError
from resume.store.errors import store_errors
from resume.store.models import StreamChannel, StreamMessage, StreamProducer, utcnow
from resume.store.notify import PRODUCERS as PRODUCER_NOTES
from resume.store.notify import STREAMS, notify
from resume.store.shared import db_now, xact_lock
from resume.store.statements import DriverStatement, driver_time, unix_time, upsert

CHANNELS = StreamChannel.__table__
MESSAGES = StreamMessage.__table__
PRODUCERS = StreamProducer.__table__


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


@dataclass(frozen=True, slots=True)
class ProducerRecord:
    """What the server holds for one producer on one channel."""

    last_seq: int  # the highest client seq stored
    instance: str | None  # the producer instance that owns the id (None: not recorded)

    def owned_by_another(self, instance: str | None) -> bool:
        """Whether ``instance`` is not the instance that owns this producer id."""
        return self.instance is not None and self.instance != instance


_INSERT_MESSAGES = DriverStatement(MESSAGES.insert)


class OwnedByAnother(ClientIdConflict):
    """The producer id belongs to another instance, which stored messages under it."""

    held = 0  # the highest client seq the server holds for it


class ProducerLive(ClientIdConflict):
    """Another instance's connection holds the producer id's live session (on any node)."""


def conflict(channel: str, producer: str, record: ProducerRecord) -> ClientIdConflict:
    """The error for an instance that presents a producer id another instance owns."""
    error = OwnedByAnother(
        f"client id {producer!r} on channel {channel!r} belongs to another producer instance "
        f"(the server holds its messages up to seq {record.last_seq})",
        client_id=producer,
    )
    error.held = record.last_seq
    return error


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

    def producer(self, channel: str, producer: str) -> ProducerRecord | None:
        """What is stored for ``producer`` in ``channel``; None if it never published there."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(
                select(PRODUCERS.c.last_seq, PRODUCERS.c.instance).where(
                    PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == producer
                )
            ).first()
        return ProducerRecord(int(row.last_seq), row.instance) if row else None

    def producer_seq(self, channel: str, producer: str) -> int:
        """The highest client seq stored for ``producer`` in ``channel`` (0 if none)."""
        record = self.producer(channel, producer)
        return record.last_seq if record else 0

    def append(
        self,
        channel: str,
        producer: str,
        first_seq: int,
        items: Sequence[str],
        *,
        instance: str | None = None,
        keep: int | None = None,
        session: str | None = None,
        lease: float | None = None,
    ) -> Appended:
        """Store client seqs ``first_seq, first_seq+1, ...`` not stored before, in one commit.

        Messages at or below what is already stored for this producer are duplicates (a replay
        after a reconnect) and skipped. A batch that starts beyond the next expected client seq
        would leave a hole: that is a protocol violation, and nothing is stored. A batch from
        an ``instance`` other than the one that owns ``producer`` raises ClientIdConflict and
        stores nothing; the first instance to store under an id (or under an id recorded
        without one) becomes its owner. With ``keep``, the oldest messages beyond that many are
        trimmed in the same commit.

        With ``session`` (the connection's, from :meth:`claim_session`), the batch is stored
        only while that session is the producer's live one (else ClientIdConflict with close
        code 4410, nothing stored), and it renews the session for ``lease`` seconds.
        """
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            xact_lock(conn, f"stream:{channel}")
            row = conn.execute(
                select(PRODUCERS.c.last_seq, PRODUCERS.c.instance, PRODUCERS.c.session).where(
                    PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == producer
                )
            ).first()
            record = ProducerRecord(int(row.last_seq), row.instance) if row else None
            if record is not None and record.owned_by_another(instance):
                raise conflict(channel, producer, record)
            if session is not None and (row is None or row.session != session):
                raise ClientIdConflict(
                    "fenced: a newer connection of this producer took over",
                    close_code=PRODUCER_FENCED,
                )
            head_row = conn.execute(
                select(CHANNELS.c.first_seq, CHANNELS.c.last_seq).where(
                    CHANNELS.c.channel == channel
                )
            ).first()
            already = record.last_seq if record else 0
            if first_seq > already + 1:
                raise ProtocolError(
                    f"client {producer!r} published seq {first_seq} but {already + 1} was next",
                    close_code=1002,
                )
            new = list(items[max(0, already + 1 - first_seq) :])
            first, last = (head_row.first_seq, head_row.last_seq) if head_row else (1, 0)
            if not new:
                return Appended(already, 0, 0, ChannelHead(first, last))
            producer_last = first_seq + len(items) - 1
            stamp = driver_time(conn, now)
            first_producer_seq = producer_last - len(new) + 1
            _INSERT_MESSAGES.execute(
                conn,
                [
                    {
                        "channel": channel,
                        "seq": last + 1 + i,
                        "producer": producer,
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
            upsert(
                conn,
                CHANNELS,
                {"channel": channel},
                {"first_seq": first, "last_seq": new_last, "timestamp": now},
            )
            owner = record.instance if record is not None and record.instance else instance
            values: dict[str, object] = {
                "last_seq": producer_last,
                "instance": owner,
                "timestamp": now,
            }
            if session is not None and lease is not None:
                values["session_until"] = db_now(conn) + dt.timedelta(seconds=lease)
            upsert(conn, PRODUCERS, {"channel": channel, "client_id": producer}, values)
            notify(conn, STREAMS, json.dumps({"c": channel, "f": first, "l": new_last}))
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
            xact_lock(conn, f"stream:{channel}")
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
                notify(conn, STREAMS, json.dumps({"c": channel, "f": first, "l": row.last_seq}))
        return ChannelHead(first, row.last_seq)

    # -- producer sessions (one live connection per producer, across nodes) -------------------

    def claim_session(
        self,
        channel: str,
        producer: str,
        *,
        instance: str | None,
        session: str,
        lease: float,
    ) -> ProducerRecord:
        """Make ``session`` the producer's live connection; what the server holds for it.

        Refused with ClientIdConflict (4409) if another instance stored messages under the id,
        or holds a session that has not lapsed (a live producer on any node). A live session of
        the same instance is replaced: that older connection is fenced (its next append is
        refused; other nodes are told at once through ``NOTIFY``).
        """
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            xact_lock(conn, f"stream:{channel}")
            clock = db_now(conn)
            row = conn.execute(
                select(
                    PRODUCERS.c.last_seq,
                    PRODUCERS.c.instance,
                    PRODUCERS.c.session,
                    PRODUCERS.c.session_instance,
                    PRODUCERS.c.session_until,
                ).where(PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == producer)
            ).first()
            record = ProducerRecord(int(row.last_seq), row.instance) if row else None
            if record is not None and record.owned_by_another(instance):
                raise conflict(channel, producer, record)
            if (
                row is not None
                and row.session is not None
                and row.session != session
                and row.session_instance != instance
                and row.session_until is not None
                and row.session_until > clock
            ):
                raise ProducerLive(
                    f"client id {producer!r} on channel {channel!r} is in use by another live "
                    "producer",
                    client_id=producer,
                )
            values = {
                "session": session,
                "session_instance": instance,
                "session_until": clock + dt.timedelta(seconds=lease),
            }
            if row is None:
                conn.execute(
                    PRODUCERS.insert().values(
                        channel=channel,
                        client_id=producer,
                        last_seq=0,
                        instance=None,
                        timestamp=now,
                        **values,
                    )
                )
            else:
                conn.execute(self._producer_row(conn, channel, producer).values(**values))
            notify(conn, PRODUCER_NOTES, json.dumps({"c": channel, "p": producer, "s": session}))
        return record or ProducerRecord(0, None)

    def renew_sessions(
        self, sessions: Sequence[tuple[str, str, str]], lease: float
    ) -> list[tuple[str, str, str]]:
        """Renew the given live sessions (channel, producer, session); returns those lost."""
        lost = []
        with store_errors(), self.engine.begin() as conn:
            until = db_now(conn) + dt.timedelta(seconds=lease)
            for channel, producer, session in sessions:
                result = conn.execute(
                    self._producer_row(conn, channel, producer)
                    .where(PRODUCERS.c.session == session)
                    .values(session_until=until)
                )
                if result.rowcount != 1:
                    lost.append((channel, producer, session))
        return lost

    def release_session(self, channel: str, producer: str, session: str) -> None:
        """The connection with ``session`` ended: the producer has no live connection now.

        A row that never stored a message (``last_seq`` 0) goes entirely.
        """
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                delete(PRODUCERS).where(
                    PRODUCERS.c.channel == channel,
                    PRODUCERS.c.client_id == producer,
                    PRODUCERS.c.session == session,
                    PRODUCERS.c.last_seq == 0,
                )
            )
            conn.execute(
                self._producer_row(conn, channel, producer)
                .where(PRODUCERS.c.session == session)
                .values(session=None, session_instance=None, session_until=None)
            )

    def forget_sessions(self) -> None:
        """No connection is live (one node, starting): drop every session and empty row."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(PRODUCERS).where(PRODUCERS.c.last_seq == 0))
            conn.execute(
                update(PRODUCERS)
                .where(PRODUCERS.c.session.is_not(None))
                .values(session=None, session_instance=None, session_until=None)
            )

    def drop_lapsed_sessions(self) -> int:
        """Forget empty producer rows whose session lapsed (their node died); how many."""
        with store_errors(), self.engine.begin() as conn:
            result = conn.execute(
                delete(PRODUCERS).where(
                    PRODUCERS.c.last_seq == 0, PRODUCERS.c.session_until < db_now(conn)
                )
            )
            return int(result.rowcount)

    @staticmethod
    def _producer_row(conn: Connection, channel: str, producer: str) -> Any:
        return update(PRODUCERS).where(
            PRODUCERS.c.channel == channel, PRODUCERS.c.client_id == producer
        )

    def channels(self) -> list[str]:
        """Every channel with a log."""
        with store_errors(), self.engine.begin() as conn:
            return list(conn.execute(select(CHANNELS.c.channel)).scalars())
