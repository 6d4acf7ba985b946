"""SQLAlchemy models of the state store.

Every schema change goes through an Alembic revision in ``migrations/``; a test runs
``alembic check`` so these models and the migrations cannot drift apart.

Timestamps are stored as naive UTC (SQLite has no time zone type); :func:`utcnow` makes them.
Column names stay dialect-neutral so the same models run on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Defined without SQLAlchemy (the client's quick path needs them), re-exported here.
from resume.store.states import ReceiveState as ReceiveState
from resume.store.states import TransferState as TransferState
from resume.store.states import utcnow as utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Transfer(Base):
    """One file being sent from this machine to one server under one remote name."""

    __tablename__ = "transfers"

    file_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_path: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)  # remote name, relative to the server root
    url: Mapped[str] = mapped_column(Text)  # the server as the user spelled it
    # The server as (scheme, resolved host, port, path): ws://localhost:P and ws://127.0.0.1:P/
    # are one server. Null for records written before 0006 (matched by ``url`` then).
    server: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    checksum_algo: Mapped[str] = mapped_column(String(16))
    checksum: Mapped[str | None] = mapped_column(String(64))  # whole file, null until known
    state: Mapped[str] = mapped_column(String(16), index=True)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)  # contiguous committed bytes
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)  # last change
    last_error: Mapped[str | None] = mapped_column(Text)
    # tus transfers: the URL of the file's upload on the server (null until created, and for
    # WebSocket transfers); a --parallel upload's partial uploads are in ``tus_parts``.
    upload_url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(None, "source_path", "url", "name"),
        Index(None, "source_path", "server", "name"),
    )


class TransferLock(Base):
    """Which process is uploading one file to one server under one name right now.

    Taken before the transfer is planned, removed when the run ends. A row left by a process
    that died (pid gone, or reused by another process: the start time differs) is stale and
    is taken over; ``resume status`` shows such a transfer as ``interrupted``.
    """

    __tablename__ = "transfer_locks"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # xxh3-128 of the identity
    file_id: Mapped[str | None] = mapped_column(String(32), index=True)  # once planned
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started: Mapped[str] = mapped_column(String(32))  # the process's start time, from /proc
    since: Mapped[dt.datetime] = mapped_column(DateTime)


class Chunk(Base):
    """One chunk of a transfer that has at least been prepared."""

    __tablename__ = "chunks"

    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("transfers.file_id", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # a resume.protocol.ledger.ChunkState
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class TusPart(Base):
    """One partial upload (tus concatenation) of a transfer sent with ``--parallel``."""

    __tablename__ = "tus_parts"

    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("transfers.file_id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_chunk: Mapped[int] = mapped_column(Integer)  # chunks [first_chunk, end_chunk)
    end_chunk: Mapped[int] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(Text)  # null until the server created it
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class ReceivedFile(Base):
    """Server side: one file being received (or received) under ``<root>``."""

    __tablename__ = "received_files"

    file_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text, index=True)  # relative to the root
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str | None] = mapped_column(String(64))  # whole file, known at finish
    state: Mapped[str] = mapped_column(String(16), index=True)  # a ReceiveState
    offset: Mapped[int] = mapped_column(BigInteger, default=0)  # contiguous durable bytes
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)  # last chunk or change
    # Ownership: every new owner raises the epoch; every write checks it (a fence), so an owner
    # that was taken over can never record anything again.
    epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    owner: Mapped[str | None] = mapped_column(String(64))  # the server node that owns it
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # What was published, so a later run can tell the file under the name is still this one.
    published_inode: Mapped[int | None] = mapped_column(BigInteger)
    published_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)


class HttpUpload(Base):
    """Server side: what an upload over HTTP (tus 1.0, the IETF draft) adds to its file row."""

    __tablename__ = "http_uploads"

    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("received_files.file_id", ondelete="CASCADE"), primary_key=True
    )
    url_id: Mapped[str] = mapped_column(String(32))  # the id in its URL (/files/<url_id>)
    metadata_header: Mapped[str | None] = mapped_column(Text)  # Upload-Metadata, as sent
    length_deferred: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    concat: Mapped[str | None] = mapped_column(String(16))  # "partial" or "final"
    parts: Mapped[str | None] = mapped_column(Text)  # a final upload's partial upload ids, spaced
    digest: Mapped[str | None] = mapped_column(Text)  # Repr-Digest to check when complete


class UploadName(Base):
    """Server side: a destination name claimed by one unfinished upload (one owner per name)."""

    __tablename__ = "upload_names"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("received_files.file_id", ondelete="CASCADE"), index=True
    )
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class ReceivedChunk(Base):
    """Server side: one chunk written, fsynced and verified; only then is it acked."""

    __tablename__ = "received_chunks"

    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("received_files.file_id", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(32))
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


# -- streams ------------------------------------------------------------------------------------
PRODUCER_ID = 255  # a client id (64) namespaced by its principal's quoted sub (at most 128)

# Server side: the durable log of every channel, and what each producer has already stored.


class StreamChannel(Base):
    """Server side: one channel's head and the first seq still retained."""

    __tablename__ = "stream_channels"

    channel: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)  # oldest retained (last_seq + 1 if empty)
    last_seq: Mapped[int] = mapped_column(BigInteger)  # newest ever assigned; never reused
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class StreamMessage(Base):
    """Server side: one published message with its server seq."""

    __tablename__ = "stream_messages"

    channel: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    producer: Mapped[str] = mapped_column(String(PRODUCER_ID))
    producer_seq: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)  # the message as JSON
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)

    __table_args__ = (Index(None, "channel", "timestamp"),)


