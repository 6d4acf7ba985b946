"""What a server's store holds, for ``resume server-status``: partial uploads and channels.

Read-only queries over the server-side tables; safe while the server runs (SQLite WAL: readers
never block the writer, and the store is opened with ``readonly=True``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from resume.store.errors import store_errors
from resume.store.models import (
    ReceivedChunk,
    ReceivedFile,
    ReceiveState,
    StreamChannel,
    StreamProducer,
)


@dataclass(frozen=True, slots=True)
class PartialUpload:
    """A file still being received: how big, how much is durable, since when."""

    file_id: str
    name: str
    size: int
    received: int  # bytes in durable chunks (not only the contiguous prefix)
    created_at: dt.datetime
    timestamp: dt.datetime  # last durable chunk or change


@dataclass(frozen=True, slots=True)
class ChannelSummary:
    """A channel's retained log and its producers."""

    name: str
    first: int
    last: int
    retained: int  # messages kept now
    producers: int  # client ids that ever published (their seqs are kept for dedup)
    timestamp: dt.datetime  # last append or trim


def partial_uploads(engine: Engine) -> list[PartialUpload]:
    """Every file in state ``receiving``, oldest first."""
    received = (
        select(ReceivedChunk.file_id, func.sum(ReceivedChunk.length).label("received"))
        .group_by(ReceivedChunk.file_id)
        .subquery()
    )
    query = (
        select(
            ReceivedFile.file_id,
            ReceivedFile.name,
            ReceivedFile.size,
            func.coalesce(received.c.received, 0),
            ReceivedFile.created_at,
            ReceivedFile.timestamp,
        )
        .outerjoin(received, received.c.file_id == ReceivedFile.file_id)
        .where(ReceivedFile.state == ReceiveState.RECEIVING.value)
        .order_by(ReceivedFile.created_at)
    )
    with store_errors(), engine.begin() as conn:
        return [PartialUpload(*row) for row in conn.execute(query)]


def channels(engine: Engine) -> list[ChannelSummary]:
    """Every channel with a log, by name."""
    producers = (
        select(StreamProducer.channel, func.count().label("producers"))
        .where(StreamProducer.last_seq > 0)  # rows of live sessions that stored nothing: not yet
        .group_by(StreamProducer.channel)
        .subquery()
    )
    query = (
        select(
            StreamChannel.channel,
            StreamChannel.first_seq,
            StreamChannel.last_seq,
            func.coalesce(producers.c.producers, 0),
            StreamChannel.timestamp,
        )
        .outerjoin(producers, producers.c.channel == StreamChannel.channel)
        .order_by(StreamChannel.channel)
    )
    with store_errors(), engine.begin() as conn:
        rows = conn.execute(query).all()
    # Seqs are consecutive and trimming only moves ``first``: the log holds first..last.
    return [
        ChannelSummary(name, first, last, max(0, last - first + 1), count, timestamp)
        for name, first, last, count, timestamp in rows
    ]


__all__ = ["ChannelSummary", "PartialUpload", "channels", "partial_uploads"]
