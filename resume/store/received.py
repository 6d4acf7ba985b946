"""Persistence of incoming files, their durable chunks and their names (the server side).

Ownership is fenced here: :meth:`ReceivedRepository.claim` gives a new owner the next epoch of
a file, and every later write of that owner (chunks, the publish intent) runs in a transaction
that first checks the epoch is still the file's. An owner that was taken over gets
:class:`resume.errors.Fenced` and records nothing. Names are claimed in ``upload_names`` in the
same transaction that creates the file, so two uploads can never own one name, even from two
server nodes.

**Leases (several nodes).** The owner node's claim holds a lease (``owner``, ``lease_until``,
on the database's clock) that it renews while receiving (:meth:`ReceivedRepository.renew`,
and every chunk commit). A claim from another node while the lease runs is refused with
:class:`LeaseHeld`; once it lapsed (the node died, or stopped hearing from its client) the
claim raises the epoch and the old owner is fenced on its next write, paused or not. A node
whose connection ends releases the lease at once, so its client continues elsewhere without
waiting. With one node (SQLite, the root locked) there is nobody to wait for: ``shared=False``
ignores leases left by a crashed predecessor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from resume.errors import Fenced, StoreError
from resume.store.errors import store_errors
from resume.store.models import (
    HttpUpload,
    ReceivedChunk,
    ReceivedFile,
    ReceiveState,
    UploadName,
    utcnow,
)
from resume.store.shared import db_now

FILES = ReceivedFile.__table__
HTTP = HttpUpload.__table__
CHUNKS = ReceivedChunk.__table__
NAMES = UploadName.__table__
UNFINISHED = (ReceiveState.RECEIVING.value, ReceiveState.PUBLISHING.value)


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
    epoch: int
    owner: str | None
    lease_until: dt.datetime | None
    overwrite: bool
    published_inode: int | None
    published_mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class HttpRecord:
    """A row of ``http_uploads``: what an upload over HTTP adds to its file."""

    file_id: str
    url_id: str
    metadata_header: str | None
    length_deferred: bool
    concat: str | None  # "partial", "final" or None
    parts: str | None  # a final upload's partial upload (URL) ids, space-separated
    digest: str | None  # an IETF Repr-Digest to check once the upload is complete


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk the server wrote and fsynced, about to be recorded."""

    index: int
    offset: int
    length: int
    checksum: str


@dataclass(frozen=True, slots=True)
class NameTaken:
    """``claim`` refused: another unfinished upload owns the name."""

    holder: str  # its file id
    since: dt.datetime  # when it last changed


@dataclass(frozen=True, slots=True)
class LeaseHeld:
    """``claim`` refused: another node holds a lease on the file that has not lapsed."""

    holder: str  # the node id
    remaining: float  # seconds until it lapses unless renewed


