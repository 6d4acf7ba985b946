"""The upload engine: send files in pipelined, two-phase-committed chunks; resume after anything.

For each file: ``begin`` tells the server which file this is; its ``state`` reply lists the
chunks it durably holds, which the ledger reconciles with its own records. Then a window of
chunks is kept in flight: each is recorded ``PREPARED`` before its bytes leave and
``COMMITTED`` when the server's ack (sent after fsync) arrives. When every chunk is committed,
``finish`` carries the whole-file xxh3-128 and the server verifies it before renaming the file
into place.

Connections come from the one reconnect loop (:class:`resume.net.connector.Reconnector`):
a dropped connection is retried with backoff, and the next session reconciles again, so at most
one window of chunks is ever sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    Interrupted,
    ProtocolError,
    Rejected,
    ResumeError,
    ServerError,
    SourceChanged,
    UsageError,
    Verdict,
    classify,
)
from resume.net.backoff import Backoff
from resume.net.connector import ConnectionEvent, ConnectOptions, Reconnector
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.protocol.ledger import ChunkRecord, ChunkState, Ledger
from resume.protocol.upload import (
    HEADER_SIZE,
    Begin,
    ChunkHeader,
    ErrorCode,
    held_from_json,
    new_file_id,
)
from resume.store import Store
from resume.store.states import TransferState
from resume.store.transfers import TransferRecord
from resume.transfer.defaults import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW
from resume.transfer.plan import FileJob, upload_url
from resume.transfer.source import (
    FILE_ALGO,
    ChunkSource,
    Fingerprint,
    chunk_checksum,
    file_checksum,
)

log = logging.getLogger("resume.upload")

PREPARE_BATCH = 4  # chunks read and prepared per transaction: fewer commits, bounded memory
RESTART_HINT = "run the same command with --restart to send it again from the start"


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """Tuning and policy of an upload run."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    window: int = DEFAULT_WINDOW  # chunks in flight at once
    restart: bool = False  # start every file over, dropping earlier partial transfers
    ack_timeout: float = 60.0  # no ack for this long while chunks are in flight: reconnect
    max_nacks: int = 3  # a chunk failing its checksum this often on the server is fatal
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


@dataclass(slots=True)
class FileResult:
    """How one file ended in this run."""

    job: FileJob
    file_id: str
    size: int
    state: str  # "completed" or "skipped" (already completed earlier)
    checksum: str | None = None
    resumed_from: int = 0  # bytes the server already held when this run began the file
    bytes_sent: int = 0  # chunk payload bytes sent in this run (re-sends included)


class UploadProgress(Protocol):
    """What an upload reports while it runs (the CLI draws a progress bar from it)."""

    def file_started(self, job: FileJob, size: int, committed: int) -> None: ...

    def committed(self, job: FileJob, nbytes: int) -> None: ...

    def file_done(self, result: FileResult) -> None: ...

    def connection(self, event: ConnectionEvent) -> None: ...


