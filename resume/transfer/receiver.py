"""The server side of uploads: the ``/upload`` endpoint of `resume serve`.

For every chunk: check its header and checksum, write it at its offset in a partial file under
``<root>/.resume/partial/``, and hand it to a flusher that fsyncs and records a whole group of
chunks at once in the server's store (``synchronous=FULL``) before acking them. The receive loop
keeps writing while the flusher syncs, so the fsync cost overlaps with receiving.

On ``finish``: wait until everything is durable, check the whole-file xxh3-128 (hashed
incrementally as chunks arrive in order, read back from disk otherwise), then fsync and rename
atomically into ``<root>/<name>``.

This module is the boundary where the server's OS errors become wire errors: ENOSPC is
``disk_full``, other I/O failures ``storage``; the connection ends, the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from resume.errors import ProtocolError, StoreError
from resume.housekeeping import Housekeeping
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.protocol.ledger import chunk_count
from resume.protocol.upload import (
    HEADER_SIZE,
    Begin,
    ChunkHeader,
    ErrorCode,
    check_file_id,
    held_to_json,
    parse_chunk,
    remote_name_problem,
)
from resume.store import Store
from resume.store.models import ReceiveState, utcnow
from resume.store.received import ReceivedRecord, StoredChunk
from resume.transfer.partial import PartialFile

log = logging.getLogger("resume.receiver")


class Refused(Exception):
    """A request the server declines with an ``error`` message (the connection may go on)."""

    def __init__(self, code: ErrorCode, message: str, *, fatal_to_connection: bool = False):
        super().__init__(message)
        self.code = code
        self.fatal_to_connection = fatal_to_connection


def storage_refusal(exc: OSError, what: str) -> Refused:
    """Translate a server-side OS error into the error the client is told about."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Refused(
            ErrorCode.DISK_FULL,
            f"server has no space left for {what}",
            fatal_to_connection=True,
        )
    return Refused(
        ErrorCode.STORAGE,
        f"server storage error on {what}: {exc.strerror}",
        fatal_to_connection=True,
    )


@dataclass(eq=False)
class IncomingFile:
    """One file being received on one connection."""

    record: ReceivedRecord
    partial: PartialFile
    held: dict[int, str]  # durable chunks: index -> checksum
    owner: Connection
    unsynced: list[StoredChunk] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    hasher: Any = field(default_factory=xxhash.xxh3_128)
    hashed_chunks: int = 0  # chunks [0, hashed_chunks) are in ``hasher``
    hashed_sums: dict[int, str] = field(default_factory=dict)
    hasher_valid: bool = True
    failure: Refused | None = None
    flusher: asyncio.Task[None] | None = None
    # Held while a write is in a worker thread, so release() never closes the descriptor under
    # it (a reused descriptor number could otherwise receive a stale write).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: bool = False

    @property
    def file_id(self) -> str:
        return self.record.file_id

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.record.size, self.record.chunk_size)

    def expected_length(self, index: int) -> int:
        return min(self.record.chunk_size, self.record.size - index * self.record.chunk_size)

    def contiguous_offset(self) -> int:
        n = 0
        while n in self.held:
            n += 1
        return min(n * self.record.chunk_size, self.record.size)


