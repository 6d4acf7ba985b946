"""The upload engine: send files in pipelined, two-phase-committed chunks; resume after anything.

For each file: ``begin`` tells the server which file this is; its ``state`` reply lists the
chunks it durably holds, which the ledger reconciles with its own records. Then a window of
chunks is kept in flight: each is recorded ``PREPARED`` before its bytes leave and
``COMMITTED`` when the server's ack (sent after fsync) arrives. When every chunk is committed,
``finish`` carries the whole-file xxh3-128 and the server verifies it before renaming the file
into place.

A file finished in an earlier run is not trusted from the local record alone: its ``begin`` is
sent again and the server answers whether the published file is still the one it verified
(``completed``), or is gone or changed (``missing``: the file is sent again as a new transfer).

One policy for what cannot be sent: a file the server refuses, that cannot be read, or that
changed, fails alone (its :class:`FileResult` says why) and the run goes on with the others.
What ends the run: the connection limits, the server unable to store anything (disk full),
a protocol violation, :meth:`Uploader.stop`.

Connections come from the one reconnect loop (:class:`resume.net.connector.Reconnector`):
a dropped connection is retried with backoff, and the next session reconciles again, so at most
one window of chunks is ever sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import xxhash
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from resume.errors import (
    AckTimeout,
    ChecksumMismatch,
    ConnectionLost,
    FileRefused,
    FrameCorrupted,
    Interrupted,
    ProtocolError,
    ResumeError,
    ServerError,
    SourceChanged,
    SourceError,
    UsageError,
    Verdict,
    classify,
)
from resume.net.backoff import Backoff
from resume.net.connector import ConnectionEvent, ConnectOptions, Reconnector, translate
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.protocol.ledger import ChunkRecord, ChunkState, Ledger
from resume.protocol.upload import (
    FILE_ERROR_CODES,
    HEADER_SIZE,
    Begin,
    ChunkHeader,
    ErrorCode,
    held_from_json,
    new_file_id,
)
from resume.store import Store
from resume.store.states import TransferState
from resume.store.transfers import LockOwner, TransferRecord
from resume.transfer.defaults import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW
from resume.transfer.plan import FileJob, server_identity, upload_url
from resume.transfer.resumption import RESTART_HINT, find_transfer, lock_file
from resume.transfer.source import (
    FILE_ALGO,
    ChunkSource,
    Fingerprint,
    chunk_checksum,
    file_checksum,
    open_source,
)

log = logging.getLogger("resume.upload")

PREPARE_BATCH = 4  # chunks read and prepared per transaction: fewer commits, bounded memory
VERIFY_TIMEOUT = 600.0  # the server re-reads a whole file to verify it: allow for a large one

# What fails one file and lets the run go on with the others.
FILE_ERRORS = (FileRefused, SourceError, SourceChanged, ChecksumMismatch)


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """Tuning and policy of an upload run.

    ``overwrite``: a destination that exists on the server is replaced (atomically) instead of
    refused. ``verify``: a file finished in an earlier run is re-hashed by the server, not
    only checked to be the file it published. ``max_corrupt_frames``: frames that fail to
    decode (corrupted in transit) are retried this many times, then the run fails.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    window: int = DEFAULT_WINDOW  # chunks in flight at once
    restart: bool = False  # start every file over, dropping earlier partial transfers
    overwrite: bool = False
    verify: bool = False
    ack_timeout: float = 60.0  # no ack for this long while chunks are in flight: reconnect
    max_nacks: int = 3  # a chunk failing its checksum this often on the server is fatal
    max_corrupt_frames: int = 3
    drain_timeout: float = 10.0  # on stop(): how long to wait for in-flight acks
    connect: ConnectOptions = field(
        default_factory=lambda: ConnectOptions(max_size=64 * 2**20, write_limit=4 * 2**20)
    )
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None  # consecutive failed connection attempts before giving up
    give_up_after: float | None = None  # seconds of failing connections before giving up

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= 2**31 - 1:
            raise UsageError(f"chunk size must be between 1 byte and 2 GiB, got {self.chunk_size}")
        if self.window < 1:
            raise UsageError(f"window must be at least 1, got {self.window}")
        if self.ack_timeout <= 0 or self.drain_timeout < 0:
            raise UsageError("ack_timeout must be positive and drain_timeout not negative")
        if self.max_nacks < 0 or self.max_corrupt_frames < 0:
            raise UsageError("max_nacks and max_corrupt_frames must not be negative")


