"""``resume upload PATH... http(s)://HOST/files/``: upload to any tus 1.0 server.

The same chunk ledger as WebSocket uploads: each ``PATCH`` carries one chunk (or the rest of
one, after a resume in its middle), recorded ``PREPARED`` before its bytes leave and
``COMMITTED`` once a response's ``Upload-Offset`` covers it. The upload URL is stored with the
transfer as soon as the server creates it, so the same command after a crash (even SIGKILL)
asks the server for its offset (``HEAD``), reconciles the ledger with it, and continues there.

What the server advertises (``OPTIONS``) decides the rest: ``Upload-Checksum`` on every PATCH
when it offers checksums; ``--parallel N`` partial uploads joined by a final concatenation when
it offers concatenation; a small file's bytes in the creating ``POST`` when it offers
creation-with-upload.

Responses take one branch each (see :func:`resume.protocol.tus.outcome`): 409 asks for the
offset and continues; 423, 429, 5xx and connection errors retry with the shared backoff; 460
resends the chunk (bounded); 404/410 of a stored upload starts a new one; anything else, such
as 401, 403 or 413, is fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import xxhash

from resume.errors import (
    ChecksumMismatch,
    Interrupted,
    ProtocolError,
    Rejected,
    ResumeError,
    ServerBusy,
    SourceChanged,
    SourceError,
    UsageError,
    Verdict,
    classify,
)
from resume.net.bulk import FileBody
from resume.net.connector import ConnectOptions
from resume.net.http import HttpClient, RetryLoop
from resume.net.response import Response
from resume.protocol import tus
from resume.protocol.ledger import ChunkRecord, ChunkSpec, ChunkState, Ledger
from resume.protocol.upload import new_file_id
from resume.store import Store
from resume.store.states import TransferState
from resume.store.transfers import LockOwner, TransferRecord
from resume.store.tus import PartRecord, TusPartRepository
from resume.transfer.plan import FileJob, server_identity, upload_url
from resume.transfer.resumption import RESTART_HINT, find_transfer, lock_file
from resume.transfer.source import (
    FILE_ALGO,
    ChunkSource,
    Fingerprint,
    chunk_checksum,
    file_checksum,
)
from resume.transfer.upload import (
    FileResult,
    UploadOptions,
    UploadProgress,
    _QuietProgress,
)

log = logging.getLogger("resume.tus")


@dataclass(frozen=True, slots=True)
class TusOptions:
    """What only tus uploads need, on top of :class:`UploadOptions`."""

    parallel: int = 1  # partial uploads per file, when the server offers concatenation
    small_file: int | None = None  # creation-with-upload up to this size (default: one chunk)
    max_resyncs: int = 5  # 409s / answers that move nothing, in a row, before giving up
    max_new_uploads: int = 2  # times one run may start a file over after a 404/410
    # Chunks per PATCH: one request (one round trip, one server fsync) carries several
    # chunks, each still PREPARED before it leaves and COMMITTED once the offset covers it.
    # On a long link it grows (up to max_chunks_per_patch) until a PATCH takes PATCH_RTTS
    # round trips to send, so the wait for each answer costs a small part of the time.
    # Each PATCH also costs a wait for its answer after its last byte (on loopback about 5
    # ms: the server's last write, fsync and commit), so a PATCH carries at least patch_bytes
    # (512 MiB in-process, 5 runs: 4 MiB chunks 4 per PATCH 0.89 s, 8 per PATCH 0.75 s, 16
    # per PATCH 0.79 s with twice the buffers).
    chunks_per_patch: int = 4
    patch_bytes: int = 32 * 2**20
    patch_bytes_chunks: int = 16  # ... in at most this many chunks (small chunks: smaller PATCHes)
    # A body sent from the file (plain http://) is read through one chunk's buffer to be
    # hashed, so a PATCH may be large at no cost in memory; over TLS or a proxy the body is
    # sent from memory (two PATCHes' worth) and max_buffered_patch_bytes caps it.
    max_chunks_per_patch: int = 64
    max_buffered_patch_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if not 1 <= self.parallel <= 64:
            raise UsageError(f"--parallel must be between 1 and 64, got {self.parallel}")


def creation_url(url: str) -> str:
    """The creation endpoint as given (without a fragment); raises for anything else."""
    parts = urlsplit(url)
    if not tus.is_tus_url(url) or not parts.hostname:
        raise UsageError(f"not a tus server URL: {url!r} (expected http(s)://HOST/files/)")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, ""))


# Signals inside this module; each also fits the error tree should it ever escape.
class _Gone(Rejected):
    """The server no longer has an upload we stored (404/410): start a new one."""


class _Conflict(ProtocolError):
    """409: our offset is not the server's. Ask it (HEAD) and continue from there."""


class _ChecksumFailed(ChecksumMismatch):
    """460: the server discarded a PATCH body that failed its Upload-Checksum."""


@dataclass(slots=True)
class _Part:
    """One upload on the server: the whole file, or a partial upload of ``--parallel``."""

    index: int
    first_chunk: int
    end_chunk: int
    start: int  # bytes of the file: [start, end)
    end: int
    url: str | None
    offset: int = 0  # what the server holds of this part, from its last answer
    idle: int = 0  # answers in a row that moved nothing

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class _Body:
    """A PATCH body, read and hashed: the file's bytes [start, start + length)."""

    start: int
    length: int
    algorithm: str | None  # of Upload-Checksum, when the server offers checksums
    hasher: Any  # fed with the body (None without an algorithm)
    views: list[memoryview]  # the bytes in memory; empty when they go from the file

    @property
    def checksum(self) -> str | None:
        """``Upload-Checksum`` of the body."""
        if self.algorithm is None:
            return None
        return tus.format_checksum(self.algorithm, self.hasher.digest())