class UploadEndpoint:
    """Receives uploads into ``root``; mount it at ``/upload``."""

    def __init__(
        self,
        store: Store,
        root: Path,
        *,
        max_file_size: int | None = None,
        max_chunk_size: int = 64 * 2**20,
        expire: float | None = 7 * 86400,
    ) -> None:
        self.repo = store.received
        self.root = root
        self.partial_dir = root / ".resume" / "partial"
        self.max_file_size = max_file_size
        self.max_chunk_size = max_chunk_size
        self.max_message_size = max_chunk_size + HEADER_SIZE
        self.expire = expire
        self.active: dict[str, IncomingFile] = {}
        self.connections: set[Connection] = set()
        self._expiry = Housekeeping(
            self.expire_idle,
            age=expire,
            what="expiring idle partial uploads",
            errors=(OSError, StoreError),
        )

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one client connection until it ends."""
        self._expiry.ensure_started()
        handler = Connection(self, connection)
        self.connections.add(handler)
        try:
            await handler.run()
        finally:
            self.connections.discard(handler)

    async def close(self) -> None:
        """Stop the expiry task (connections are closed by the server)."""
        await self._expiry.stop()

    def partial_path(self, file_id: str) -> Path:
        return self.partial_dir / f"{file_id}.part"

    def final_path(self, name: str) -> Path:
        """Where ``name`` lands, refusing anything that resolves outside the root."""
        problem = remote_name_problem(name)
        if problem:
            raise Refused(ErrorCode.BAD_NAME, f"refused name {name!r}: {problem}")
        root = os.path.realpath(self.root)
        final = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, final]) != root or final == root:
            raise Refused(ErrorCode.BAD_NAME, f"refused name {name!r}: escapes the root")
        return Path(final)

    async def expire_idle(self) -> int:
        """Remove partial uploads idle longer than ``expire``; returns how many went."""
        if not self.expire:
            return 0
        before = utcnow() - dt.timedelta(seconds=self.expire)
        stale = await asyncio.to_thread(self.repo.idle_since, before)
        removed = 0
        for record in stale:
            if record.file_id in self.active:
                continue
            await asyncio.to_thread(self._drop, record.file_id)
            log.info("expired partial upload %s (%s)", record.file_id, record.name)
            removed += 1
        return removed

    def _drop(self, file_id: str) -> None:
        self.partial_path(file_id).unlink(missing_ok=True)
        self.repo.delete(file_id)


class Connection:
    """One client connection to ``/upload``: any number of files, one after another."""

    def __init__(self, endpoint: UploadEndpoint, websocket: ServerConnection) -> None:
        self.endpoint = endpoint
        self.ws = websocket
        self.files: dict[str, IncomingFile] = {}

    async def run(self) -> None:
        try:
            async for message in self.ws:
                try:
                    if isinstance(message, str):
                        await self.on_control(frames.decode(message))
                    else:
                        await self.on_chunk(message)
                except Refused as refusal:
                    await self.refuse(refusal)
                    if refusal.fatal_to_connection:
                        await self.ws.close(CloseCode.NORMAL, refusal.code)
                        break
        except ProtocolError as exc:
            log.warning("closing %s: %s", self.ws.remote_address, exc)
            await self.ws.close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])
        except ConnectionClosed:
            pass
        finally:
            for incoming in list(self.files.values()):
                await self.release(incoming)

    async def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frames.encode(message))

    async def refuse(self, refusal: Refused, file_id: str | None = None) -> None:
        message = {"type": "error", "code": refusal.code.value, "message": str(refusal)}
        if file_id:
            message["file_id"] = file_id
        log.info("refused: %s", refusal)
        await self.send(message)

    # -- control messages ----------------------------------------------------------------------

    async def on_control(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "begin":
            await self.on_begin(Begin.parse(message))
        elif kind == "finish":
            await self.on_finish(
                check_file_id(message.get("file_id")), frames.field(message, "checksum", str)
            )
        elif kind == "cancel":
            await self.on_cancel(check_file_id(message.get("file_id")))
        else:
            raise ProtocolError(
                f"unknown message type {kind!r}", close_code=CloseCode.PROTOCOL_ERROR
            )

    async def on_begin(self, begin: Begin) -> None:
        endpoint = self.endpoint
        endpoint.final_path(begin.name)  # refuse bad names before touching anything
        if endpoint.max_file_size is not None and begin.size > endpoint.max_file_size:
            raise Refused(
                ErrorCode.TOO_LARGE,
                f"{begin.name}: {begin.size} bytes is over the server's limit of "
                f"{endpoint.max_file_size}",
            )
        if begin.chunk_size > endpoint.max_chunk_size:
            raise Refused(
                ErrorCode.TOO_LARGE,
                f"chunk size {begin.chunk_size} is over the server's limit of "
                f"{endpoint.max_chunk_size}",
            )
        previous = endpoint.active.get(begin.file_id)
        if previous is not None:  # a reconnecting client whose old connection is not dead yet
            await previous.owner.release(previous)
            if previous.owner is not self:
                await previous.owner.ws.close(
                    CloseCode.POLICY_VIOLATION, "file taken over by a newer connection"
                )
        record = await asyncio.to_thread(endpoint.repo.get, begin.file_id)
        if record is not None and (
            (record.name, record.size, record.chunk_size)
            != (begin.name, begin.size, begin.chunk_size)
        ):
            raise Refused(
                ErrorCode.MISMATCH,
                f"file {begin.file_id} was begun as {record.name!r} ({record.size} bytes, "
                f"chunks of {record.chunk_size}), not as {begin.name!r}",
            )
        # contract: see /work/coord/CONTRACT.md (interim, until the server machine rewrite)
        if record is not None and record.state is ReceiveState.COMPLETED:
            reply = await asyncio.to_thread(self.published_state, record, begin.verify)
            await self.send({"type": "state", "file_id": begin.file_id, "held": [], **reply})
            return
        if (
            record is None
            and not begin.overwrite
            and await asyncio.to_thread(os.path.lexists, endpoint.final_path(begin.name))
        ):
            raise Refused(ErrorCode.EXISTS, f"{begin.name} exists on the server")
        # end contract
        if record is not None and record.state is not ReceiveState.RECEIVING:
            await self.send(
                {"type": "state", "file_id": begin.file_id, "state": record.state.value, "held": []}
            )
            return
        if record is None:
            record = await asyncio.to_thread(
                endpoint.repo.create,
                file_id=begin.file_id,
                name=begin.name,
                size=begin.size,
                chunk_size=begin.chunk_size,
            )
        try:
            partial = await asyncio.to_thread(
                PartialFile, endpoint.partial_path(begin.file_id), begin.size
            )
        except OSError as exc:
            raise storage_refusal(exc, begin.name) from exc
        held = await asyncio.to_thread(endpoint.repo.held, begin.file_id)
        incoming = IncomingFile(record=record, partial=partial, held=held, owner=self)
        incoming.idle.set()
        incoming.flusher = asyncio.create_task(self.flush_forever(incoming))
        self.files[begin.file_id] = incoming
        endpoint.active[begin.file_id] = incoming
        await self.send(
            {
                "type": "state",
                "file_id": begin.file_id,
                "state": ReceiveState.RECEIVING.value,
                "held": held_to_json(held),
            }
        )

    def published_state(self, record: ReceivedRecord, verify: bool) -> dict[str, Any]:
        """contract: see /work/coord/CONTRACT.md. Whether the file published under
        ``record.name`` is still the one verified at publish: same size, not modified after
        the publish (no size/mtime/inode are recorded yet), and with ``verify`` re-hashed."""
        try:
            final = self.endpoint.final_path(record.name)
            st = os.stat(final)
        except (OSError, Refused):
            return {"state": "missing"}
        published = record.timestamp.replace(tzinfo=dt.UTC).timestamp()
        if not stat.S_ISREG(st.st_mode) or st.st_size != record.size or st.st_mtime > published:
            return {"state": "missing"}
        if verify:
            hasher = xxhash.xxh3_128()
            with open(final, "rb") as f:
                while block := f.read(8 * 2**20):
                    hasher.update(block)
            if hasher.hexdigest() != record.checksum:
                return {"state": "missing"}
        return {"state": "completed", "verified": verify}

    async def on_finish(self, file_id: str, checksum: str) -> None:
        incoming = self.files.get(file_id)
        if incoming is None:
            raise Refused(ErrorCode.UNKNOWN_FILE, f"finish for {file_id}, which is not begun here")
        await self.drain(incoming)
        missing = incoming.chunk_count - len(incoming.held)
        if missing:
            raise Refused(ErrorCode.INCOMPLETE, f"{incoming.record.name}: {missing} chunks missing")
        final = self.endpoint.final_path(incoming.record.name)
        actual = await asyncio.to_thread(self.whole_checksum, incoming)
        if actual != checksum:
            # The chunks all matched but the whole does not: drop everything rather than keep
            # bytes we cannot vouch for; the client starts this file over.
            await self.release(incoming)
            await asyncio.to_thread(self.endpoint.repo.cancel, file_id)
            incoming.partial.remove()
            raise Refused(
                ErrorCode.CHECKSUM_MISMATCH,
                f"{incoming.record.name}: received data hashes to {actual}, client says {checksum}",
            )
        try:
            await asyncio.to_thread(incoming.partial.publish, final)
        except OSError as exc:
            raise storage_refusal(exc, incoming.record.name) from exc
        await asyncio.to_thread(self.endpoint.repo.finish, file_id, checksum)
        await self.release(incoming)
        log.info("received %s (%d bytes)", incoming.record.name, incoming.record.size)
        await self.send({"type": "done", "file_id": file_id, "name": incoming.record.name})

    async def on_cancel(self, file_id: str) -> None:
        incoming = self.endpoint.active.get(file_id)
        if incoming is not None:
            await incoming.owner.release(incoming)
        record = await asyncio.to_thread(self.endpoint.repo.get, file_id)
        if record is not None and record.state is ReceiveState.RECEIVING:
            await asyncio.to_thread(self.endpoint.repo.cancel, file_id)
            self.endpoint.partial_path(file_id).unlink(missing_ok=True)
        await self.send({"type": "cancelled", "file_id": file_id})

    # -- chunks ----------------------------------------------------------------------------------

    async def on_chunk(self, frame: bytes) -> None:
        header, payload = parse_chunk(frame)
        incoming = self.files.get(header.file_id)
        if incoming is None:
            raise ProtocolError(
                f"chunk for file {header.file_id}, which is not begun on this connection",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        if incoming.failure is not None:
            raise incoming.failure
        self.check_chunk(incoming, header, len(payload))
        async with incoming.lock:
            if incoming.released:  # taken over by a newer connection while we waited
                raise ProtocolError(
                    f"file {header.file_id} was taken over by a newer connection",
                    close_code=CloseCode.POLICY_VIOLATION,
                )
            try:
                stored = await asyncio.to_thread(self.store_chunk, incoming, header, payload)
            except OSError as exc:
                raise storage_refusal(exc, incoming.record.name) from exc
        if not stored:
            log.warning("chunk %d of %s failed its checksum", header.index, header.file_id)
            await self.send(
                {
                    "type": "nack",
                    "file_id": header.file_id,
                    "index": header.index,
                    "reason": "checksum mismatch",
                }
            )
            return
        incoming.unsynced.append(
            StoredChunk(header.index, header.offset, len(payload), header.checksum)
        )
        incoming.idle.clear()
        incoming.wake.set()

    def store_chunk(self, incoming: IncomingFile, header: ChunkHeader, payload: Any) -> bool:
        """Verify and write one chunk (in a worker thread); False if its checksum is wrong."""
        if xxhash.xxh3_64_hexdigest(payload) != header.checksum:
            return False
        incoming.partial.write(header.offset, payload)
        self.hash_in_order(incoming, header.index, header.checksum, payload)
        return True

    @staticmethod
    def check_chunk(incoming: IncomingFile, header: ChunkHeader, length: int) -> None:
        if not 0 <= header.index < incoming.chunk_count:
            raise ProtocolError(
                f"chunk index {header.index} out of range", close_code=CloseCode.PROTOCOL_ERROR
            )
        if header.offset != header.index * incoming.record.chunk_size:
            raise ProtocolError(
                f"chunk {header.index} at offset {header.offset}, expected "
                f"{header.index * incoming.record.chunk_size}",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        if length != incoming.expected_length(header.index):
            raise ProtocolError(
                f"chunk {header.index} has {length} bytes, expected "
                f"{incoming.expected_length(header.index)}",
                close_code=CloseCode.PROTOCOL_ERROR,
            )

    @staticmethod
    def hash_in_order(incoming: IncomingFile, index: int, checksum: str, payload: Any) -> None:
        """Feed the whole-file hasher while chunks arrive in order, so finish need not re-read."""
        if index == incoming.hashed_chunks and incoming.hasher_valid:
            incoming.hasher.update(payload)
            incoming.hashed_sums[index] = checksum
            incoming.hashed_chunks += 1
        elif index < incoming.hashed_chunks and incoming.hashed_sums.get(index) != checksum:
            incoming.hasher_valid = False  # an already-hashed chunk was replaced

    @staticmethod
    def whole_checksum(incoming: IncomingFile) -> str:
        if incoming.hasher_valid and incoming.hashed_chunks == incoming.chunk_count:
            return incoming.hasher.hexdigest()
        return incoming.partial.checksum()

    # -- durability ------------------------------------------------------------------------------

    async def flush_forever(self, incoming: IncomingFile) -> None:
        """Group commit: fsync and record whatever was written since the last round, then ack."""
        while True:
            await incoming.wake.wait()
            incoming.wake.clear()
            batch, incoming.unsynced = incoming.unsynced, []
            if not batch:
                incoming.idle.set()
                continue
            try:
                await asyncio.to_thread(self.make_durable, incoming, batch)
            except (OSError, StoreError) as exc:
                error = exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc))
                incoming.failure = storage_refusal(error, incoming.record.name)
                log.error("cannot make %s durable: %s", incoming.record.name, exc)
                await self.refuse(incoming.failure, incoming.file_id)
                await self.ws.close(CloseCode.INTERNAL_ERROR, incoming.failure.code)
                incoming.idle.set()
                return
            await self.send(
                {
                    "type": "ack",
                    "file_id": incoming.file_id,
                    "chunks": [[c.index, c.checksum] for c in batch],
                }
            )
            if not incoming.unsynced:
                incoming.idle.set()

    def make_durable(self, incoming: IncomingFile, batch: list[StoredChunk]) -> None:
        incoming.partial.sync()
        held = dict(incoming.held)
        held.update((c.index, c.checksum) for c in batch)
        offset = 0
        while offset in held:
            offset += 1
        offset = min(offset * incoming.record.chunk_size, incoming.record.size)
        self.endpoint.repo.record_chunks(incoming.file_id, batch, offset)
        incoming.held = held

    async def drain(self, incoming: IncomingFile) -> None:
        """Wait until every chunk written so far is durable and acked."""
        while incoming.unsynced or not incoming.idle.is_set():
            incoming.wake.set()
            await incoming.idle.wait()
        if incoming.failure is not None:
            raise incoming.failure

    async def release(self, incoming: IncomingFile) -> None:
        """Make what was written durable, stop the flusher and close the partial file."""
        if self.files.get(incoming.file_id) is not incoming:
            return
        del self.files[incoming.file_id]
        if self.endpoint.active.get(incoming.file_id) is incoming:
            del self.endpoint.active[incoming.file_id]
        async with incoming.lock:
            incoming.released = True
            with contextlib.suppress(Refused):
                await self.drain(incoming)
            if incoming.flusher is not None:
                incoming.flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await incoming.flusher
            incoming.partial.close()
