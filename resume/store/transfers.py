"""Persistence of outgoing transfers, their chunk ledgers and their locks (the client side).

Statements are portable SQL run through :mod:`resume.store.sql`: the standard library's
``sqlite3`` for a SQLite file (so ``resume upload`` never imports SQLAlchemy), a SQLAlchemy
engine for anything else. The tables are the models in :mod:`resume.store.models`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from resume.protocol.geometry import chunk_count
from resume.protocol.ledger import ChunkRecord, ChunkState, Ledger
from resume.store.sql import Database, Row, to_datetime
from resume.store.states import TransferState, utcnow

COLUMNS = (
    "file_id, source_path, name, url, server, upload_url, size, mtime_ns, inode, chunk_size, "
    'checksum_algo, checksum, state, "offset", created_at, timestamp, last_error'
)


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
    server: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkCounts:
    """How many chunks of a transfer are in each state."""

    committed: int
    prepared: int
    total: int


@dataclass(frozen=True, slots=True)
class TransferSummary:
    """A transfer with its chunk counts, what ``resume status`` shows.

    ``running`` is whether a live process holds the transfer's lock right now: an ``active``
    transfer without one was interrupted (its process died).
    """

    transfer: TransferRecord
    chunks: ChunkCounts
    running: bool = False


@dataclass(frozen=True, slots=True)
class LockOwner:
    """The process that holds a transfer lock."""

    host: str
    pid: int
    started: str

    @classmethod
    def me(cls) -> LockOwner:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))

    def alive(self) -> bool:
        """Whether that process still runs (a process on another host is assumed to)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, it is someone else's
        return process_start(self.pid) == self.started  # else the pid was reused


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), or '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may contain spaces, so count after its ')'.
    return stat.rsplit(b")", 1)[-1].split()[19].decode()


def lock_key(source_path: str, server: str, name: str) -> str:
    """The lock row's key for one (file, server, remote name): 32 hex digits."""
    # xxh3-128 (not hashlib): already loaded for the chunks, and importing hashlib costs
    # a few milliseconds of every start.
    return xxhash.xxh3_128_hexdigest("\0".join((source_path, server, name)).encode())


def _record(row: Row) -> TransferRecord:
    values = dict(row)
    values["state"] = TransferState(values["state"])
    values["created_at"] = to_datetime(values["created_at"])
    values["timestamp"] = to_datetime(values["timestamp"])
    return TransferRecord(**{name: values[name] for name in TransferRecord.__slots__})


