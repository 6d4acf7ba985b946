"""Persistence of outgoing transfers and their chunk ledgers (the client side)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Row, case, delete, func, select, update

from resume.protocol.ledger import ChunkRecord, ChunkState, Ledger
from resume.store.errors import store_errors
from resume.store.models import Chunk, Transfer, TransferState, utcnow


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A row of ``transfers`` as plain data."""

    file_id: str
    source_path: str
    name: str
    url: str
    size: int
    mtime_ns: int
    inode: int
    chunk_size: int
    checksum_algo: str
    checksum: str | None
    state: TransferState
    offset: int
    created_at: dt.datetime
    timestamp: dt.datetime
    last_error: str | None
    upload_url: str | None = None  # tus transfers: where the file's upload lives


@dataclass(frozen=True, slots=True)
class ChunkCounts:
    """How many chunks of a transfer are in each state."""

    committed: int
    prepared: int
    total: int


@dataclass(frozen=True, slots=True)
class TransferSummary:
    """A transfer with its chunk counts, what ``resume status`` shows."""

    transfer: TransferRecord
    chunks: ChunkCounts


TRANSFERS = Transfer.__table__
CHUNKS = Chunk.__table__


def _record(row: Row) -> TransferRecord:
    values = dict(row._mapping)
    values["state"] = TransferState(values["state"])
    return TransferRecord(**{name: values[name] for name in TransferRecord.__slots__})