class StreamProducer(Base):
    """Server side: per (channel, producer), the highest client seq stored and its owner.

    ``client_id`` is the client's id namespaced by its principal (``resume.auth``).
    ``instance`` is the producer instance that owns the id: another instance's messages under
    it are refused, never dropped as replays.
    """

    __tablename__ = "stream_producers"

    channel: Mapped[str] = mapped_column(String(128), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(PRODUCER_ID), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    instance: Mapped[str | None] = mapped_column(String(64))
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)
    # The one live connection of this producer, on whichever node serves it: every append
    # checks it (a connection fenced on another node stores nothing more). It lapses at
    # ``session_until`` unless renewed, so a dead node's session does not hold the id forever.
    session: Mapped[str | None] = mapped_column(String(64))
    session_instance: Mapped[str | None] = mapped_column(String(64))
    session_until: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ServerJob(Base):
    """Server side: when a housekeeping job last ran, and on which node (once across nodes)."""

    __tablename__ = "server_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str | None] = mapped_column(String(64))
    last_run: Mapped[dt.datetime | None] = mapped_column(DateTime)


# Client side (durable mode): the outbox, the seq counter, and each consumer's cursor.


class OutboxMessage(Base):
    """Client side: a message send() accepted and the server has not acknowledged yet."""

    __tablename__ = "stream_outbox"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(512), primary_key=True)  # the channel URL
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class OutboxSequence(Base):
    """Client side: the last seq given out, so seqs are never reused after a restart.

    ``instance`` names this producer to the server (a restart with this store is the same
    producer); ``holder`` is the process producing from it now (a second one fences the first).
    """

    __tablename__ = "stream_sequences"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(512), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    acked_seq: Mapped[int] = mapped_column(BigInteger)  # highest seq the server confirmed
    instance: Mapped[str | None] = mapped_column(String(64))
    holder: Mapped[str | None] = mapped_column(String(32))
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)


class ConsumerCursor(Base):
    """Client side: the last server seq a named consumer has taken from a channel."""

    __tablename__ = "stream_cursors"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    channel: Mapped[str] = mapped_column(String(512), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime)