class TransferRepository:
    """Reads and writes transfers, their chunk rows and locks; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
        server: str | None = None,
    ) -> TransferRecord:
        """Record a new transfer in state ``pending``."""
        now = utcnow()
        values: dict[str, Any] = dict(
            file_id=file_id,
            source_path=source_path,
            name=name,
            url=url,
            server=server,
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
        placeholders = ", ".join(f":{name}" for name in values)
        with self.db.transaction() as tx:
            columns = ", ".join(f'"{name}"' for name in values)  # "offset" is reserved in SQL
            tx.run(f"INSERT INTO transfers ({columns}) VALUES ({placeholders})", values)
        return self.get(file_id)  # type: ignore[return-value]

    def get(self, file_id: str) -> TransferRecord | None:
        """The transfer with exactly this id, or None."""
        with self.db.transaction() as tx:
            rows = tx.rows(f"SELECT {COLUMNS} FROM transfers WHERE file_id = :id", {"id": file_id})
        return _record(rows[0]) if rows else None

    def match(self, prefix: str) -> list[TransferRecord]:
        """Transfers whose id starts with ``prefix`` (status and cancel accept short ids)."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                f"SELECT {COLUMNS} FROM transfers WHERE substr(file_id, 1, :n) = :prefix",
                {"n": len(prefix), "prefix": prefix},
            )
        return [_record(row) for row in rows]

    def latest_for(
        self, source_path: str, url: str, name: str, *, server: str | None = None
    ) -> TransferRecord | None:
        """The newest transfer of this file to this server under this name, if any.

        The server is matched by its canonical ``server`` identity when given (any spelling of
        its URL), and by the ``url`` as spelled for records that have none.
        """
        query = (
            f"SELECT {COLUMNS} FROM transfers WHERE source_path = :path AND name = :name AND "
            "(server = :server OR (server IS NULL AND url = :url)) "
            "ORDER BY created_at DESC LIMIT 1"
        )
        if server is None:
            query = query.replace(
                "server = :server OR (server IS NULL AND url = :url)", "url = :url"
            )
        params = {"path": source_path, "name": name, "server": server, "url": url}
        if server is None:
            del params["server"]
        with self.db.transaction() as tx:
            rows = tx.rows(query, params)
        return _record(rows[0]) if rows else None

    def unfinished_elsewhere(
        self, source_path: str, server: str | None, url: str
    ) -> list[TransferRecord]:
        """Unfinished transfers of this file to other servers (a warning, not an error)."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                f"SELECT {COLUMNS} FROM transfers WHERE source_path = :path "
                "AND state IN (:pending, :active, :failed)",
                {
                    "path": source_path,
                    "pending": TransferState.PENDING.value,
                    "active": TransferState.ACTIVE.value,
                    "failed": TransferState.FAILED.value,
                },
            )
        records = [_record(row) for row in rows]
        return [r for r in records if (r.server or r.url) != (server or url) and r.url != url]

    def update(self, file_id: str, **values: object) -> None:
        """Change columns of one transfer and bump its timestamp."""
        state = values.get("state")
        if isinstance(state, TransferState):
            values["state"] = state.value
        values["timestamp"] = utcnow()
        assignments = ", ".join(f'"{name}" = :{name}' for name in values)
        with self.db.transaction() as tx:
            tx.run(
                f"UPDATE transfers SET {assignments} WHERE file_id = :file_id_",
                {**values, "file_id_": file_id},
            )

    def load_ledger(self, record: TransferRecord) -> Ledger:
        """Rebuild the chunk ledger of ``record`` from its persisted chunk rows."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT chunk_index, state, checksum FROM chunks WHERE file_id = :id",
                {"id": record.file_id},
            )
        records = [
            ChunkRecord(r["chunk_index"], ChunkState(r["state"]), r["checksum"]) for r in rows
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
        with self.db.transaction() as tx:
            # Replace rather than upsert: portable across SQLite and PostgreSQL.
            tx.run_many(
                "DELETE FROM chunks WHERE file_id = :file_id AND chunk_index = :chunk_index",
                [{"file_id": file_id, "chunk_index": c.index} for c in changes],
            )
            rows = [
                _chunk_row(file_id, ledger, c.index, c.checksum, c.state, now)
                for c in changes
                if c.state is not ChunkState.PENDING
            ]
            if rows:
                tx.run_many(INSERT_CHUNK, rows)
            tx.run(
                'UPDATE transfers SET "offset" = :offset, timestamp = :now WHERE file_id = :id',
                {"offset": ledger.committed_offset, "now": now, "id": file_id},
            )

    def prepare_chunks(self, file_id: str, ledger: Ledger, prepared: Sequence[ChunkRecord]) -> None:
        """Phase one for newly prepared chunks (pending chunks have no row): one INSERT."""
        if not prepared:
            return
        now = utcnow()
        rows = [
            _chunk_row(file_id, ledger, c.index, c.checksum, ChunkState.PREPARED, now)
            for c in prepared
        ]
        with self.db.transaction() as tx:
            tx.run_many(INSERT_CHUNK, rows)

    def commit_chunks(self, file_id: str, ledger: Ledger, committed: Sequence[ChunkRecord]) -> None:
        """Phase two for acknowledged chunks, and the new committed offset, atomically."""
        if not committed:
            return
        now = utcnow()
        with self.db.transaction() as tx:
            tx.run_many(
                "UPDATE chunks SET state = :state, timestamp = :now "
                "WHERE file_id = :file_id AND chunk_index = :chunk_index",
                [
                    {
                        "state": ChunkState.COMMITTED.value,
                        "now": now,
                        "file_id": file_id,
                        "chunk_index": c.index,
                    }
                    for c in committed
                ],
            )
            tx.run(
                'UPDATE transfers SET "offset" = :offset, timestamp = :now WHERE file_id = :id',
                {"offset": ledger.committed_offset, "now": now, "id": file_id},
            )

    def reset_chunks(self, file_id: str) -> None:
        """Forget every chunk of a transfer (the peer lost them or the user restarts)."""
        with self.db.transaction() as tx:
            tx.run("DELETE FROM chunks WHERE file_id = :id", {"id": file_id})
            tx.run(
                'UPDATE transfers SET "offset" = 0, checksum = NULL, timestamp = :now '
                "WHERE file_id = :id",
                {"now": utcnow(), "id": file_id},
            )

    def delete(self, file_ids: Sequence[str]) -> int:
        """Remove transfers and their chunks; returns how many transfers went."""
        removed = 0
        with self.db.transaction() as tx:
            for file_id in file_ids:
                tx.run("DELETE FROM chunks WHERE file_id = :id", {"id": file_id})
                removed += tx.run("DELETE FROM transfers WHERE file_id = :id", {"id": file_id})
        return removed

    def summaries(self, file_id_prefix: str | None = None) -> list[TransferSummary]:
        """Every transfer (or those matching a prefix) with chunk counts, newest first."""
        where = "WHERE substr(t.file_id, 1, :n) = :prefix" if file_id_prefix else ""
        prefixed = ", ".join(f"t.{c.strip()}" for c in COLUMNS.split(","))  # keeps "offset" quoted
        query = (
            f"SELECT {prefixed}, "
            "(SELECT count(*) FROM chunks c WHERE c.file_id = t.file_id "
            " AND c.state = :committed) AS n_committed, "
            "(SELECT count(*) FROM chunks c WHERE c.file_id = t.file_id "
            " AND c.state = :prepared) AS n_prepared "
            f"FROM transfers t {where} ORDER BY t.timestamp DESC"
        )
        params: dict[str, Any] = {
            "committed": ChunkState.COMMITTED.value,
            "prepared": ChunkState.PREPARED.value,
        }
        if file_id_prefix:
            params.update(n=len(file_id_prefix), prefix=file_id_prefix)
        with self.db.transaction() as tx:
            rows = tx.rows(query, params)
            locks = tx.rows("SELECT file_id, host, pid, started FROM transfer_locks")
        owners = {
            lock["file_id"]: LockOwner(lock["host"], int(lock["pid"]), lock["started"])
            for lock in locks
            if lock["file_id"]
        }
        result = []
        for row in rows:
            record = _record(row)
            total = chunk_count(record.size, record.chunk_size)
            owner = owners.get(record.file_id)
            counts = ChunkCounts(int(row["n_committed"] or 0), int(row["n_prepared"] or 0), total)
            result.append(
                TransferSummary(record, counts, running=owner is not None and owner.alive())
            )
        return result

    # -- locks -----------------------------------------------------------------------------------

    def lock(self, key: str, owner: LockOwner) -> LockOwner | None:
        """Take the lock ``key`` for ``owner``; returns the live holder instead if there is one.

        A lock left by a dead process is taken over. Atomic: SQLite transactions here begin
        with the write lock held, and on other databases the row is locked while it is read.
        """
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT host, pid, started FROM transfer_locks WHERE key = :key", {"key": key}
            )
            if rows:
                holder = LockOwner(rows[0]["host"], int(rows[0]["pid"]), rows[0]["started"])
                if holder != owner and holder.alive():
                    return holder
                tx.run("DELETE FROM transfer_locks WHERE key = :key", {"key": key})
            tx.run(
                "INSERT INTO transfer_locks (key, file_id, host, pid, started, since) "
                "VALUES (:key, NULL, :host, :pid, :started, :since)",
                {
                    "key": key,
                    "host": owner.host,
                    "pid": owner.pid,
                    "started": owner.started,
                    "since": utcnow(),
                },
            )
        return None

    def lock_transfer(self, key: str, file_id: str) -> None:
        """Note which transfer the lock ``key`` is working on (``resume status`` shows it)."""
        with self.db.transaction() as tx:
            tx.run(
                "UPDATE transfer_locks SET file_id = :file_id WHERE key = :key",
                {"file_id": file_id, "key": key},
            )

    def unlock(self, keys: Iterable[str], owner: LockOwner) -> None:
        """Release locks ``owner`` holds."""
        with self.db.transaction() as tx:
            tx.run_many(
                "DELETE FROM transfer_locks WHERE key = :key AND pid = :pid AND host = :host",
                [{"key": key, "pid": owner.pid, "host": owner.host} for key in keys],
            )

    def holder(self, file_id: str) -> LockOwner | None:
        """The live process working on transfer ``file_id``, if any."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT host, pid, started FROM transfer_locks WHERE file_id = :id",
                {"id": file_id},
            )
        for row in rows:
            owner = LockOwner(row["host"], int(row["pid"]), row["started"])
            if owner.alive():
                return owner
        return None


INSERT_CHUNK = (
    'INSERT INTO chunks (file_id, chunk_index, "offset", length, checksum, state, timestamp) '
    "VALUES (:file_id, :chunk_index, :offset, :length, :checksum, :state, :timestamp)"
)


def _chunk_row(
    file_id: str, ledger: Ledger, index: int, checksum: str | None, state: ChunkState, now: Any
) -> dict[str, Any]:
    spec = ledger.spec(index)
    return {
        "file_id": file_id,
        "chunk_index": index,
        "offset": spec.offset,
        "length": spec.length,
        "checksum": checksum,
        "state": state.value,
        "timestamp": now,
    }