@dataclass(eq=False)
class _FileState:
    job: FileJob
    record: TransferRecord
    ledger: Ledger
    fingerprint: Fingerprint
    result: FileResult
    done: bool = False
    started: bool = False
    nacks: dict[int, int] = field(default_factory=dict)
    parts: list[_Part] = field(default_factory=list)
    concatenated: bool = False  # parts of a parallel upload (False: one upload)
    check_only: bool = False  # finished in an earlier run: only ask the server it still has it
    # The whole-file xxh3-128 for a server that checks it (Repr-Digest on the last PATCH):
    # fed in chunk order while sending from the start, else read in the background.
    hasher: Any = None
    hashed: int = 0  # chunks fed to ``hasher``
    whole: asyncio.Task[str] | None = None


class TusUploader:
    """Uploads files to one tus server's creation endpoint, resuming what earlier runs left."""

    def __init__(
        self,
        store: Store,
        url: str,
        options: UploadOptions | None = None,
        tus_options: TusOptions | None = None,
        *,
        progress: UploadProgress | None = None,
        served_as: str | None = None,
        capabilities: tus.Capabilities | None = None,
    ) -> None:
        self.store = store
        self.repo = store.transfers
        self.parts_repo = TusPartRepository(store.db)
        self.url = creation_url(url)
        # ``served_as``: the ws:// URL of the `resume serve` whose HTTP endpoint this is. The
        # transfer locks are then keyed on that server's identity, as WebSocket uploads' are,
        # so two runs sending one file exclude each other whichever way each goes.
        self.served_as = served_as
        self._lock_server = self.url
        self._owner = LockOwner.me()
        self._locks: list[str] = []
        self.options = options or UploadOptions()
        self.tus = tus_options or TusOptions()
        self.progress = progress or _QuietProgress()
        # What OPTIONS said, when the caller already asked (it is then not asked again).
        self._known = capabilities
        self.capabilities = capabilities or tus.Capabilities()
        self._stopping = asyncio.Event()
        self._files: list[_FileState] = []
        self._terminate: list[str] = []  # uploads of transfers dropped by --restart
        self._http: HttpClient | None = None
        self._retry: RetryLoop | None = None
        self._resyncs = 0
        self._warned_no_concat = False
        self._rtt: float | None = None  # seconds, the quickest HEAD so far
        self._rate: float | None = None  # bytes per second the last PATCH's body went

    def stop(self) -> None:
        """Ask the run to stop after the PATCH requests in flight, then raise Interrupted."""
        self._stopping.set()

    async def run(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """Upload every job; returns one result per job, in order.

        Raises a :class:`resume.errors.FatalError` at the first fatal problem, the last
        retryable error when the retry limits are exhausted, or :class:`Interrupted`.
        """
        self._files, self._locks = [], []
        if self.served_as is not None:
            identity = await asyncio.to_thread(server_identity, self.served_as)
            self._lock_server = identity or upload_url(self.served_as)[0]
        try:
            results = [self._prepare(job) for job in jobs]
            await self._send_all()
        finally:
            with contextlib.suppress(ResumeError):
                self.repo.unlock(self._locks, self._owner)
        return results

    async def _send_all(self) -> None:
        todo = [f for f in self._files if not f.done]
        if not todo and not self._terminate:
            return
        for state in todo:
            if not state.check_only:  # a finished one stays completed unless the server lost it
                self.repo.update(state.record.file_id, state=TransferState.ACTIVE, last_error=None)
        self._retry = RetryLoop(
            self.url,
            backoff=self.options.backoff,
            max_attempts=self.options.max_attempts,
            give_up_after=self.options.give_up_after,
            on_event=self.progress.connection,
        )
        try:
            async with HttpClient(
                headers=tus.base_headers(self.options.connect.token),
                connect_timeout=self.options.connect.open_timeout,
                response_timeout=self.options.ack_timeout,
                connections=self.tus.parallel + 1,
                verify=self.options.connect.ssl or True,
                use_env_proxy=self.options.connect.use_env_proxy,
            ) as self._http:
                self.capabilities = self._known or await self._retry.run(self._discover)
                await self._terminate_dropped()
                for state in todo:
                    await self._retry.run(lambda state=state: self._send_file(state))
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            self._http = None

    # -- planning --------------------------------------------------------------------------------

    def _prepare(self, job: FileJob) -> FileResult:
        """Lock and plan one job; a job that cannot be sent gets a failed result now (the
        others go on), as on the WebSocket path."""
        key, locked = lock_file(self.repo, job, self._lock_server, self._owner)
        if locked is not None:
            return self._failed(job, locked)
        self._locks.append(key)
        try:
            state = self._plan(job)
        except (SourceError, SourceChanged) as exc:
            return self._failed(job, str(exc))
        self.repo.lock_transfer(key, state.record.file_id)
        self._files.append(state)
        return state.result

    def _failed(self, job: FileJob, reason: str) -> FileResult:
        result = FileResult(job, None, job.size, "failed", error=reason, via="http")
        self.progress.file_done(result)
        return result

    def _plan(self, job: FileJob) -> _FileState:
        """Find the transfer to resume for ``job``, or start a new one (as the WebSocket path)."""
        fingerprint = Fingerprint.of(job.path)
        found = find_transfer(
            self.repo, job, fingerprint, url=self.url, restart=self.options.restart
        )
        if found.dropped is not None:
            self._terminate.extend(upload_urls(self.store, found.dropped))
        record = found.record
        if record is not None and found.finished:
            result = FileResult(
                job, record.file_id, record.size, "pending", record.checksum, via="http"
            )
            ledger = self.repo.load_ledger(record)
            return _FileState(job, record, ledger, fingerprint, result, check_only=True)
        if record is None:
            record = self.repo.create(
                file_id=new_file_id(),
                source_path=str(job.path),
                name=job.name,
                url=self.url,
                size=fingerprint.size,
                mtime_ns=fingerprint.mtime_ns,
                inode=fingerprint.inode,
                chunk_size=self.options.chunk_size,
                checksum_algo=FILE_ALGO,
            )
        result = FileResult(job, record.file_id, record.size, "pending", via="http")
        return _FileState(job, record, self.repo.load_ledger(record), fingerprint, result)

    def _record_failure(self, exc: BaseException) -> None:
        """Leave every unfinished file resumable, or failed with the reason if it is fatal."""
        resumable = not isinstance(exc, ResumeError) or isinstance(exc, Interrupted)
        resumable = resumable or classify(exc) is Verdict.RETRY
        reason = str(exc) or type(exc).__name__
        for state in self._files:
            if not state.done and not state.check_only:
                with contextlib.suppress(ResumeError):
                    self.repo.update(
                        state.record.file_id,
                        state=TransferState.PENDING if resumable else TransferState.FAILED,
                        last_error=reason[:500],
                    )

    # -- the server ------------------------------------------------------------------------------

    async def _discover(self) -> tus.Capabilities:
        """OPTIONS on the creation endpoint: the tus version and extensions on offer."""
        response = await self._request("OPTIONS", self.url)
        if not response.is_success:
            raise self._error(response, f"OPTIONS {self.url}", creating=True)
        try:
            capabilities = tus.Capabilities.from_headers(response.headers)
        except tus.TusProtocolError as exc:
            raise ProtocolError(f"{self.url}: {exc}") from exc
        if not capabilities.speaks_1_0:
            offered = ", ".join(capabilities.versions) or "no Tus-Version"
            raise Rejected(f"{self.url} is not a tus 1.0.0 server (it answered {offered})")
        if not capabilities.offers("creation"):
            raise Rejected(f"{self.url} does not offer the tus creation extension")
        log.info(
            "%s: tus extensions %s, checksums %s",
            self.url,
            ",".join(sorted(capabilities.extensions)) or "-",
            ",".join(capabilities.checksum_algorithms) or "-",
        )
        return capabilities

    async def _terminate_dropped(self) -> None:
        """--restart: ask the server to delete the uploads of the transfers it dropped (best
        effort: the server expires them anyway)."""
        while self._terminate:
            url = self._terminate.pop(0)
            if not self.capabilities.offers("termination"):
                continue
            try:
                await terminate(self._http_client, url)
            except ResumeError as exc:  # an abandoned upload only costs the server space
                log.warning("could not delete the dropped upload %s: %s", url, exc)

    @property
    def _http_client(self) -> HttpClient:
        assert self._http is not None, "only while run() is running"
        return self._http

    async def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        return await self._http_client.request(method, url, headers=headers, content=body)

    def _chunks_per_patch(self, chunk_size: int, from_file: bool = True) -> int:
        """How many chunks the next PATCH carries: ``chunks_per_patch``, or enough for
        ``patch_bytes``; more on a long link: enough that sending one takes PATCH_RTTS round
        trips at the rate the last PATCH's body went (the round trip: the quickest HEAD so
        far, on a warm connection: :meth:`_head`). Never more than ``max_chunks_per_patch``,
        nor, for a body sent from memory (``from_file`` False), ``max_buffered_patch_bytes``."""
        most = self.tus.max_chunks_per_patch
        if not from_file:
            most = min(most, max(1, self.tus.max_buffered_patch_bytes // chunk_size))
        least = min(self.tus.patch_bytes // chunk_size, self.tus.patch_bytes_chunks)
        least = min(max(1, self.tus.chunks_per_patch, least), most)
        if self._rtt is None or self._rate is None:
            return least
        wanted = math.ceil(PATCH_RTTS * self._rtt * self._rate / chunk_size)
        return max(least, min(wanted, most))

    def _error(self, response: Response, what: str, *, creating: bool = False) -> ResumeError:
        """The error a refused request stands for (the branch it takes is its class)."""
        status = response.status_code
        detail = _detail(response)
        branch = tus.outcome(status)
        if branch is tus.Outcome.RETRY:
            return ServerBusy(f"{what}: server unavailable: HTTP {status}{detail}", status=status)
        if branch is tus.Outcome.GONE and not creating:
            return _Gone(f"the server no longer has {what} (HTTP {status})", status=status)
        if creating and status in (409, 507):  # exists, name in use, server disk full
            return Rejected(f"{what}: refused: HTTP {status}{detail}", status=status)
        if branch is tus.Outcome.RESYNC:
            return _Conflict(f"{what}: the server holds a different offset (HTTP 409)")
        if branch is tus.Outcome.RESEND:
            return _ChecksumFailed(f"{what}: the server's checksum of the body differs (HTTP 460)")
        if status in (401, 403):
            hint = "" if self.options.connect.token else "; give a token with --token"
            return Rejected(f"{what}: not allowed: HTTP {status}{detail}{hint}", status=status)
        if status == 413:
            return Rejected(
                f"{what}: the server refuses a file this large (HTTP 413){detail}", status=status
            )
        if status == 412:
            return Rejected(
                f"{what}: the server does not accept tus 1.0.0 (HTTP 412)", status=status
            )
        if branch is tus.Outcome.GONE:
            return Rejected(f"{what}: no tus endpoint there (HTTP {status})", status=status)
        return Rejected(f"{what}: refused: HTTP {status}{detail}", status=status)

    async def _create(
        self,
        length: int,
        metadata: dict[str, str] | None,
        *,
        partial: bool,
        body: bytes | None,
        whole: str | None = None,
    ) -> tuple[str, int | None]:
        """POST a new upload; its absolute URL and, with a body, the offset the server took.
        ``whole``: the file's xxh3-128, for a server that checks it before publishing."""
        headers = tus.creation_headers(
            length, metadata, partial=partial, with_body=body is not None
        )
        if whole is not None:
            headers["Repr-Digest"] = tus.file_digest_header(whole)
        response = await self._request("POST", self.url, headers, body)
        if not response.is_success:
            raise self._error(response, f"creating an upload at {self.url}", creating=True)
        location = response.headers.get("location")
        if not location:
            raise ProtocolError(f"{self.url} created an upload without a Location header")
        offset = None
        if body is not None and "upload-offset" in response.headers:
            offset = _offset(response, self.url)
        return urljoin(self.url, location), offset

    async def _head(self, part: _Part) -> int:
        """Ask the server how much of ``part`` it holds (and time it: a round trip)."""
        assert part.url is not None
        started = time.monotonic()
        response = await self._request("HEAD", part.url)
        elapsed = time.monotonic() - started
        self._rtt = elapsed if self._rtt is None else min(self._rtt, elapsed)
        if not response.is_success:
            raise self._error(response, f"the upload {part.url}")
        offset = _offset(response, part.url)
        try:
            length = tus.upload_length(response.headers)
        except tus.TusProtocolError as exc:
            raise ProtocolError(f"{part.url}: {exc}") from exc
        if length is not None and length != part.length:
            raise _Gone(f"the upload {part.url} is {length} bytes, not {part.length}")
        if offset > part.length:
            raise ProtocolError(
                f"{part.url}: Upload-Offset {offset} beyond its {part.length} bytes"
            )
        return offset

    # -- one file --------------------------------------------------------------------------------

    async def _send_file(self, state: _FileState) -> None:
        """Send one file to the end; a 404/410 of its upload starts a new one (bounded)."""
        if state.done:
            return
        if self._stopping.is_set():  # e.g. Ctrl-C while the retry loop was waiting
            raise Interrupted("interrupted; resume with the same command")
        max_size = self.capabilities.max_size
        if max_size is not None and state.record.size > max_size:
            raise Rejected(
                f"{state.job.name}: {state.record.size} bytes is more than the server accepts "
                f"(Tus-Max-Size {max_size})"
            )
        new_uploads = 0
        while True:
            try:
                await self._send_file_once(state)
                return
            except _Gone as gone:
                new_uploads += 1
                if new_uploads > self.tus.max_new_uploads:
                    raise Rejected(f"{state.job.name}: {gone}, again; giving up") from gone
                log.warning("%s: %s; starting a new upload", state.job.name, gone)
                self._start_over(state)
            except _Conflict as conflict:
                self._resyncs += 1
                if self._resyncs > self.tus.max_resyncs:
                    raise ProtocolError(
                        f"{state.job.name}: the server answered 409 {self._resyncs} times in a "
                        "row; its offsets cannot be trusted"
                    ) from conflict
                log.info("%s: %s; asking for its offset", state.job.name, conflict)

    def _start_over(self, state: _FileState) -> None:
        """Forget the server side of a transfer: its URLs, and every chunk it acknowledged."""
        file_id = state.record.file_id
        self.repo.reset_chunks(file_id)
        self.repo.update(file_id, upload_url=None, state=TransferState.ACTIVE, offset=0)
        state.check_only = False
        self.parts_repo.replace(file_id, [])
        state.record = self.repo.get(file_id) or state.record
        state.ledger = Ledger(state.ledger.size, state.ledger.chunk_size)
        state.parts = []

    async def _send_file_once(self, state: _FileState) -> None:
        record = state.record
        if state.check_only:
            await self._confirm_finished(state)
            return
        if not state.parts:
            state.parts, state.concatenated = self._layout(state)
        if state.concatenated and record.upload_url is not None:
            await self._check_final(state)
            self._complete(state)
            return
        held_before = await self._sync(state)
        if not state.started:
            state.started = True
            state.result.resumed_from = held_before
        # What earlier runs left is "resuming"; a small file that travelled in the creating
        # POST of this run is progress of this run.
        resumed = min(held_before, state.ledger.committed_bytes)
        self.progress.file_started(state.job, record.size, resumed)
        if state.ledger.committed_bytes > resumed:
            self.progress.committed(state.job, state.ledger.committed_bytes - resumed)
        if len(state.parts) == 1:
            await self._send_part(state, state.parts[0])
        else:
            await _gather(self._send_part(state, part) for part in state.parts)
        if self._stopping.is_set() and not all(p.offset == p.length for p in state.parts):
            raise Interrupted("interrupted; resume with the same command")
        if state.concatenated:
            await self._concatenate(state)
        elif self._verifies(state) and state.result.checksum is None:
            # Whole on the server, but the answer to the last PATCH was lost (a cut, a kill):
            # that PATCH carried the digest, and the server publishes only a file matching it.
            state.result.checksum = await self._whole_checksum(state)
        self._complete(state)

    def _layout(self, state: _FileState) -> tuple[list[_Part], bool]:
        """The uploads a file goes in: stored ones when resuming, else one or ``--parallel``."""
        record, ledger = state.record, state.ledger
        stored = self.parts_repo.parts(record.file_id)
        if stored:
            return [
                self._part(p.part, p.first_chunk, p.end_chunk, p.url, ledger) for p in stored
            ], True
        count = ledger.chunk_count
        wanted = min(self.tus.parallel, count)
        if (
            wanted > 1
            and record.upload_url is None
            and not self.capabilities.offers("concatenation")
        ):
            if not self._warned_no_concat:
                log.warning(
                    "%s does not offer tus concatenation: sending one upload per file", self.url
                )
                self._warned_no_concat = True
            wanted = 1
        if wanted <= 1 or record.upload_url is not None:
            return [self._part(0, 0, count, record.upload_url, ledger)], False
        per = -(-count // wanted)
        parts = [
            self._part(i, first, min(first + per, count), None, ledger)
            for i, first in enumerate(range(0, count, per))
        ]
        self.parts_repo.replace(
            record.file_id,
            [PartRecord(p.index, p.first_chunk, p.end_chunk, None) for p in parts],
        )
        return parts, True

    @staticmethod
    def _part(index: int, first: int, end: int, url: str | None, ledger: Ledger) -> _Part:
        start = first * ledger.chunk_size
        stop = ledger.size if end >= ledger.chunk_count else end * ledger.chunk_size
        return _Part(index, first, end, start, stop, url)

    async def _sync(self, state: _FileState) -> int:
        """Create the uploads that do not exist yet, ask the others for their offsets, and
        reconcile the ledger with what the server holds. Returns the bytes the existing
        uploads held (what this run resumes from)."""
        held_before = 0
        for part in state.parts:
            if part.url is not None:
                part.offset = await self._head(part)
                held_before += part.offset
            elif state.concatenated:
                part_id = {"resume-id": f"{state.record.file_id}.{part.index}"}
                part.url, _ = await self._create(part.length, part_id, partial=True, body=None)
                self.parts_repo.set_url(state.record.file_id, part.index, part.url)
                part.offset = 0
            else:
                await self._create_single(state, part)
        await self._reconcile(state)
        return held_before

    async def _create_single(self, state: _FileState, part: _Part) -> None:
        """Create the file's one upload; a small file travels in the creating POST itself."""
        record = state.record
        small = self.tus.small_file if self.tus.small_file is not None else record.chunk_size
        body = None
        if 0 < record.size <= small and self.capabilities.offers("creation-with-upload"):
            async with ChunkSource(state.job.path) as source:
                buffer = await self._load(state, source, 0)
            state.fingerprint.check_against(state.job.path, restart_hint=RESTART_HINT)
            body = bytes(buffer)
        whole = None
        if body is not None and self._verifies(state):  # the body is the whole file
            whole = xxhash.xxh3_128_hexdigest(body)
        url, offset = await self._create(
            record.size,
            _metadata(state.job, record.file_id, overwrite=self.options.overwrite),
            partial=False,
            body=body,
            whole=whole,
        )
        self.repo.update(record.file_id, upload_url=url)
        state.record = self.repo.get(record.file_id) or record
        part.url = url
        if body is not None:
            state.result.bytes_sent += len(body)
            part.offset = await self._head(part) if offset is None else offset
            if whole is not None and part.offset == part.length:
                state.result.checksum = whole  # verified by the server before it published
        else:
            part.offset = 0

    async def _reconcile(self, state: _FileState) -> None:
        """Join the ledger with the offsets the server gave: chunks below them are held."""
        held, unknown = self._held(state)
        if unknown:
            await self._checksum_locally(state, held, unknown)
        result = state.ledger.reconcile(held)
        if result.missing:
            log.warning(
                "%s: the server holds less than it acknowledged before (%d bytes); "
                "sending the rest again",
                state.job.name,
                sum(p.offset for p in state.parts),
            )
            self.repo.reset_chunks(state.record.file_id)
            state.ledger = Ledger(state.ledger.size, state.ledger.chunk_size)
            held, unknown = self._held(state)
            await self._checksum_locally(state, held, unknown)
            result = state.ledger.reconcile(held)
        ledger = state.ledger
        changes: list[ChunkRecord] = list(result.changes)
        for index in result.unknown:
            changes.append(ledger.prepare(index, held[index]))
            changes.append(ledger.commit(index, held[index]))
        self.repo.save_chunks(state.record.file_id, ledger, changes)

    def _held(self, state: _FileState) -> tuple[dict[int, str], list[int]]:
        """Chunks the server's offsets cover: with our checksum, or unknown to our ledger."""
        ledger = state.ledger
        held: dict[int, str] = {}
        unknown: list[int] = []
        for part in state.parts:
            covered = tus.covered_chunks(part.offset, part.length, ledger.chunk_size)
            for index in range(part.first_chunk, part.first_chunk + covered):
                checksum = ledger.checksum(index)
                if checksum is None:
                    unknown.append(index)
                else:
                    held[index] = checksum
        return held, unknown

    async def _checksum_locally(
        self, state: _FileState, held: dict[int, str], indexes: list[int]
    ) -> None:
        """The server holds chunks we have no record of (lost with a crash): tus gives no
        checksums, so its offset is trusted and the local bytes give the ledger's checksum."""
        async with ChunkSource(state.job.path) as source:
            for index in indexes:
                held[index] = chunk_checksum(await source.read(state.ledger.spec(index)))

    async def _load(
        self,
        state: _FileState,
        source: ChunkSource,
        index: int,
        into: memoryview | None = None,
    ) -> bytearray | memoryview:
        """Read chunk ``index`` (into ``into`` when given) and make it PREPARED, durably
        (phase one), before it is sent.

        Runs while the previous PATCH is in flight; the database write goes to a thread so
        the event loop keeps feeding the socket.
        """
        ledger = state.ledger
        spec = ledger.spec(index)
        buffer = await (source.read(spec) if into is None else source.read_into(spec, into))
        checksum = await asyncio.to_thread(_hash_chunk, state, index, buffer)
        current = ledger.state(index)
        if current is ChunkState.PENDING:
            prepared = [ledger.prepare(index, checksum)]
            await asyncio.to_thread(
                self.repo.prepare_chunks, state.record.file_id, ledger, prepared
            )
        elif ledger.checksum(index) != checksum:
            raise SourceChanged(
                f"{state.job.path}: chunk {index} changed since it was first sent; {RESTART_HINT}"
            )
        return buffer

    async def _send_part(self, state: _FileState, part: _Part) -> None:
        """PATCH the rest of ``part``, a few chunks (or the rest of them) per request; the
        next request's chunks are read and prepared while the current one is on its way."""
        assert part.url is not None
        ledger = state.ledger
        from_file = self._http_client.sends_from_file(part.url)

        def per_patch() -> int:
            return self._chunks_per_patch(ledger.chunk_size, from_file)

        if self._rtt is None and part.length - part.offset > 2 * per_patch() * ledger.chunk_size:
            await self._head(part)  # the round trip, on a warm connection: PATCH sizes
        if self._verifies(state) and state.hasher is None and state.whole is None:
            if part.offset == 0:
                state.hasher = xxhash.xxh3_128()
            else:  # bytes sent by an earlier run are not read again here: hash the file
                state.whole = asyncio.create_task(file_checksum(state.job.path))
        # Two buffers, used in turn: one request's chunks are read into one while the other
        # request is on its way. A body sent from the file needs one chunk's buffer (each
        # chunk is hashed, then the next read over it); one sent from memory, the whole body.
        # Reused (grown only with the PATCH size), so memory stays flat in the file's size.
        slots = [bytearray(), bytearray()]
        turn = 0
        ahead: tuple[int, range, asyncio.Task[_Body]] | None = None
        async with ChunkSource(state.job.path) as source:

            async def load(indexes: range, start: int, more: _Body | None = None) -> _Body:
                """Read, hash and PREPARE ``indexes``: the body from byte ``start`` on (or,
                from the file only, the rest of body ``more``)."""
                nonlocal turn
                specs = [ledger.spec(i) for i in indexes]
                need = ledger.chunk_size if from_file else sum(spec.length for spec in specs)
                if len(slots[turn]) < need:
                    slots[turn] = bytearray(need)
                slot, turn = memoryview(slots[turn]), 1 - turn
                if more is None:
                    algorithm = self.capabilities.checksum_algorithm()
                    hasher = tus.new_hasher(algorithm) if algorithm else None
                else:
                    algorithm, hasher, start = more.algorithm, more.hasher, more.start
                views = []
                for spec in specs:
                    into = slot[: spec.length]
                    chunk = memoryview(await self._load(state, source, spec.index, into=into))
                    piece = chunk[max(0, start - spec.offset) :]
                    if hasher is not None:
                        await asyncio.to_thread(hasher.update, piece)
                    if not from_file:
                        views.append(piece)
                        slot = slot[spec.length :]
                end = specs[-1].offset + specs[-1].length
                return _Body(start, end - start, algorithm, hasher, views)

            try:
                while part.offset < part.length and not self._stopping.is_set():
                    position = part.start + part.offset
                    first = position // ledger.chunk_size
                    if ahead is not None and ahead[0] == position:
                        group, body = ahead[1], await ahead[2]
                        wanted = per_patch()  # grown since it was read: the last rate is in
                        if from_file and len(group) < wanted and group.stop < part.end_chunk:
                            rest = range(group.stop, min(group.start + wanted, part.end_chunk))
                            body = await load(rest, body.start, more=body)
                            group = range(group.start, rest.stop)
                    else:
                        if ahead is not None:  # not the chunks we need: let them finish first
                            await ahead[2]
                        group = range(first, min(first + per_patch(), part.end_chunk))
                        body = await load(group, position)
                    ahead = None
                    following = range(group.stop, min(group.stop + per_patch(), part.end_chunk))
                    if following:
                        start = ledger.spec(following.start).offset
                        ahead = (start, following, asyncio.create_task(load(following, start)))
                    await self._patch(state, part, [ledger.spec(i) for i in group], body, source)
            finally:
                if ahead is not None:
                    await self._unprepare(state, ahead[1], ahead[2])

    async def _unprepare(
        self, state: _FileState, indexes: range, task: asyncio.Task[_Body]
    ) -> None:
        """Chunks read ahead were not sent: back to PENDING (or cancel their read)."""
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        ledger = state.ledger
        with contextlib.suppress(ResumeError):
            for index in indexes:
                if ledger.state(index) is ChunkState.PREPARED and self._stopping.is_set():
                    self.repo.save_chunks(state.record.file_id, ledger, [ledger.lose(index)])

    async def _patch(
        self,
        state: _FileState,
        part: _Part,
        specs: list[ChunkSpec],
        body: _Body,
        source: ChunkSource,
    ) -> None:
        """One PATCH of ``body`` (the rest of some chunks); on success the part's offset moves
        on and every chunk the new offset covers is committed. The body goes from the file
        where it can (sendfile), else from the buffers it was read into (no copy made here)."""
        assert part.url is not None
        state.fingerprint.check_against(state.job.path, restart_hint=RESTART_HINT)
        position, length = part.start + part.offset, body.length
        assert body.start == position, (body.start, position)
        whole = None
        if self._verifies(state) and position + length == state.record.size:
            whole = await self._whole_checksum(state)  # the server checks it, then publishes
        headers = {
            **tus.patch_headers(part.offset, body.checksum, whole),
            "Content-Length": str(length),
        }
        started = time.monotonic()
        http = self._http_client
        file_body = FileBody(source.file(), position, body.views, length)
        response = await http.send_file("PATCH", part.url, headers, file_body)
        if http.body_sent > started:
            self._rate = length / max(http.body_sent - started, 1e-6)
        # A file changed while it was being sent may have sent bytes other than those hashed.
        state.fingerprint.check_against(state.job.path, restart_hint=RESTART_HINT)
        state.result.bytes_sent += length
        if response.status_code == tus.CHECKSUM_FAILED:
            self._count_nack(state, specs[0].index)  # the request failed as a whole
            return
        if not response.is_success:
            raise self._error(response, f"the upload {part.url}")
        offset = _offset(response, part.url)
        if not part.offset <= offset <= part.offset + length:
            raise ProtocolError(
                f"{part.url}: a PATCH of {length} bytes at {part.offset} was answered "
                f"with Upload-Offset {offset}"
            )
        if offset == part.offset:
            part.idle += 1
            if part.idle > self.tus.max_resyncs:
                raise ProtocolError(f"{part.url}: the server takes no bytes")
            return
        part.idle = 0
        part.offset = offset
        if whole is not None and offset == part.length:
            state.result.checksum = whole  # verified by the server before it published
        for spec in specs:
            if part.start + offset >= spec.offset + spec.length:
                self._commit(state, spec.index)
        self._resyncs = 0
        assert self._retry is not None
        self._retry.progressed()

    def _verifies(self, state: _FileState) -> bool:
        """Whether the server checks this file's whole xxh3-128 (one upload, not parts)."""
        return self.capabilities.file_digest and not state.concatenated

    async def _whole_checksum(self, state: _FileState) -> str:
        if state.hasher is not None and state.hashed == state.ledger.chunk_count:
            return str(state.hasher.hexdigest())
        if state.whole is None:  # not every chunk passed through here in order
            state.whole = asyncio.create_task(file_checksum(state.job.path))
        return await state.whole

    def _count_nack(self, state: _FileState, index: int) -> None:
        count = state.nacks[index] = state.nacks.get(index, 0) + 1
        if count > self.options.max_nacks:
            raise ChecksumMismatch(
                f"{state.job.name}: chunk {index} failed its checksum on the server {count} "
                "times; the link or the source is corrupting data"
            )
        log.warning(
            "%s: chunk %d failed its checksum on the server; sending it again",
            state.job.name,
            index,
        )

    def _commit(self, state: _FileState, index: int) -> None:
        """Phase two: the server's offset covers the chunk."""
        ledger = state.ledger
        checksum = ledger.checksum(index)
        assert checksum is not None
        self.repo.commit_chunks(state.record.file_id, ledger, [ledger.commit(index, checksum)])
        self.progress.committed(state.job, ledger.spec(index).length)

    async def _concatenate(self, state: _FileState) -> None:
        """Join the finished partial uploads into the file (tus concatenation, ``final``)."""
        urls = [p.url for p in state.parts if p.url]
        response = await self._request(
            "POST",
            self.url,
            tus.final_headers(
                urls,
                _metadata(state.job, state.record.file_id, overwrite=self.options.overwrite),
            ),
        )
        if not response.is_success:
            raise self._error(response, f"joining the parts of {state.job.name}")
        location = response.headers.get("location")
        if not location:
            raise ProtocolError(f"{self.url} joined an upload without a Location header")
        url = urljoin(self.url, location)
        self.repo.update(state.record.file_id, upload_url=url)
        state.record = self.repo.get(state.record.file_id) or state.record
        await self._check_final(state)

    async def _confirm_finished(self, state: _FileState) -> None:
        """A transfer finished in an earlier run: the server must still hold all of it (its
        upload answers HEAD with the whole length), else it is sent again (``_Gone``)."""
        url = state.record.upload_url
        if url is None:
            raise _Gone("no upload URL was recorded for it")
        whole = _Part(-1, 0, state.ledger.chunk_count, 0, state.record.size, url)
        offset = await self._head(whole)
        if offset != whole.length:
            raise _Gone(f"the upload {url} holds {offset} of {whole.length} bytes")
        state.done = True
        state.result.state = "verified"
        state.result.resumed_from = state.record.size
        self.progress.file_done(state.result)

    async def _check_final(self, state: _FileState) -> None:
        """The joined upload exists and holds the whole file."""
        assert state.record.upload_url is not None
        final = _Part(
            -1, 0, state.ledger.chunk_count, 0, state.record.size, state.record.upload_url
        )
        offset = await self._head(final)
        if offset != final.length:
            raise ProtocolError(
                f"{final.url}: the joined upload holds {offset} of {final.length} bytes"
            )

    def _complete(self, state: _FileState) -> None:
        verified = {"checksum": state.result.checksum} if state.result.checksum else {}
        self.repo.update(
            state.record.file_id,
            state=TransferState.COMPLETED,
            last_error=None,
            offset=state.record.size,
            **verified,
        )
        state.done = True
        state.result.state = "completed"
        self.progress.file_done(state.result)


async def _gather(coroutines: object) -> None:
    """Run part uploads together; on a failure cancel the rest and raise the most telling."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:  # type: ignore[attr-defined]
                group.create_task(coroutine)
    except BaseExceptionGroup as failures:
        raise _most_telling(failures) from None


def _most_telling(group: BaseExceptionGroup) -> BaseException:
    """Bugs first, then the user's stop, fatal errors, start-over signals, retryable errors."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)

    def rank(exc: BaseException) -> int:
        if not isinstance(exc, ResumeError):
            return 0
        if isinstance(exc, Interrupted):
            return 1
        if isinstance(exc, _Gone | _Conflict):
            return 3
        return 2 if classify(exc) is Verdict.FATAL else 4

    return min(leaves, key=rank)


async def terminate(http: HttpClient, url: str) -> None:
    """DELETE an upload (tus termination); one that is already gone counts as deleted."""
    response = await http.request("DELETE", url)
    if response.is_success or response.status_code in (404, 410):
        return
    if tus.outcome(response.status_code) is tus.Outcome.RETRY:
        raise ServerBusy(
            f"deleting {url}: HTTP {response.status_code}", status=response.status_code
        )
    raise Rejected(f"deleting {url}: refused: HTTP {response.status_code}{_detail(response)}")


async def cancel_upload(
    record: TransferRecord, urls: Sequence[str], connect: ConnectOptions
) -> None:
    """``resume cancel`` of a tus transfer: delete its uploads on the server."""
    retry = RetryLoop(record.url, give_up_after=15.0)
    async with HttpClient(
        headers=tus.base_headers(connect.token),
        verify=connect.ssl or True,
        use_env_proxy=connect.use_env_proxy,
    ) as http:
        for url in urls:
            await retry.run(lambda url=url: terminate(http, url))


def upload_urls(store: Store, record: TransferRecord) -> list[str]:
    """Every upload URL of a tus transfer: its parts and the file's own."""
    parts = [p.url for p in TusPartRepository(store.db).parts(record.file_id) if p.url]
    return parts + ([record.upload_url] if record.upload_url else [])


def _metadata(job: FileJob, resume_id: str, *, overwrite: bool = False) -> dict[str, str]:
    """``Upload-Metadata`` of a file: its name and type, and where it goes in a directory.

    ``resume-id`` (our transfer id) makes the creation idempotent on `resume serve`: a run
    killed after the server created the upload but before the URL was stored creates it again
    and gets the same upload back (other servers keep it as plain metadata). ``overwrite``
    asks `resume serve` to replace an existing file, as ``--overwrite`` does over WebSocket.
    """
    filename = job.name.rsplit("/", 1)[-1]
    metadata = {
        "filename": filename,
        "filetype": mimetypes.guess_type(filename)[0] or "application/octet-stream",
        "resume-id": resume_id,
    }
    if "/" in job.name:
        metadata["relativePath"] = job.name
    if overwrite:
        metadata["overwrite"] = "1"
    return metadata


PATCH_RTTS = 8  # a PATCH should take this many round trips to send (see TusOptions)


def _hash_chunk(state: _FileState, index: int, buffer: bytes | bytearray | memoryview) -> str:
    """A chunk's checksum; also feeds the whole-file hash when the chunk is the next in order
    (run in a worker thread, off the event loop)."""
    if state.hasher is not None and index == state.hashed:
        state.hasher.update(buffer)
        state.hashed += 1
    return chunk_checksum(buffer)


def _offset(response: Response, url: str) -> int:
    try:
        return tus.upload_offset(response.headers)
    except tus.TusProtocolError as exc:
        raise ProtocolError(f"{url}: {exc}") from exc


def _detail(response: Response) -> str:
    """The first line of an error body, short, for a one-line message."""
    try:
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    except (UnicodeDecodeError, LookupError):
        text = ""
    return f": {text}" if text else ""