@dataclass(slots=True)
class FileResult:
    """How one file ended in this run.

    ``state``: ``completed`` (sent and verified in this run), ``verified`` (finished in an
    earlier run and confirmed on the server now, nothing sent), ``failed`` (``error`` says
    why; the other files went on) or ``pending`` (the run stopped before it was done).
    ``via``: ``"ws"`` or ``"http"``, the way into the server it took.
    """

    job: FileJob
    file_id: str | None
    size: int
    state: str
    checksum: str | None = None
    resumed_from: int = 0  # bytes the server already held when this run began the file
    bytes_sent: int = 0  # chunk payload bytes sent in this run (re-sends included)
    error: str | None = None
    via: str = "ws"  # how it went: "ws" (WebSocket) or "http" (tus PATCH requests)


class UploadProgress(Protocol):
    """What an upload reports while it runs (the CLI draws its progress line from it)."""

    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        """``job`` is being sent; the server already holds ``committed`` of its ``size``."""

    def committed(self, job: FileJob, nbytes: int) -> None:
        """``nbytes`` more of ``job`` are durable on the server."""

    def file_done(self, result: FileResult) -> None:
        """``result.job`` ended: completed, verified or failed."""

    def connection(self, event: ConnectionEvent) -> None:
        """The reconnect loop connected, lost the connection, waits to retry, or gave up."""

    def notice(self, message: str) -> None:
        """Something the user should know that is not an error (e.g. a stale transfer)."""