class _QuietProgress:
    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        pass

    def committed(self, job: FileJob, nbytes: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass

    def connection(self, event: ConnectionEvent) -> None:
        pass


@dataclass(eq=False)
class _FileState:
    """One file of the run: its transfer record, ledger and the run's counters."""

    job: FileJob
    record: TransferRecord
    ledger: Ledger
    fingerprint: Fingerprint
    result: FileResult
    done: bool = False
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
        self.base_url, self.endpoint = upload_url(url)
        self.options = options or UploadOptions()
        self.progress = progress or _QuietProgress()
        self._stopping = asyncio.Event()
        self._files: list[_FileState] = []
        self._cancel_on_server: list[str] = []  # earlier transfers dropped by --restart

    def stop(self) -> None:
        """Ask the run to stop: no new chunks, wait briefly for in-flight acks, then raise
        :class:`Interrupted`. State stays consistent whenever the process dies anyway."""
        self._stopping.set()

    async def run(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """Upload every job; returns one result per job, in order.

        Raises a :class:`resume.errors.FatalError` at the first fatal problem, the last
        retryable error when the connection limits are exhausted, or :class:`Interrupted`.
        """
        self._files = [self._plan(job) for job in jobs]
        todo = [f for f in self._files if not f.done]
        if not todo and not self._cancel_on_server:
            return [f.result for f in self._files]
        for state in todo:
            self.repo.update(state.record.file_id, state=TransferState.ACTIVE, last_error=None)
        connector = Reconnector(
            self.endpoint,
            options=self.options.connect,
            backoff=self.options.backoff,
            max_attempts=self.options.max_attempts,
            give_up_after=self.options.give_up_after,
            on_event=self.progress.connection,
        )
        try:
            await connector.run(self._session)
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            for state in self._files:
                if state.background_hash is not None:
                    state.background_hash.cancel()
        return [f.result for f in self._files]

    # -- planning --------------------------------------------------------------------------------

    def _plan(self, job: FileJob) -> _FileState:
        """Find the transfer to resume for ``job``, or start a new one."""
        fingerprint = Fingerprint.of(job.path)
        record = self.repo.latest_for(str(job.path), self.base_url, job.name)
        if (
            record is not None
            and self.options.restart
            and record.state
            not in (
                TransferState.COMPLETED,
                TransferState.CANCELLED,
            )
        ):
            self.repo.update(record.file_id, state=TransferState.CANCELLED, last_error="restarted")
            self._cancel_on_server.append(record.file_id)
            record = None
        if record is not None and record.state is TransferState.COMPLETED:
            if _fingerprint(record) == fingerprint and not self.options.restart:
                result = FileResult(
                    job, record.file_id, record.size, "skipped", record.checksum, record.size
                )
                state = _FileState(job, record, self.repo.load_ledger(record), fingerprint, result)
                state.done = True
                return state
            record = None  # a new version of a file sent before: a new transfer
        if record is not None and record.state is TransferState.CANCELLED:
            record = None
        if record is not None and _fingerprint(record) != fingerprint:
            raise SourceChanged(
                f"{job.path} changed since its transfer {record.file_id[:8]} began "
                f"({_fingerprint(record).differences(fingerprint)}); {RESTART_HINT}"
            )
        if record is not None and record.chunk_size != self.options.chunk_size:
            log.info(
                "%s: resuming with the chunk size it began with (%d)", job.name, record.chunk_size
            )
        if record is None:
            record = self.repo.create(
                file_id=new_file_id(),
                source_path=str(job.path),
                name=job.name,
                url=self.base_url,
                size=fingerprint.size,
                mtime_ns=fingerprint.mtime_ns,
                inode=fingerprint.inode,
                chunk_size=self.options.chunk_size,
                checksum_algo=FILE_ALGO,
            )
        ledger = self.repo.load_ledger(record)
        result = FileResult(job, record.file_id, record.size, "pending")
        return _FileState(job, record, ledger, fingerprint, result)

    def _record_failure(self, exc: BaseException) -> None:
        """Leave every unfinished file resumable, or failed with the reason if it is fatal."""
        resumable = not isinstance(exc, ResumeError) or isinstance(exc, Interrupted)
        resumable = resumable or classify(exc) is Verdict.RETRY
        reason = str(exc) or type(exc).__name__
        for state in self._files:
            if not state.done:
                with contextlib.suppress(ResumeError):
                    self.repo.update(
                        state.record.file_id,
                        state=TransferState.PENDING if resumable else TransferState.FAILED,
                        last_error=reason[:500],
                    )

    # -- one connection --------------------------------------------------------------------------

    async def _session(self, ws: ClientConnection) -> None:
        link = _Link(ws)
        link.start()
        try:
            while self._cancel_on_server:
                file_id = self._cancel_on_server[0]
                await ws.send(frames.encode({"type": "cancel", "file_id": file_id}))
                await link.expect("cancelled", file_id, self.options.ack_timeout)
                self._cancel_on_server.pop(0)
            for state in self._files:
                if not state.done:
                    await self._send_file(link, state)
        finally:
            await link.stop()

    async def _send_file(self, link: _Link, state: _FileState) -> None:
        record, ledger = state.record, state.ledger
        begin = Begin(record.file_id, record.name, record.size, record.chunk_size)
        await link.ws.send(frames.encode(begin.to_json()))
        reply = await link.expect("state", record.file_id, self.options.ack_timeout)
        server_state = frames.field(reply, "state", str)
        if server_state == "completed":
            self._complete(state)
            return
        if server_state != "receiving":
            raise Rejected(
                f"{record.name}: the server dropped transfer {record.file_id[:8]} "
                f"({server_state}); {RESTART_HINT}"
            )
        await self._reconcile(state, held_from_json(reply, "held"))
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
            async with ChunkSource(state.job.path) as source:
                for index in result.unknown:
                    data = await source.read(ledger.spec(index))
                    checksum = chunk_checksum(data)
                    if checksum == held[index]:
                        changes.append(ledger.prepare(index, checksum))
                        changes.append(ledger.commit(index, checksum))
        self.repo.save_chunks(state.record.file_id, ledger, changes)

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

        link.watch(state.record.file_id, on_ack, on_nack)
        try:
            async with ChunkSource(state.job.path) as source:
                while queue or in_flight:
                    if self._stopping.is_set():
                        await self._drain(link, in_flight)
                        raise Interrupted("interrupted; resume with the same command")
                    room = options.window - len(in_flight)
                    if queue and room > 0:
                        batch = []
                        while queue and len(batch) < min(room, PREPARE_BATCH):
                            index = queue.popleft()
                            if ledger.state(index) is ChunkState.PENDING:
                                batch.append(index)
                        await self._send_batch(link, state, source, batch, in_flight)
                    else:
                        await link.wait_progress(options.ack_timeout)
        finally:
            link.unwatch(state.record.file_id)

    async def _send_batch(
        self,
        link: _Link,
        state: _FileState,
        source: ChunkSource,
        indexes: list[int],
        in_flight: set[int],
    ) -> None:
        """Read a few chunks, record them PREPARED in one transaction, then send them."""
        ledger = state.ledger
        frames_out: list[tuple[bytearray, int]] = []
        prepared: list[ChunkRecord] = []
        for index in indexes:
            spec = ledger.spec(index)
            buffer = await source.read(spec, prefix=HEADER_SIZE)
            payload = memoryview(buffer)[HEADER_SIZE:]
            checksum = chunk_checksum(payload)
            if index == state.hashed:  # feed the whole-file hash while reading in order
                state.hasher.update(payload)
                state.hashed += 1
            ChunkHeader(state.record.file_id, index, spec.offset, checksum).pack(into=buffer)
            prepared.append(ledger.prepare(index, checksum))
            frames_out.append((buffer, spec.length))
        # Phase one: durable before a single byte of these chunks leaves this machine.
        self.repo.prepare_chunks(state.record.file_id, ledger, prepared)
        # In flight from now on: the ack of the first may arrive while the last is being sent.
        in_flight.update(indexes)
        for buffer, length in frames_out:
            link.check()
            await link.ws.send(buffer)
            state.result.bytes_sent += length

    async def _drain(self, link: _Link, in_flight: set[int]) -> None:
        deadline = time.monotonic() + self.options.drain_timeout
        while in_flight and time.monotonic() < deadline:
            with contextlib.suppress(AckTimeout):
                await link.wait_progress(max(0.01, deadline - time.monotonic()))

    async def _finish(self, link: _Link, state: _FileState) -> None:
        record = state.record
        checksum = record.checksum or await self._whole_checksum(state)
        await link.ws.send(
            frames.encode({"type": "finish", "file_id": record.file_id, "checksum": checksum})
        )
        # The server re-reads the file to verify it only after a resume: allow for a large one.
        await link.expect("done", record.file_id, max(self.options.ack_timeout, 600.0))
        state.result.checksum = checksum
        self._complete(state)

    async def _whole_checksum(self, state: _FileState) -> str:
        """The whole-file xxh3-128, checked against a source that must not have changed."""
        record = state.record
        if state.hashed == state.ledger.chunk_count:
            checksum = state.hasher.hexdigest()
        elif state.background_hash is not None:
            checksum = await state.background_hash
        else:
            checksum = await file_checksum(record.source_path)
        state.fingerprint.check_against(state.job.path, restart_hint=RESTART_HINT)
        self.repo.update(record.file_id, checksum=checksum)
        state.record = self.repo.get(record.file_id) or record
        return checksum

    def _complete(self, state: _FileState) -> None:
        self.repo.update(
            state.record.file_id,
            state=TransferState.COMPLETED,
            last_error=None,
            offset=state.record.size,
        )
        state.done = True
        state.result.state = "completed"
        state.result.checksum = state.result.checksum or state.record.checksum
        self.progress.file_done(state.result)


class _Link:
    """One connection's incoming side: routes server messages to whoever waits for them."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._replies: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._watchers: dict[
            str, tuple[Callable[[dict[int, str]], None], Callable[[int], None]]
        ] = {}
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

    def check(self) -> None:
        """Raise the error that ended the reader, if any."""
        if self._failure is not None:
            raise self._failure

    async def expect(self, kind: str, file_id: str, timeout: float) -> dict[str, Any]:
        """Wait for the server's ``kind`` message about ``file_id``."""
        self.check()
        future = asyncio.get_running_loop().create_future()
        self._replies[(kind, file_id)] = future
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise AckTimeout(f"no {kind!r} from the server within {timeout:.0f}s") from None
        finally:
            self._replies.pop((kind, file_id), None)

    async def wait_progress(self, timeout: float) -> None:
        """Wait until an ack or nack arrives (or the connection fails)."""
        self.check()
        self._progress.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._progress.wait()
        except TimeoutError:
            raise AckTimeout(f"no acknowledgement from the server within {timeout:.0f}s") from None
        self.check()

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self._dispatch(frames.decode(data))
        except ConnectionClosed as exc:
            self._fail(exc)
        except ProtocolError as exc:
            self._fail(exc)
            await self.ws.close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])
        except Exception as exc:  # a fatal error raised by an ack handler (e.g. ChecksumMismatch)
            self._fail(exc)
        else:
            self._fail(ConnectionLost("server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._progress.set()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        file_id = message.get("file_id")
        if kind == "ack":
            watcher = self._watchers.get(str(file_id))
            if watcher is not None:
                watcher[0](held_from_json(message, "chunks"))
            self._progress.set()
        elif kind == "nack":
            watcher = self._watchers.get(str(file_id))
            if watcher is not None:
                watcher[1](frames.field(message, "index", int))
            self._progress.set()
        elif kind == "error":
            self._fail(_server_error(message))
        else:
            future = self._replies.get((kind, str(file_id)))
            if future is None:
                raise ProtocolError(f"unexpected {kind!r} message from the server")
            if not future.done():
                future.set_result(message)


def _server_error(message: dict[str, Any]) -> ResumeError:
    code = str(message.get("code"))
    text = str(message.get("message") or code)
    if code in (ErrorCode.DISK_FULL, ErrorCode.STORAGE):
        return ServerError(f"server could not store the data: {text}", code=code)
    if code == ErrorCode.CHECKSUM_MISMATCH:
        return ChecksumMismatch(
            f"whole-file verification failed on the server: {text}; {RESTART_HINT}"
        )
    return Rejected(f"server refused: {text}")


def _fingerprint(record: TransferRecord) -> Fingerprint:
    return Fingerprint(size=record.size, mtime_ns=record.mtime_ns, inode=record.inode)
