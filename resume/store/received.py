"""Persistence of incoming files and their durable chunks (the server side)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Row, delete, select, update

from resume.store.errors import store_errors
from resume.store.models import ReceivedChunk, ReceivedFile, ReceiveState, utcnow

FILES = ReceivedFile.__table__
CHUNKS = ReceivedChunk.__table__


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A row of ``received_files`` as plain data."""

    file_id: str
    name: str
    size: int
    chunk_size: int
    checksum: str | None
    state: ReceiveState
    offset: int
    created_at: dt.datetime
    timestamp: dt.datetime


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk the server wrote and fsynced, about to be recorded."""

    index: int
    offset: int
    length: int
    checksum: str


def _record(row: Row) -> ReceivedRecord:
    values = dict(row._mapping)
    values["state"] = ReceiveState(values["state"])
    return ReceivedRecord(**{name: values[name] for name in ReceivedRecord.__slots__})


class ReceivedRepository:
    """Reads and writes received files; every method is one transaction.

    The server's store is opened with ``synchronous=FULL``: when :meth:`record_chunks` returns,
    the rows are on disk, and only then does the server ack the chunks.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, file_id: str) -> ReceivedRecord | None:
        """The file with this id, or None."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(select(FILES).where(ReceivedFile.file_id == file_id)).first()
        return _record(row) if row else None

    def create(self, *, file_id: str, name: str, size: int, chunk_size: int) -> ReceivedRecord:
        """Record a new incoming file in state ``receiving``."""
        now = utcnow()
        values = dict(
            file_id=file_id,
            name=name,
            size=size,
            chunk_size=chunk_size,
            checksum=None,
            state=ReceiveState.RECEIVING.value,
            offset=0,
            created_at=now,
            timestamp=now,
        )
        with store_errors(), self.engine.begin() as conn:
            conn.execute(FILES.insert().values(**values))
        return ReceivedRecord(**{**values, "state": ReceiveState.RECEIVING})  # type: ignore[arg-type]

    def held(self, file_id: str) -> dict[int, str]:
        """Every durable chunk of a file: index -> checksum."""
        query = select(ReceivedChunk.chunk_index, ReceivedChunk.checksum).where(
            ReceivedChunk.file_id == file_id
        )
        with store_errors(), self.engine.begin() as conn:
            return {index: checksum for index, checksum in conn.execute(query)}

    def record_chunks(self, file_id: str, chunks: Sequence[StoredChunk], offset: int) -> None:
        """Record fsynced chunks (replacing older rows of the same index) and the new offset."""
        if not chunks:
            return
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                delete(ReceivedChunk).where(
                    ReceivedChunk.file_id == file_id,
                    ReceivedChunk.chunk_index.in_([c.index for c in chunks]),
                )
            )
            conn.execute(
                CHUNKS.insert(),
                [
                    {
                        "file_id": file_id,
                        "chunk_index": c.index,
                        "offset": c.offset,
                        "length": c.length,
                        "checksum": c.checksum,
                        "timestamp": now,
                    }
                    for c in chunks
                ],
            )
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(offset=offset, timestamp=now)
            )

    def finish(self, file_id: str, checksum: str) -> None:
        """Mark a file verified and in place; its chunk rows are no longer needed."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(state=ReceiveState.COMPLETED.value, checksum=checksum, timestamp=utcnow())
            )

    def cancel(self, file_id: str) -> None:
        """Mark a file cancelled and forget its chunks."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(state=ReceiveState.CANCELLED.value, offset=0, timestamp=utcnow())
            )

    def idle_since(self, before: dt.datetime) -> list[ReceivedRecord]:
        """Files still receiving whose last change is older than ``before``."""
        query = select(FILES).where(
            ReceivedFile.state == ReceiveState.RECEIVING.value, ReceivedFile.timestamp < before
        )
        with store_errors(), self.engine.begin() as conn:
            return [_record(row) for row in conn.execute(query)]

    def delete(self, file_id: str) -> None:
        """Forget a file and its chunks entirely."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(delete(ReceivedFile).where(ReceivedFile.file_id == file_id))