class _QuietProgress:
    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        pass

    def committed(self, job: FileJob, nbytes: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass

    def connection(self, event: ConnectionEvent) -> None:
        pass

    def notice(self, message: str) -> None:
        log.warning("%s", message)


@dataclass(eq=False)
class _FileState:
    """One file of the run: its transfer record, ledger and the run's counters."""

    job: FileJob
    record: TransferRecord
    ledger: Ledger
    fingerprint: Fingerprint
    result: FileResult
    lock: str  # the transfer lock's key
    done: bool = False
    check_only: bool = False  # finished earlier: only ask the server whether it still has it
    nacks: dict[int, int] = field(default_factory=dict)
    hasher: Any = field(default_factory=xxhash.xxh3_128)
    hashed: int = 0  # chunks [0, hashed) are in ``hasher``
    background_hash: asyncio.Task[str] | None = None
    started: bool = False  # begun on some connection of this run


class Uploader:
    """Uploads files to one `resume serve`, resuming whatever an earlier run left."""

    def __init__(
        self,
        store: Store,
        url: str,
        options: UploadOptions | None = None,
        *,
        progress: UploadProgress | None = None,
    ) -> None:
        self.store = store
        self.repo = store.transfers
        self.url = url
        self.base_url, self.endpoint = upload_url(url)
        self.server: str | None = None  # canonical identity, resolved when the run starts
        self.options = options or UploadOptions()
        self.progress: UploadProgress = progress or _QuietProgress()
        self._stopping = asyncio.Event()
        self._files: list[_FileState] = []
        self._results: list[FileResult] = []
        self._cancel_on_server: list[str] = []  # earlier transfers dropped by --restart
        self._owner = LockOwner.me()
        self._locks: list[str] = []
        self._in_chunks = False  # sending chunks: stop() drains instead of cancelling
        self._corrupt_frames = 0

    def stop(self) -> None:
        """Ask the run to stop: no new chunks, wait briefly for in-flight acks, then raise
        :class:`Interrupted`. While connecting or waiting to reconnect it stops at once.
        State stays consistent whenever the process dies anyway."""
        self._stopping.set()

    async def run(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """Upload every job; returns one result per job, in order.

        A file that cannot be sent fails alone (``result.state == "failed"``). Raises a
        :class:`resume.errors.FatalError` when the run cannot go on (refused connection, disk
        full on the server, protocol violation), the last retryable error when the
        connection limits are exhausted, or :class:`Interrupted`.
        """
        self.server = await asyncio.to_thread(server_identity, self.url)
        self._files, self._results, self._locks = [], [], []
        try:
            for job in jobs:
                self._results.append(self._prepare(job))
            todo = [f for f in self._files if not f.done]
            if todo or self._cancel_on_server:
                for state in todo:
                    self.repo.update(
                        state.record.file_id, state=TransferState.ACTIVE, last_error=None
                    )
                await self._connect_and_send()
        finally:
            for state in self._files:
                if state.background_hash is not None:
                    state.background_hash.cancel()
            with contextlib.suppress(ResumeError):
                self.repo.unlock(self._locks, self._owner)
        return list(self._results)

    async def _connect_and_send(self) -> None:
        connector = Reconnector(
            self.endpoint,
            options=self.options.connect,
            backoff=self.options.backoff,
            max_attempts=self.options.max_attempts,
            give_up_after=self.options.give_up_after,
            on_event=self.progress.connection,
        )
        work = asyncio.create_task(connector.run(self._session))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and not self._in_chunks:
                # Connecting or waiting to reconnect: nothing in flight to wait for.
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                raise Interrupted("interrupted; resume with the same command")
            await work  # sending chunks: the session drains, then raises Interrupted
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work

    # -- planning --------------------------------------------------------------------------------

    def _prepare(self, job: FileJob) -> FileResult:
        """Lock and plan one job; a job that cannot be sent gets a failed result now."""
        key, locked = lock_file(self.repo, job, self.server or self.base_url, self._owner)
        if locked is not None:
            return self._failed(job, locked)
        self._locks.append(key)
        try:
            state = self._plan(job, key)
        except (SourceError, SourceChanged) as exc:
            return self._failed(job, str(exc))
        self._files.append(state)
        return state.result

    def _failed(self, job: FileJob, reason: str) -> FileResult:
        result = FileResult(job, None, job.size, "failed", error=reason)
        self.progress.file_done(result)
        return result

    def _plan(self, job: FileJob, key: str) -> _FileState:
        """Find the transfer to resume for ``job``, or start a new one."""
        fd, fingerprint = open_source(job.path)  # readable and regular, before any begin
        os.close(fd)
        found = find_transfer(
            self.repo,
            job,
            fingerprint,
            url=self.base_url,
            server=self.server,
            restart=self.options.restart,
        )
        if found.dropped is not None:
            self._cancel_on_server.append(found.dropped.file_id)
        record, check_only = found.record, found.finished  # finished: the server says if it has it
        if record is not None and record.chunk_size != self.options.chunk_size:
            log.info(
                "%s: resuming with the chunk size it began with (%d)", job.name, record.chunk_size
            )
        if record is None:
            record = self._new_record(job, fingerprint)
        self.repo.lock_transfer(key, record.file_id)
        ledger = self.repo.load_ledger(record)
        result = FileResult(job, record.file_id, record.size, "pending")
        return _FileState(job, record, ledger, fingerprint, result, key, check_only=check_only)

    def _new_record(self, job: FileJob, fingerprint: Fingerprint) -> TransferRecord:
        for other in self.repo.unfinished_elsewhere(str(job.path), self.server, self.base_url):
            self.progress.notice(
                f"{job.path}: an unfinished transfer of this file to {other.url} exists "
                f"({other.file_id[:8]}, {other.state.value}); `resume cancel {other.file_id[:8]}` "
                "drops it"
            )
        return self.repo.create(
            file_id=new_file_id(),
            source_path=str(job.path),
            name=job.name,
            url=self.base_url,
            server=self.server,
            size=fingerprint.size,
            mtime_ns=fingerprint.mtime_ns,
            inode=fingerprint.inode,
            chunk_size=self.options.chunk_size,
            checksum_algo=FILE_ALGO,
        )

    def _renew(self, state: _FileState) -> None:
        """The published file is gone or changed on the server: send it as a new transfer."""
        record = self._new_record(state.job, state.fingerprint)
        self.repo.update(record.file_id, state=TransferState.ACTIVE)
        self.repo.lock_transfer(state.lock, record.file_id)
        state.record = record
        state.ledger = self.repo.load_ledger(record)
        state.check_only = False
        state.result.file_id = record.file_id
        state.result.size = record.size

    def _fail_file(self, state: _FileState, exc: BaseException) -> None:
        """``state`` cannot be sent in this run: record why, report it, go on."""
        reason = str(exc) or type(exc).__name__
        with contextlib.suppress(ResumeError):
            self.repo.update(
                state.record.file_id, state=TransferState.FAILED, last_error=reason[:500]
            )
        state.done = True
        state.result.state = "failed"
        state.result.error = reason
        self.progress.file_done(state.result)

    def _record_failure(self, exc: BaseException) -> None:
        """The run ended early: leave every unfinished file resumable, with the reason.

        Files this run began are marked failed when the error is fatal; files it never got
        to stay pending (the error was not theirs).
        """
        resumable = not isinstance(exc, ResumeError) or isinstance(exc, Interrupted)
        resumable = resumable or classify(exc) is Verdict.RETRY
        reason = str(exc) or type(exc).__name__
        for state in self._files:
            if not state.done:
                failed = state.started and not resumable
                with contextlib.suppress(ResumeError):
                    self.repo.update(
                        state.record.file_id,
                        state=TransferState.FAILED if failed else TransferState.PENDING,
                        last_error=reason[:500],
                    )

    # -- one connection --------------------------------------------------------------------------

    async def _session(self, ws: ClientConnection) -> None:
        try:
            await self._send_all(ws)
        except Exception as exc:
            error = translate(exc)
            if isinstance(error, ProtocolError) and error.close_code == CloseCode.INVALID_PAYLOAD:
                self._corrupt_frames += 1
                if self._corrupt_frames <= self.options.max_corrupt_frames:
                    raise FrameCorrupted(
                        f"a frame was corrupted in transit ({error})", close_code=error.close_code
                    ) from exc
                raise ProtocolError(
                    f"frames kept arriving corrupted ({self._corrupt_frames} times, the last: "
                    f"{error}); the link or the server is damaging data",
                    close_code=error.close_code,
                ) from exc
            raise

    async def _send_all(self, ws: ClientConnection) -> None:
        link = _Link(ws)
        link.start()
        try:
            while self._cancel_on_server:
                file_id = self._cancel_on_server[0]
                await ws.send(frames.encode({"type": "cancel", "file_id": file_id}))
                await link.expect("cancelled", file_id, self.options.ack_timeout)
                self._cancel_on_server.pop(0)
            for state in self._files:
                if state.done:
                    continue
                try:
                    await self._send_file(link, state)
                except FILE_ERRORS as exc:
                    self._fail_file(state, exc)
                finally:
                    link.forget(state.record.file_id)
        finally:
            await link.stop()

    async def _send_file(self, link: _Link, state: _FileState) -> None:
        record = state.record
        verify = self.options.verify and state.check_only
        begin = Begin(
            record.file_id,
            record.name,
            record.size,
            record.chunk_size,
            overwrite=self.options.overwrite,
            verify=verify,
        )
        link.current = (record.file_id, record.name)
        await link.ws.send(frames.encode(begin.to_json()))
        timeout = max(self.options.ack_timeout, VERIFY_TIMEOUT) if verify else None
        reply = await link.expect("state", record.file_id, timeout or self.options.ack_timeout)
        server_state = frames.field(reply, "state", str)
        if server_state == "completed":
            verified = reply.get("verified") is True
            self._complete(state, already=True, rehashed=verified)
            return
        if server_state == "missing" or (state.check_only and server_state == "cancelled"):
            self.progress.notice(
                f"{record.name}: no longer on the server as it was published; sending it again"
            )
            self._renew(state)
            await self._send_file(link, state)
            return
        if server_state != "receiving":
            raise FileRefused(
                f"{record.name}: the server dropped transfer {record.file_id[:8]} "
                f"({server_state}); {RESTART_HINT}",
                code=server_state,
                file_id=record.file_id,
            )
        if state.check_only:
            # The server does not know it as finished (its store was reset): it holds none
            # of the chunks we have as committed, and reconciliation sends them all again.
            state.check_only = False
            self.repo.update(record.file_id, state=TransferState.ACTIVE)
        await self._reconcile(state, held_from_json(reply, "held"))
        ledger = state.ledger
        if not state.started:
            state.started = True
            state.result.resumed_from = ledger.committed_bytes
        self.progress.file_started(state.job, record.size, ledger.committed_bytes)
        resuming = state.hashed == 0 and ledger.count(ChunkState.COMMITTED) > 0
        if record.checksum is None and resuming and state.background_hash is None:
            # Chunks sent in earlier runs will not pass through this run, so hash the file in
            # the background while the missing chunks go out.
            state.background_hash = asyncio.create_task(file_checksum(record.source_path))
        await self._send_chunks(link, state)
        await self._finish(link, state)

    async def _reconcile(self, state: _FileState, held: dict[int, str]) -> None:
        """Join our ledger with what the server durably holds; persist the outcome."""
        ledger = state.ledger
        result = ledger.reconcile(held)
        if result.missing:
            log.warning(
                "%s: the server no longer holds %d acknowledged chunks (expired?); "
                "sending the file again",
                state.job.name,
                len(result.missing),
            )
            self.repo.reset_chunks(state.record.file_id)
            state.ledger = ledger = Ledger(ledger.size, ledger.chunk_size)
            result = ledger.reconcile(held)
        changes = list(result.changes)
        if result.unknown:  # the server holds chunks we have no record of: verify, then adopt
            async with self._source(state) as source:
                for index in result.unknown:
                    data = await source.read(ledger.spec(index))
                    checksum = chunk_checksum(data)
                    if checksum == held[index]:
                        changes.append(ledger.prepare(index, checksum))
                        changes.append(ledger.commit(index, checksum))
        self.repo.save_chunks(state.record.file_id, ledger, changes)

    def _source(self, state: _FileState) -> ChunkSource:
        return ChunkSource(state.job.path, state.fingerprint, restart_hint=RESTART_HINT)

    async def _send_chunks(self, link: _Link, state: _FileState) -> None:
        """Keep a window of chunks in flight until every chunk is committed."""
        ledger, options = state.ledger, self.options
        queue: deque[int] = deque(ledger.indexes(ChunkState.PENDING))
        in_flight: set[int] = set()

        def on_ack(chunks: dict[int, str]) -> None:
            changes: list[ChunkRecord] = []
            committed = 0
            for index, checksum in chunks.items():
                if ledger.state(index) is ChunkState.PREPARED:
                    changes.append(ledger.commit(index, checksum))
                    committed += ledger.spec(index).length
                in_flight.discard(index)
            self.repo.commit_chunks(state.record.file_id, ledger, changes)
            self.progress.committed(state.job, committed)

        def on_nack(index: int) -> None:
            count = state.nacks[index] = state.nacks.get(index, 0) + 1
            if count > options.max_nacks:
                raise ChecksumMismatch(
                    f"{state.job.name}: chunk {index} failed its checksum on the server "
                    f"{count} times; the link or the source is corrupting data"
                )
            if ledger.state(index) is ChunkState.PREPARED:
                self.repo.save_chunks(state.record.file_id, ledger, [ledger.lose(index)])
            in_flight.discard(index)
            queue.appendleft(index)

        file_id = state.record.file_id
        link.watch(file_id, on_ack, on_nack)
        self._in_chunks = True
        # Frames are read into these and reused: websockets has copied (masked) a frame by the
        # time send() returns, so a batch's buffers are free for the next batch.
        buffers: list[bytearray] = []
        try:
            async with self._source(state) as source:
                while queue or in_flight:
                    if self._stopping.is_set():
                        await self._drain(link, file_id, in_flight)
                        raise Interrupted("interrupted; resume with the same command")
                    room = options.window - len(in_flight)
                    if queue and room > 0:
                        batch: list[int] = []
                        while queue and len(batch) < min(room, PREPARE_BATCH):
                            index = queue.popleft()
                            if ledger.state(index) is ChunkState.PENDING:
                                batch.append(index)
                        await self._send_batch(link, state, source, batch, in_flight, buffers)
                    else:
                        await link.wait_progress(file_id, options.ack_timeout)
        finally:
            self._in_chunks = False
            link.unwatch(file_id)

    async def _send_batch(
        self,
        link: _Link,
        state: _FileState,
        source: ChunkSource,
        indexes: list[int],
        in_flight: set[int],
        buffers: list[bytearray],
    ) -> None:
        """Read a few chunks, record them PREPARED in one transaction, then send them."""
        ledger = state.ledger
        frames_out: list[tuple[memoryview, int]] = []
        prepared: list[ChunkRecord] = []
        for slot, index in enumerate(indexes):
            spec = ledger.spec(index)
            if slot == len(buffers):
                buffers.append(bytearray(HEADER_SIZE + ledger.spec(0).length))  # a whole chunk
            frame = memoryview(buffers[slot])[: HEADER_SIZE + spec.length]
            payload = await source.read_into(spec, frame[HEADER_SIZE:])
            checksum = chunk_checksum(payload)
            if index == state.hashed:  # feed the whole-file hash while reading in order
                state.hasher.update(payload)
                state.hashed += 1
            ChunkHeader(state.record.file_id, index, spec.offset, checksum).pack(into=frame)
            prepared.append(ledger.prepare(index, checksum))
            frames_out.append((frame, spec.length))
        # Phase one: durable before a single byte of these chunks leaves this machine.
        self.repo.prepare_chunks(state.record.file_id, ledger, prepared)
        # In flight from now on: the ack of the first may arrive while the last is being sent.
        in_flight.update(indexes)
        for buffer, length in frames_out:
            link.check(state.record.file_id)
            await link.ws.send(buffer)
            state.result.bytes_sent += length

    async def _drain(self, link: _Link, file_id: str, in_flight: set[int]) -> None:
        deadline = time.monotonic() + self.options.drain_timeout
        while in_flight and time.monotonic() < deadline:
            with contextlib.suppress(AckTimeout):
                await link.wait_progress(file_id, max(0.01, deadline - time.monotonic()))

    async def _finish(self, link: _Link, state: _FileState) -> None:
        record = state.record
        checksum = record.checksum or await self._whole_checksum(state)
        await link.ws.send(
            frames.encode({"type": "finish", "file_id": record.file_id, "checksum": checksum})
        )
        # The server re-reads the file to verify it only after a resume: allow for a large one.
        await link.expect("done", record.file_id, max(self.options.ack_timeout, VERIFY_TIMEOUT))
        state.result.checksum = checksum
        self._complete(state)

    async def _whole_checksum(self, state: _FileState) -> str:
        """The whole-file xxh3-128, checked against a source that must not have changed."""
        record = state.record
        if state.hashed == state.ledger.chunk_count:
            checksum = str(state.hasher.hexdigest())
        elif state.background_hash is not None:
            checksum = await state.background_hash
        else:
            checksum = await file_checksum(record.source_path)
        state.fingerprint.check_against(state.job.path, restart_hint=RESTART_HINT)
        self.repo.update(record.file_id, checksum=checksum)
        state.record = self.repo.get(record.file_id) or record
        return checksum

    def _complete(
        self, state: _FileState, *, already: bool = False, rehashed: bool = False
    ) -> None:
        self.repo.update(
            state.record.file_id,
            state=TransferState.COMPLETED,
            last_error=None,
            offset=state.record.size,
        )
        state.done = True
        state.result.state = "verified" if already else "completed"
        if already:
            state.result.resumed_from = state.record.size
        state.result.checksum = state.result.checksum or state.record.checksum
        self.progress.file_done(state.result)


class _Link:
    """One connection's incoming side: routes server messages to whoever waits for them.

    A refusal of one file (an ``error`` with a per-file code, or a chunk failing its checksum
    too often) is kept for that file and raised to whoever waits on it; the connection goes
    on with the next file. Anything else ends the connection.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.current: tuple[str, str] | None = None  # (file_id, name) being sent
        self._replies: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._watchers: dict[
            str, tuple[Callable[[dict[int, str]], None], Callable[[int], None]]
        ] = {}
        self._file_errors: dict[str, BaseException] = {}
        self._progress = asyncio.Event()
        self._failure: BaseException | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def watch(
        self,
        file_id: str,
        on_ack: Callable[[dict[int, str]], None],
        on_nack: Callable[[int], None],
    ) -> None:
        self._watchers[file_id] = (on_ack, on_nack)

    def unwatch(self, file_id: str) -> None:
        self._watchers.pop(file_id, None)

    def forget(self, file_id: str) -> None:
        """Done with ``file_id`` on this connection (its refusal, if any, was handled)."""
        self._file_errors.pop(file_id, None)
        self.unwatch(file_id)

    def check(self, file_id: str | None = None) -> None:
        """Raise the error that ended the reader, or the refusal of ``file_id``, if any."""
        if self._failure is not None:
            raise self._failure
        if file_id is not None and file_id in self._file_errors:
            raise self._file_errors[file_id]

    async def expect(self, kind: str, file_id: str, timeout: float) -> dict[str, Any]:
        """Wait for the server's ``kind`` message about ``file_id``."""
        self.check(file_id)
        future = asyncio.get_running_loop().create_future()
        self._replies[(kind, file_id)] = future
        try:
            async with asyncio.timeout(timeout):
                reply: dict[str, Any] = await future
                return reply
        except TimeoutError:
            raise AckTimeout(f"no {kind!r} from the server within {timeout:.0f}s") from None
        finally:
            self._replies.pop((kind, file_id), None)

    async def wait_progress(self, file_id: str, timeout: float) -> None:
        """Wait until an ack or nack arrives (or the connection or the file fails)."""
        self.check(file_id)
        self._progress.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._progress.wait()
        except TimeoutError:
            raise AckTimeout(f"no acknowledgement from the server within {timeout:.0f}s") from None
        self.check(file_id)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self._dispatch(frames.decode(data))
        except ConnectionClosed as exc:
            self._fail(exc)
        except ProtocolError as exc:
            self._fail(exc)
            await self.ws.close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])
        except Exception as exc:  # a bug in a handler: end the connection with it
            self._fail(exc)
        else:
            self._fail(ConnectionLost("server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._progress.set()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(exc)

    def _fail_file(self, file_id: str, exc: BaseException) -> None:
        self._file_errors[file_id] = exc
        self._progress.set()
        for (_, waiting_for), future in self._replies.items():
            if waiting_for == file_id and not future.done():
                future.set_exception(exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        file_id = message.get("file_id")
        if kind in ("ack", "nack"):
            watcher = self._watchers.get(str(file_id))
            if watcher is not None:
                try:
                    if kind == "ack":
                        watcher[0](held_from_json(message, "chunks"))
                    else:
                        watcher[1](frames.field(message, "index", int))
                except FILE_ERRORS as exc:
                    self._fail_file(str(file_id), exc)
            self._progress.set()
        elif kind == "error":
            self._on_error(message)
        else:
            future = self._replies.get((kind, str(file_id)))
            if future is None:
                raise ProtocolError(f"unexpected {kind!r} message from the server")
            if not future.done():
                future.set_result(message)

    def _on_error(self, message: dict[str, Any]) -> None:
        code = str(message.get("code"))
        text = str(message.get("message") or code)
        file_id = message.get("file_id")
        # A refusal of a begin or finish may come without a file_id: it is about the file
        # being sent (one at a time on a connection).
        if not isinstance(file_id, str) and self.current is not None:
            file_id = self.current[0]
        name = self.current[1] if self.current and self.current[0] == file_id else str(file_id)
        if code in FILE_ERROR_CODES and isinstance(file_id, str):
            self._fail_file(file_id, file_refusal(code, name, text, file_id))
        else:
            self._fail(server_error(code, text))


def file_refusal(
    code: str, name: str, text: str, file_id: str | None = None
) -> FileRefused | ChecksumMismatch:
    """The one-line error for a server's refusal of one file."""
    if code == ErrorCode.CHECKSUM_MISMATCH:
        return ChecksumMismatch(
            f"{name}: whole-file verification failed on the server ({text}); {RESTART_HINT}"
        )
    messages: dict[str, str] = {
        ErrorCode.EXISTS: f"{name} exists on the server; pass --overwrite to replace it",
        ErrorCode.NAME_IN_USE: (
            f"{name}: another unfinished upload on the server is using this name ({text})"
        ),
        ErrorCode.FORBIDDEN: f"{name}: the server's token does not allow this name ({text})",
        ErrorCode.LIMIT: f"{name}: over a limit of the server ({text})",
        ErrorCode.BAD_NAME: f"{name}: the server refuses this name ({text})",
        ErrorCode.TOO_LARGE: f"{name}: too large for the server ({text})",
    }
    message = messages.get(code, f"{name}: the server refused it ({code}: {text})")
    return FileRefused(message, code=code, file_id=file_id)


def server_error(code: str, text: str) -> ResumeError:
    """The error for a refusal that ends the run (the server cannot store anything)."""
    if code == ErrorCode.DISK_FULL:
        return ServerError(f"the server's disk is full ({text})", code=code)
    if code == ErrorCode.STORAGE:
        return ServerError(f"the server could not store the data ({text})", code=code)
    return ProtocolError(f"server error {code}: {text}")