def _record(row: Row) -> ReceivedRecord:
    values = dict(row._mapping)
    values["state"] = ReceiveState(values["state"])
    values["overwrite"] = bool(values["overwrite"])
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
            return self._get(conn, file_id)

    def claim(
        self,
        *,
        file_id: str,
        name: str,
        size: int,
        chunk_size: int,
        owner: str,
        overwrite: bool = False,
        lease: float | None = None,
        shared: bool = False,
        claim_name: bool = True,
        http: dict[str, object] | None = None,
    ) -> ReceivedRecord | NameTaken | LeaseHeld:
        """Make ``owner`` (a node) the owner of a receiving file, creating it (and its name).

        Returns the record with the owner's new epoch, or :class:`NameTaken` when the file is
        new and another unfinished upload holds the name. The caller checks beforehand that an
        existing record matches (name, size, chunk size) and is still receiving. ``lease``:
        seconds the claim holds unless renewed. With ``shared``, another node's live lease
        refuses the claim (:class:`LeaseHeld`). A tus partial upload is never published, so it
        claims no name (``claim_name=False``); an upload over HTTP records its
        ``http_uploads`` row (``http``: its columns) with the file.
        """
        now = utcnow()
        try:
            with store_errors(), self.engine.begin() as conn:
                clock = db_now(conn)
                existing = self._get(conn, file_id, lock=shared)
                if (
                    shared
                    and existing is not None
                    and existing.owner not in (None, owner)
                    and existing.lease_until is not None
                    and existing.lease_until > clock
                ):
                    left = (existing.lease_until - clock).total_seconds()
                    return LeaseHeld(existing.owner or "", left)
                if shared and existing is not None and existing.state is not ReceiveState.RECEIVING:
                    return existing  # another node finished or cancelled it meanwhile
                if existing is None:
                    holder = (
                        conn.execute(select(NAMES).where(UploadName.name == name)).first()
                        if claim_name
                        else None
                    )
                    if holder is not None:
                        return NameTaken(holder.file_id, holder.timestamp)
                    conn.execute(
                        FILES.insert().values(
                            file_id=file_id,
                            name=name,
                            size=size,
                            chunk_size=chunk_size,
                            checksum=None,
                            state=ReceiveState.RECEIVING.value,
                            offset=0,
                            created_at=now,
                            timestamp=now,
                            epoch=0,
                            overwrite=overwrite,
                        )
                    )
                    # Unique: another node inserting the same name at once makes this fail.
                    if claim_name:
                        conn.execute(
                            NAMES.insert().values(name=name, file_id=file_id, timestamp=now)
                        )
                    if http is not None:
                        conn.execute(HTTP.insert().values(file_id=file_id, **http))
                conn.execute(
                    update(ReceivedFile)
                    .where(ReceivedFile.file_id == file_id)
                    .values(
                        epoch=ReceivedFile.epoch + 1,
                        owner=owner,
                        lease_until=clock + dt.timedelta(seconds=lease) if lease else None,
                        overwrite=overwrite,
                        timestamp=now,
                    )
                )
                claimed = self._get(conn, file_id)
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            holder = self.name_holder(name)  # lost a race for the name (or the id) to a peer
            if holder is not None and holder.holder != file_id:
                return holder
            raise
        assert claimed is not None
        return claimed

    def foreign_lease(self, file_id: str, node: str) -> LeaseHeld | None:
        """The live lease another node than ``node`` holds on the file, if any."""
        with store_errors(), self.engine.begin() as conn:
            record = self._get(conn, file_id)
            if record is None or record.owner in (None, node) or record.lease_until is None:
                return None
            left = (record.lease_until - db_now(conn)).total_seconds()
        return LeaseHeld(record.owner or "", left) if left > 0 else None

    def name_holder(self, name: str) -> NameTaken | None:
        """The unfinished upload that owns ``name``, if any."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(select(NAMES).where(UploadName.name == name)).first()
        return NameTaken(row.file_id, row.timestamp) if row else None

    def held(self, file_id: str) -> dict[int, str]:
        """Every durable chunk of a file: index -> checksum."""
        query = select(ReceivedChunk.chunk_index, ReceivedChunk.checksum).where(
            ReceivedChunk.file_id == file_id
        )
        with store_errors(), self.engine.begin() as conn:
            return {index: checksum for index, checksum in conn.execute(query)}

    def record_chunks(
        self,
        file_id: str,
        epoch: int,
        chunks: Sequence[StoredChunk],
        offset: int,
        *,
        lease: float | None = None,
    ) -> None:
        """Record fsynced chunks (replacing older rows of the same index) and the new offset.

        Raises :class:`Fenced`, recording nothing, when ``epoch`` is no longer the file's.
        An appended upload may record only a new offset (its stream ended inside a chunk).
        With ``lease``, the owner's lease is renewed for that many seconds in the same commit.
        """
        latest = {c.index: c for c in chunks}  # a chunk sent twice in one batch: the last wins
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            renewal = {"lease_until": db_now(conn) + dt.timedelta(seconds=lease)} if lease else {}
            self._fence(conn, file_id, epoch, offset=offset, timestamp=now, **renewal)
            if not latest:
                return
            conn.execute(
                delete(ReceivedChunk).where(
                    ReceivedChunk.file_id == file_id, ReceivedChunk.chunk_index.in_(list(latest))
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
                    for c in latest.values()
                ],
            )

    def declare_size(self, file_id: str, epoch: int, size: int) -> None:
        """An upload whose length was deferred now has one; fenced."""
        with store_errors(), self.engine.begin() as conn:
            self._fence(conn, file_id, epoch, size=size, timestamp=utcnow())
            conn.execute(
                update(HttpUpload)
                .where(HttpUpload.file_id == file_id)
                .values(length_deferred=False)
            )

    def set_digest(self, file_id: str, epoch: int, digest: str) -> None:
        """The ``Repr-Digest`` an HTTP upload must match when complete; fenced."""
        with store_errors(), self.engine.begin() as conn:
            self._fence(conn, file_id, epoch, timestamp=utcnow())
            conn.execute(
                update(HttpUpload).where(HttpUpload.file_id == file_id).values(digest=digest)
            )

    def renew(self, file_id: str, epoch: int, lease: float) -> None:
        """Extend the lease of the owner with ``epoch`` by ``lease`` seconds; fenced."""
        with store_errors(), self.engine.begin() as conn:
            until = db_now(conn) + dt.timedelta(seconds=lease)
            self._fence(conn, file_id, epoch, lease_until=until)

    def release(self, file_id: str, epoch: int) -> None:
        """The owner with ``epoch`` lets go: its lease ends now (another node may claim)."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id, ReceivedFile.epoch == epoch)
                .values(lease_until=None)
            )

    def begin_publish(self, file_id: str, epoch: int, checksum: str, overwrite: bool) -> None:
        """Record the intent to publish a verified file (before the rename); fenced."""
        with store_errors(), self.engine.begin() as conn:
            self._fence(
                conn,
                file_id,
                epoch,
                state=ReceiveState.PUBLISHING.value,
                checksum=checksum,
                overwrite=overwrite,
                timestamp=utcnow(),
            )

    def complete(self, file_id: str, *, inode: int, mtime_ns: int) -> None:
        """Record a file as verified and in place; its chunks and name claim go."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(delete(UploadName).where(UploadName.file_id == file_id))
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(
                    state=ReceiveState.COMPLETED.value,
                    owner=None,
                    lease_until=None,
                    published_inode=inode,
                    published_mtime_ns=mtime_ns,
                    timestamp=utcnow(),
                )
            )

    def cancel(self, file_id: str) -> None:
        """Mark a file cancelled, fence every owner, forget its chunks and free its name."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(delete(UploadName).where(UploadName.file_id == file_id))
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(
                    state=ReceiveState.CANCELLED.value,
                    epoch=ReceivedFile.epoch + 1,
                    owner=None,
                    lease_until=None,
                    offset=0,
                    timestamp=utcnow(),
                )
            )

    def forget_chunks(self, file_id: str) -> None:
        """The partial data is gone: no chunk is held; the file is receiving again."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(state=ReceiveState.RECEIVING.value, offset=0, timestamp=utcnow())
            )

    def abort_publish(self, file_id: str) -> None:
        """The publish did not happen (destination refused, crash before the rename): the file
        is receiving again with every chunk it held."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                update(ReceivedFile)
                .where(ReceivedFile.file_id == file_id)
                .values(state=ReceiveState.RECEIVING.value, timestamp=utcnow())
            )

    def count_unfinished_http(self) -> int:
        """How many uploads over HTTP are still receiving (tus partial uploads included)."""
        query = (
            select(func.count())
            .select_from(FILES.join(HTTP, ReceivedFile.file_id == HttpUpload.file_id))
            .where(ReceivedFile.state.in_(UNFINISHED))
        )
        with store_errors(), self.engine.begin() as conn:
            return int(conn.execute(query).scalar_one())

    def unfinished(self) -> list[ReceivedRecord]:
        """Every file still receiving or being published."""
        query = select(FILES).where(ReceivedFile.state.in_(UNFINISHED))
        with store_errors(), self.engine.begin() as conn:
            return [_record(row) for row in conn.execute(query)]

    def idle_since(self, before: dt.datetime) -> list[ReceivedRecord]:
        """Files still receiving whose last change is older than ``before`` and which no node
        holds a live lease on."""
        with store_errors(), self.engine.begin() as conn:
            query = select(FILES).where(*self._idle(conn, before))
            return [_record(row) for row in conn.execute(query)]

    def http(self, file_id: str) -> HttpRecord | None:
        """What an upload over HTTP adds to its file row (None for WebSocket uploads)."""
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(select(HTTP).where(HttpUpload.file_id == file_id)).first()
        if row is None:
            return None
        values = dict(row._mapping)
        values["length_deferred"] = bool(values["length_deferred"])
        return HttpRecord(**values)

    def delete_if_idle(self, file_id: str, before: dt.datetime) -> bool:
        """Forget a file (as :meth:`delete`) only if it is still idle; whether it went.

        A node that claimed the file meanwhile has moved its timestamp: nothing is deleted.
        """
        with store_errors(), self.engine.begin() as conn:
            row = conn.execute(
                select(FILES.c.file_id).where(FILES.c.file_id == file_id, *self._idle(conn, before))
            ).first()
            if row is None:
                return False
            conn.execute(delete(HttpUpload).where(HttpUpload.file_id == file_id))
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(delete(UploadName).where(UploadName.file_id == file_id))
            conn.execute(delete(ReceivedFile).where(ReceivedFile.file_id == file_id))
            return True

    @staticmethod
    def _idle(conn: Connection, before: dt.datetime) -> tuple[Any, ...]:
        return (
            ReceivedFile.state == ReceiveState.RECEIVING.value,
            ReceivedFile.timestamp < before,
            or_(ReceivedFile.lease_until.is_(None), ReceivedFile.lease_until < db_now(conn)),
        )

    def delete(self, file_id: str) -> None:
        """Forget a file, its chunks and its name claim entirely."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(HttpUpload).where(HttpUpload.file_id == file_id))
            conn.execute(delete(ReceivedChunk).where(ReceivedChunk.file_id == file_id))
            conn.execute(delete(UploadName).where(UploadName.file_id == file_id))
            conn.execute(delete(ReceivedFile).where(ReceivedFile.file_id == file_id))

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, file_id: str, *, lock: bool = False) -> ReceivedRecord | None:
        query = select(FILES).where(ReceivedFile.file_id == file_id)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()  # two nodes claiming at once: one after the other
        row = conn.execute(query).first()
        return _record(row) if row else None

    @staticmethod
    def _fence(conn: Connection, file_id: str, epoch: int, **values: object) -> None:
        """Update the file only if ``epoch`` still owns it; raise :class:`Fenced` otherwise."""
        result = conn.execute(
            update(ReceivedFile)
            .where(
                ReceivedFile.file_id == file_id,
                ReceivedFile.epoch == epoch,
                ReceivedFile.state.in_(UNFINISHED),
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise Fenced(f"file {file_id}: epoch {epoch} no longer owns it")