class TransferRepository:
    """Reads and writes transfers and their chunk rows; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        *,
        file_id: str,
        source_path: str,
        name: str,
        url: str,
        size: int,
        mtime_ns: int,
        inode: int,
        chunk_size: int,
        checksum_algo: str = "xxh3-128",
    ) -> TransferRecord:
        """Record a new transfer in state ``pending``."""
        now = utcnow()
        values = dict(
            file_id=file_id,
            source_path=source_path,
            name=name,
            url=url,
            size=size,
            mtime_ns=mtime_ns,
            inode=inode,
            chunk_size=chunk_size,
            checksum_algo=checksum_algo,
            checksum=None,
            state=TransferState.PENDING.value,
            offset=0,
            created_at=now,
            timestamp=now,
            last_error=None,
        )
        with store_errors(), self.engine.begin() as conn:
            conn.execute(TRANSFERS.insert().values(**values))
        return self.get(file_id)  # type: ignore[return-value]

    def get(self, file_id: str) -> TransferRecord | None:
        """The transfer with exactly this id, or None."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(select(TRANSFERS).where(Transfer.file_id == file_id)).first()
        return _record(row) if row else None

    def match(self, prefix: str) -> list[TransferRecord]:
        """Transfers whose id starts with ``prefix`` (status and cancel accept short ids)."""
        query = select(TRANSFERS).where(Transfer.file_id.startswith(prefix, autoescape=True))
        with store_errors(), self.engine.begin() as conn:
            return [_record(row) for row in conn.execute(query)]

    def latest_for(self, source_path: str, url: str, name: str) -> TransferRecord | None:
        """The newest transfer of this file to this server under this name, if any."""
        query = (
            select(TRANSFERS)
            .where(Transfer.source_path == source_path, Transfer.url == url, Transfer.name == name)
            .order_by(Transfer.created_at.desc())
            .limit(1)
        )
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(query).first()
        return _record(row) if row else None

    def update(self, file_id: str, **values: object) -> None:
        """Change columns of one transfer and bump its timestamp."""
        if isinstance(values.get("state"), TransferState):
            values["state"] = values["state"].value  # type: ignore[union-attr]
        values["timestamp"] = utcnow()
        with store_errors(), self.engine.begin() as conn:
            conn.execute(update(Transfer).where(Transfer.file_id == file_id).values(**values))

    def load_ledger(self, record: TransferRecord) -> Ledger:
        """Rebuild the chunk ledger of ``record`` from its persisted chunk rows."""
        query = select(Chunk.chunk_index, Chunk.state, Chunk.checksum).where(
            Chunk.file_id == record.file_id
        )
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(query).all()
        records = [
            ChunkRecord(index, ChunkState(state), checksum) for index, state, checksum in rows
        ]
        return Ledger.restore(record.size, record.chunk_size, records)

    def save_chunks(self, file_id: str, ledger: Ledger, changes: Iterable[ChunkRecord]) -> None:
        """Persist chunk transitions the ledger returned, and the committed offset, atomically.

        PREPARED rows are written before the chunk is sent; COMMITTED after the peer's ack;
        PENDING deletes the row (a pending chunk has none).
        """
        # Only the last change of a chunk counts: adopting a chunk is prepare then commit.
        changes = list({c.index: c for c in changes}.values())
        if not changes:
            return
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            indexes = [c.index for c in changes]
            # Replace rather than upsert: portable across SQLite and PostgreSQL.
            conn.execute(
                delete(Chunk).where(Chunk.file_id == file_id, Chunk.chunk_index.in_(indexes))
            )
            rows = [
                {
                    "file_id": file_id,
                    "chunk_index": c.index,
                    "offset": ledger.spec(c.index).offset,
                    "length": ledger.spec(c.index).length,
                    "checksum": c.checksum,
                    "state": c.state.value,
                    "timestamp": now,
                }
                for c in changes
                if c.state is not ChunkState.PENDING
            ]
            if rows:
                conn.execute(CHUNKS.insert(), rows)
            conn.execute(
                update(Transfer)
                .where(Transfer.file_id == file_id)
                .values(offset=ledger.committed_offset, timestamp=now)
            )

    def prepare_chunks(self, file_id: str, ledger: Ledger, prepared: Sequence[ChunkRecord]) -> None:
        """Phase one for newly prepared chunks (pending chunks have no row): one INSERT."""
        if not prepared:
            return
        now = utcnow()
        rows = []
        for c in prepared:
            spec = ledger.spec(c.index)
            rows.append(
                {
                    "file_id": file_id,
                    "chunk_index": c.index,
                    "offset": spec.offset,
                    "length": spec.length,
                    "checksum": c.checksum,
                    "state": ChunkState.PREPARED.value,
                    "timestamp": now,
                }
            )
        with store_errors(), self.engine.begin() as conn:
            conn.execute(CHUNKS.insert(), rows)

    def commit_chunks(self, file_id: str, ledger: Ledger, committed: Sequence[ChunkRecord]) -> None:
        """Phase two for acknowledged chunks, and the new committed offset, atomically."""
        if not committed:
            return
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                update(Chunk)
                .where(
                    Chunk.file_id == file_id,
                    Chunk.chunk_index.in_([c.index for c in committed]),
                )
                .values(state=ChunkState.COMMITTED.value, timestamp=now)
            )
            conn.execute(
                update(Transfer)
                .where(Transfer.file_id == file_id)
                .values(offset=ledger.committed_offset, timestamp=now)
            )

    def reset_chunks(self, file_id: str) -> None:
        """Forget every chunk of a transfer (the peer lost them or the user restarts)."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(Chunk).where(Chunk.file_id == file_id))
            conn.execute(
                update(Transfer)
                .where(Transfer.file_id == file_id)
                .values(offset=0, checksum=None, timestamp=utcnow())
            )

    def delete(self, file_ids: Sequence[str]) -> int:
        """Remove transfers and their chunks; returns how many transfers went."""
        if not file_ids:
            return 0
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(Chunk).where(Chunk.file_id.in_(file_ids)))
            result = conn.execute(delete(Transfer).where(Transfer.file_id.in_(file_ids)))
        return result.rowcount

    def summaries(self, file_id_prefix: str | None = None) -> list[TransferSummary]:
        """Every transfer (or those matching a prefix) with chunk counts, newest first."""
        counts = (
            select(
                Chunk.file_id,
                func.sum(case((Chunk.state == ChunkState.COMMITTED.value, 1), else_=0)).label("c"),
                func.sum(case((Chunk.state == ChunkState.PREPARED.value, 1), else_=0)).label("p"),
            )
            .group_by(Chunk.file_id)
            .subquery()
        )
        query = (
            select(TRANSFERS, counts.c.c, counts.c.p)
            .outerjoin(counts, counts.c.file_id == Transfer.file_id)
            .order_by(Transfer.timestamp.desc())
        )
        if file_id_prefix:
            query = query.where(Transfer.file_id.startswith(file_id_prefix, autoescape=True))
        with store_errors(), self.engine.begin() as conn:
            rows = conn.execute(query).all()
        result = []
        for row in rows:
            record = _record(row)
            committed, prepared = row.c, row.p
            total = -(-record.size // record.chunk_size)
            result.append(
                TransferSummary(record, ChunkCounts(int(committed or 0), int(prepared or 0), total))
            )
        return result
