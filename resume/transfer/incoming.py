"""One file being received on the server: the pure machine plus its partial file and syncs.

An :class:`Upload` exists once per file id while any connection uses it, whichever connection
owns the file at the moment; a take-over changes the owner, not the object. So there is one
descriptor, one write lock and one group-commit task per file, never two writers:

- ``io`` (an asyncio lock) orders every write, the finish (verify + publish), the cancel and
  the closing of the descriptor: nothing can close the descriptor under a write or a hash, and
  nothing can write once verification began;
- the flusher fsyncs and records, in one store transaction fenced by the owner's epoch, all
  chunks written since its last round, then acks them to whoever owns the file now.

The decisions are :class:`resume.protocol.receive.Reception`'s; this class only does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from resume.crashpoints import crash_point
from resume.errors import Fenced, StoreError, StoreFull
from resume.protocol.geometry import Geometry
from resume.protocol.receive import (
    FinishOutcome,
    FinishVerdict,
    Phase,
    Reception,
    Recovery,
    SyncBatch,
    recovery,
)
from resume.protocol.upload import Begin, ErrorCode
from resume.store.models import ReceiveState
from resume.store.received import HttpRecord, LeaseHeld, NameTaken, ReceivedRecord, StoredChunk
from resume.transfer.partial import PartialFile
from resume.transfer.root import DestinationRefused

if TYPE_CHECKING:
    from resume.transfer.receiver import UploadEndpoint


class Owner(Protocol):
    """Whoever owns a file right now: a WebSocket connection, or one HTTP request."""

    async def send(self, message: dict[str, Any]) -> None:
        """Tell the client (acks; an HTTP request answers at its end instead)."""

    async def refuse(self, refusal: Refused, file_id: str | None = None) -> None:
        """Tell the client its file failed (the group commit could not make it durable)."""

    async def close_after(self, refusal: Refused) -> None:
        """End the exchange after ``refusal``."""

    def lose(self, upload: Upload, why: str) -> None:
        """Another owner took ``upload`` (or it was cancelled): stop writing to it."""


log = logging.getLogger("resume.receiver")


class Refused(Exception):
    """A request the server declines with an ``error`` message (the connection may go on)."""

    def __init__(self, code: ErrorCode, message: str, *, fatal_to_connection: bool = False):
        super().__init__(message)
        self.code = code
        self.fatal_to_connection = fatal_to_connection


def storage_refusal(exc: BaseException, what: str) -> Refused:
    """Translate a server-side OS or store error into what the client is told (no internals)."""
    full = isinstance(exc, StoreFull) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    )
    if full:
        return Refused(
            ErrorCode.DISK_FULL, f"server has no space left for {what}", fatal_to_connection=True
        )
    detail = f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
    return Refused(
        ErrorCode.STORAGE, f"server storage error on {what}{detail}", fatal_to_connection=True
    )


class Upload:
    """One file id on this server: its record, machine, partial file and group commit."""

    def __init__(
        self,
        endpoint: UploadEndpoint,
        file_id: str,
        *,
        wire_id: str | None = None,
        prelude: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.file_id = file_id  # the server's id: the client's, namespaced by its principal
        self.wire_id = wire_id or file_id  # the id its client knows it by
        self.record: ReceivedRecord | None = None
        self.http: HttpRecord | None = None  # uploads over HTTP: what their row adds
        self.reception: Reception | None = None  # None until the file is recorded
        self.partial = PartialFile(endpoint.root.partial_path(file_id), 0)
        self.owner: Owner | None = None
        self.fence = -1  # the store epoch of the current owner
        self.users = 0  # handlers holding this object; it is forgotten only at zero
        self.io = asyncio.Lock()
        self.claiming = asyncio.Lock()  # store claims in the order owners took the file
        self.settled = asyncio.Event()  # clear while verifying and publishing
        self.settled.set()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.failure: Refused | None = None
        self.hasher: Any = xxhash.xxh3_128()
        self.hashed = 0  # chunks [0, hashed) are in ``hasher``
        self.hashed_sums: dict[int, str] = {}
        self.hasher_valid = True
        self.appender: object | None = None  # uploads over HTTP: where the byte stream stands
        # the last sign of its client (when to stop renewing its lease: transfer/leases.py)
        self.active_at = time.monotonic()
        self._flusher: asyncio.Task[None] | None = None
        self.ready = asyncio.ensure_future(self._load(prelude))

    # -- loading and recovery ----------------------------------------------------------------

    async def _load(self, prelude: Callable[[], Awaitable[object]] | None) -> None:
        if prelude is not None:
            await prelude()
        repo, lease = self.endpoint.repo, self.endpoint.lease
        if lease is not None:  # several nodes: let another node's live lease end first
            from resume.transfer.leases import wait_for_lease

            await wait_for_lease(repo, self.file_id, self.endpoint.node_id, lease)
        record = await asyncio.to_thread(repo.get, self.file_id)
        if record is None:
            return
        held: dict[int, str] = {}
        if record.state in (ReceiveState.RECEIVING, ReceiveState.PUBLISHING):
            held = await asyncio.to_thread(repo.held, self.file_id)
        self.http = await asyncio.to_thread(repo.http, self.file_id)
        self._adopt(record, held)
        await self._recover()

    def _adopt(self, record: ReceivedRecord, held: dict[int, str]) -> None:
        self.record = record
        self.partial.size = record.size
        self.reception = Reception(
            record.file_id,
            record.name,
            Geometry(record.size, record.chunk_size),
            phase=Phase(record.state.value),
            held=held,
            checksum=record.checksum,
            overwrite=record.overwrite,
        )
        if self.http is not None:  # appended: its durable stream may end inside a chunk
            self.reception.extent = record.offset
            self.reception.size_known = not self.http.length_deferred

    async def _recover(self) -> None:
        """Make the record agree with the disk after whatever crash left them apart."""
        reception, root, repo = self.require(), self.endpoint.root, self.endpoint.repo
        partial_exists = await asyncio.to_thread(self.partial.exists)
        publishing = reception.phase is Phase.PUBLISHING
        final_is_partial = (
            publishing
            and partial_exists
            and await asyncio.to_thread(root.is_same_file, reception.name, self.partial.path)
        )
        final_matches = (
            publishing
            and not partial_exists
            and await asyncio.to_thread(root.checksum, reception.name) == reception.checksum
        )
        action = recovery(
            reception.phase,
            partial_exists=partial_exists,
            final_is_partial=final_is_partial,
            final_matches=final_matches,
        )
        if action is Recovery.NOTHING:
            return
        if action is Recovery.REMOVE_PARTIAL:  # a crash between a cancel and its unlink
            await asyncio.to_thread(self.partial.remove)
            return
        log.warning("recovering upload %s (%s): %s", self.file_id, reception.name, action.value)
        if action is Recovery.FORGET_CHUNKS:
            await asyncio.to_thread(repo.forget_chunks, self.file_id)
            reception.lose()
        elif action is Recovery.RECEIVE_AGAIN:
            await asyncio.to_thread(repo.abort_publish, self.file_id)
            reception.abort_publish()
        else:
            if action is Recovery.COMPLETE_UNLINK:
                await asyncio.to_thread(root.unlink_partial_link, self.partial.path)
            await self.record_complete()

    async def finish(self, epoch: int, checksum: str | None) -> FinishVerdict:
        """Ask the machine to finish, making written chunks durable first as often as it
        says so (the caller holds ``io``); raises :class:`Refused` if a sync fails."""
        reception = self.require()
        while True:
            verdict = reception.finish(epoch, checksum)
            if verdict.outcome is not FinishOutcome.SYNC_FIRST:
                return verdict
            await self.drain()

    async def publish(self, check: Callable[[], str | None] | None = None) -> None:
        """Verify the whole file, record the intent, put it under its name, record that.

        The machine must be VERIFYING (``finish`` said so); the caller holds ``io``. ``check``
        (run in a thread after the whole-file hash matched) may refuse with a reason, which
        cancels the file like a checksum mismatch. Raises :class:`Refused` (the file is
        cancelled, or back to receiving with every chunk held) or :class:`Fenced`.
        """
        reception, endpoint = self.require(), self.endpoint
        name = reception.name
        self.partial.close()  # no descriptor may outlive the publish of this inode
        try:
            actual = await asyncio.to_thread(self.whole_checksum)
            crash_point("publish.verified")
            claimed = reception.checksum
            verified = reception.verified(actual)
            problem = await asyncio.to_thread(check) if verified and check else None
            if not verified or problem:
                # The chunks all matched but the whole does not: drop everything rather than
                # keep bytes we cannot vouch for; the client starts this file over.
                if reception.phase is not Phase.CANCELLED:
                    reception.abort_publish()
                    reception.cancel()
                await asyncio.to_thread(endpoint.repo.cancel, self.file_id)
                await asyncio.to_thread(self.partial.remove)
                raise Refused(
                    ErrorCode.CHECKSUM_MISMATCH,
                    f"{name}: {problem}"
                    if problem
                    else f"{name}: received data hashes to {actual}, client says {claimed}",
                )
            await asyncio.to_thread(
                endpoint.repo.begin_publish,
                self.file_id,
                self.fence,
                actual,
                reception.overwrite,
            )
            crash_point("publish.intent_recorded")
            await asyncio.to_thread(
                endpoint.root.publish, self.partial.path, name, overwrite=reception.overwrite
            )
        except DestinationRefused as refused:
            reception.abort_publish()
            await asyncio.to_thread(endpoint.repo.abort_publish, self.file_id)
            raise Refused(ErrorCode(refused.code), f"{name}: {refused}") from None
        except Fenced:
            reception.abort_publish()
            raise
        except (OSError, StoreError) as exc:
            if reception.phase in (Phase.VERIFYING, Phase.PUBLISHING):
                reception.abort_publish()
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(endpoint.repo.abort_publish, self.file_id)
            raise storage_refusal(exc, name) from exc
        await self.record_complete()

    async def record_complete(self) -> None:
        reception, root = self.require(), self.endpoint.root
        identity = await asyncio.to_thread(root.identity, reception.name)
        await asyncio.to_thread(
            self.endpoint.repo.complete,
            self.file_id,
            inode=identity.inode if identity else 0,
            mtime_ns=identity.mtime_ns if identity else 0,
        )
        crash_point("publish.recorded")
        reception.published()
        self.record = await asyncio.to_thread(self.endpoint.repo.get, self.file_id)

    def require(self) -> Reception:
        assert self.reception is not None, "upload used before it was recorded"
        return self.reception

    # -- ownership ---------------------------------------------------------------------------

    def create(self, begin: Begin) -> None:
        """A file never recorded: its machine exists in memory until the store claim."""
        self.reception = Reception(self.file_id, begin.name, begin.geometry)
        self.partial.size = begin.size

    def create_appended(self, name: str, geometry: Geometry, *, size_known: bool) -> None:
        """A new upload over HTTP: bytes will be appended from offset 0 (see ``create``)."""
        self.reception = Reception(self.file_id, name, geometry, size_known=size_known)
        self.partial.size = geometry.size

    async def claim(
        self,
        owner: Owner,
        begin: Begin | None = None,
        *,
        claim_name: bool = True,
        http: dict[str, object] | None = None,
    ) -> ReceivedRecord | NameTaken | LeaseHeld:
        """Record ``owner``, which already took the file in memory, in the store.

        Claims run one at a time, in the order the owners took the file, so the store's epoch
        ends at the newest owner's. An owner taken over meanwhile gets its record but no fence.
        Without ``begin`` (uploads over HTTP) the file's machine says what to record. With
        several nodes, another node may have taken the file since it was loaded: then the
        claim returns :class:`LeaseHeld`, or a record that is no longer receiving.
        """
        reception = self.require()
        self.active_at = time.monotonic()
        async with self.claiming:
            result = await asyncio.to_thread(
                self.endpoint.repo.claim,
                file_id=self.file_id,
                name=reception.name,
                size=reception.geometry.size,
                chunk_size=reception.geometry.chunk_size,
                owner=self.endpoint.node_id,
                overwrite=begin.overwrite if begin is not None else reception.overwrite,
                claim_name=claim_name,
                http=http,
                lease=self.endpoint.lease,
                shared=self.endpoint.lease is not None,
            )
            if isinstance(result, ReceivedRecord) and result.state is ReceiveState.RECEIVING:
                self.record = result
                if self.owner is owner:
                    self.fence = result.epoch
                    self.failure = None
            return result

    async def cancel(self, by: Owner | None = None) -> bool:
        """Cancel a receiving file: fence its owner (``lose``, unless it is ``by``, the one
        asking), record the cancellation, remove the data. True if ``by`` owned it."""
        reception = self.require()
        async with self.io:
            with contextlib.suppress(Refused):
                await self.drain()
            owner, self.owner = self.owner, None
            reception.cancel()
            if owner is not None and owner is not by:
                owner.lose(self, "cancelled")
            await asyncio.to_thread(self.endpoint.repo.cancel, self.file_id)
            crash_point("cancel.recorded")
            await asyncio.to_thread(self.partial.remove)
        return by is not None and owner is by

    async def release_lease(self) -> None:
        """No connection of this node owns the file now: end its lease (several nodes)."""
        if self.endpoint.lease is not None and self.fence >= 0 and self.owner is None:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.endpoint.repo.release, self.file_id, self.fence)

    async def lost_elsewhere(self, exc: Fenced) -> None:
        """Another node took the file over (found by a lease renewal): fence our owner."""
        await self._sync_failed(exc)

    def start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        """Stop the group commit and close the descriptor (the object is being forgotten)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        async with self.io:
            self.partial.close()

    # -- chunks ------------------------------------------------------------------------------

    def store_chunk(self, index: int, offset: int, checksum: str, payload: Any) -> bool:
        """Verify and write one chunk (in a worker thread); False if its checksum is wrong."""
        self.active_at = time.monotonic()
        if xxhash.xxh3_64_hexdigest(payload) != checksum:
            return False
        self.partial.write(offset, payload)
        crash_point("chunk.written")
        if index == self.hashed and self.hasher_valid:
            self.hasher.update(payload)
            self.hashed_sums[index] = checksum
            self.hashed += 1
        elif index < self.hashed and self.hashed_sums.get(index) != checksum:
            self.hasher_valid = False  # an already-hashed chunk was replaced
        return True

    def whole_checksum(self) -> str:
        """The whole-file xxh3-128: from the in-order hash, else read back from disk."""
        if self.hasher_valid and self.hashed == self.require().geometry.count:
            return self.hasher.hexdigest()
        return self.partial.checksum()

    def reset_hash(self) -> None:
        self.hasher = xxhash.xxh3_128()
        self.hashed = 0
        self.hashed_sums = {}
        self.hasher_valid = True

    def kick(self) -> None:
        """Chunks were written: let the flusher take them."""
        self.idle.clear()
        self.wake.set()

    async def drain(self) -> None:
        """Wait until every chunk written so far is durable (or its sync failed)."""
        reception = self.require()
        while reception.unsynced or not self.idle.is_set():
            self.kick()
            await self.idle.wait()
        if self.failure is not None:
            raise self.failure

    async def _flush_forever(self) -> None:
        """Group commit: fsync and record whatever was written since the last round, then ack."""
        reception = self.require()
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch = reception.sync_batch()
            if batch is None:
                self.idle.set()
                continue
            try:
                await asyncio.to_thread(self._make_durable, batch)
            except (OSError, StoreError) as exc:
                reception.sync_failed(batch)
                await self._sync_failed(exc)
                continue
            acks = reception.synced(batch)
            owner = self.owner
            if owner is not None:
                await owner.send({"type": "ack", "file_id": self.wire_id, "chunks": acks})
            if not reception.unsynced:
                self.idle.set()

    def _make_durable(self, batch: SyncBatch) -> None:
        reception, metrics = self.require(), self.endpoint.metrics
        with metrics.fsync_seconds.time():
            self.partial.sync()
        crash_point("chunk.synced")
        held = {**reception.held, **dict(batch.chunks)}
        stored = [
            StoredChunk(index, spec.offset, spec.length, checksum)
            for index, checksum in batch.chunks
            for spec in (reception.geometry.spec(index),)
        ]
        offset = max(reception.geometry.contiguous_offset(held), reception.extent, batch.end or 0)
        with metrics.commit_seconds.labels("upload").time():
            self.endpoint.repo.record_chunks(
                self.file_id, self.fence, stored, offset, lease=self.endpoint.lease
            )
        crash_point("chunk.recorded")

    async def _sync_failed(self, exc: BaseException) -> None:
        name = self.require().name
        if isinstance(exc, Fenced):
            self.fence = -1  # another owner holds the store's fence: claim again to go on
            self.failure = Refused(
                ErrorCode.MISMATCH,
                f"{name}: another connection or server node took this upload over",
                fatal_to_connection=True,
            )
        else:
            self.failure = storage_refusal(exc, name)
            log.error("cannot make %s durable: %s", name, exc)
        owner = self.owner
        self.idle.set()
        if owner is not None:
            await owner.refuse(self.failure, self.wire_id)
            await owner.close_after(self.failure)
