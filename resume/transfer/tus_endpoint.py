"""The HTTP upload endpoint of `resume serve`: tus 1.0 and the IETF draft at ``/files``.

It is not a second receiver: every upload over HTTP is an :class:`~resume.transfer.incoming.Upload`
of the same :class:`~resume.transfer.receiver.UploadEndpoint` as the WebSocket uploads, decided
by the same machine (:mod:`resume.protocol.receive`), with the same ownership (one owner per
file and per name, across both protocols), durability (group fsync + store record before any
offset is acknowledged), publish (verified, atomic, never over an existing file unless asked),
crash recovery and expiry. Status codes and headers come from :mod:`resume.protocol.tus_server`.

How HTTP maps onto the machine: the server cuts every HTTP upload into chunks of
:data:`CHUNK_SIZE`; the bytes of a request are written as they arrive, each whole chunk is
hashed (xxh3-64) and handed to the group commit, and the end of the request's bytes (which may
lie inside a chunk) is made durable with the last batch. ``Upload-Offset`` in a response is the
machine's durable offset, so it never goes backwards, even after a SIGKILL. A request owns the
file while it runs (a newer request for the same upload fences it, as a newer WebSocket
``begin`` does); with ``Upload-Checksum`` (or ``Content-Digest``) nothing of the body counts
until the whole body matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from resume.asgi import Disconnected, HttpRequest, Send, respond
from resume.auth import Principal
from resume.crashpoints import crash_point
from resume.direct_body import BodyReader, BodySource, BodyTimeout
from resume.errors import Fenced, StoreError
from resume.protocol import tus_server as tus
from resume.protocol.frames import CloseCode
from resume.protocol.geometry import Geometry, GeometryError
from resume.protocol.receive import FinishOutcome, Phase, destination_problem
from resume.protocol.tus_server import Append, Creation, Dialect, Reply, Settings, UploadView
from resume.protocol.upload import ErrorCode, remote_name_problem
from resume.store.models import ReceiveState
from resume.store.received import LeaseHeld, NameTaken, ReceivedRecord
from resume.transfer.incoming import Refused, Upload, storage_refusal
from resume.transfer.leases import LeaseBusy
from resume.transfer.partial import BufferPool
from resume.transfer.receiver import UploadEndpoint

log = logging.getLogger("resume.tus")

CHUNK_SIZE = 4 * 2**20  # how the server cuts HTTP uploads (chunk records, per-chunk xxh3)
WRITE_BUFFER = 4 * 2**20  # body bytes read before one pwrite (two such buffers per PATCH)
DEFERRED_LIMIT = 2**40  # the most a deferred-length upload may become without --max-size
READ_BLOCK = 1 * 2**20
LINGER = 10.0  # seconds an upload's state stays loaded after a request, for the next PATCH
MAX_PARTS = 256  # partial uploads one final upload may join


class _Gone(Exception):
    """A newer request took the upload over."""


class RequestOwner:
    """One HTTP request that owns an upload while it appends (see ``incoming.Owner``)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.fenced: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        """Acks are not sent one by one: the response carries the durable offset."""

    async def refuse(self, refusal: Refused, file_id: str | None = None) -> None:
        """The request learns it from ``upload.drain()``, which raises the upload's failure."""

    async def close_after(self, refusal: Refused) -> None:
        """The response will say it."""

    def lose(self, upload: Upload, why: str) -> None:
        self.fenced = why


@dataclass(slots=True)
class Cursor:
    """Where an upload's byte stream stands: hashes of the chunk in progress and the whole."""

    pos: int
    chunk: Any  # xxh3-64 of [chunk start, pos)
    whole: Any | None  # xxh3-128 of [0, pos), or None when it cannot be known without a read

    def copy(self) -> Cursor:
        return Cursor(self.pos, self.chunk.copy(), self.whole.copy() if self.whole else None)


class TusEndpoint:
    """Answers ``/files`` (creation) and ``/files/<id>`` (upload URLs) over plain HTTP."""

    def __init__(
        self,
        uploads: UploadEndpoint,
        *,
        settings: Settings | None = None,
        base: str = "/files",
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.uploads = uploads
        self.settings = settings or Settings(max_size=uploads.max_file_size, expire=uploads.expire)
        self.base = base.rstrip("/")
        self.chunk_size = chunk_size
        self._holds: dict[str, asyncio.Task[None]] = {}  # file id -> its lingering hold
        self._buffers = BufferPool(WRITE_BUFFER)

    async def close(self) -> None:
        """Let go of the uploads kept loaded between requests."""
        holds, self._holds = list(self._holds.values()), {}
        for hold in holds:
            hold.cancel()
        await asyncio.gather(*holds, return_exceptions=True)

    def _linger(self, upload: Upload) -> None:
        """Keep ``upload`` loaded a little after a request (its record, held chunks and stream
        hashes), so a client's next PATCH does not reload it and the whole-file hash need not
        be read back from disk at the end. The hold is one more user of the object."""
        upload.users += 1

        async def hold() -> None:
            try:
                await asyncio.sleep(LINGER)
            finally:
                if self._holds.get(upload.file_id) is task:
                    del self._holds[upload.file_id]
                await self.uploads.release(upload)

        task = asyncio.ensure_future(hold())
        previous = self._holds.get(upload.file_id)
        self._holds[upload.file_id] = task
        if previous is not None:
            previous.cancel()

    # -- dispatch ---------------------------------------------------------------------------

    async def serve_http(
        self, request: HttpRequest, principal: Principal, body: BodyReader, send: Send
    ) -> None:
        """Answer one request under the endpoint's base path (``body``: its body)."""
        self.uploads.start_housekeeping()
        headers = request.mapping
        origin = headers.get("origin")
        cors = tus.cors_headers(origin, self.settings, preflight=False)
        rest = request.path[len(self.base) :].strip("/") if self.base else request.path.strip("/")
        method = tus.effective_method(request.method, headers)
        if method == "OPTIONS":
            if origin and "access-control-request-method" in headers:
                preflight = tus.cors_headers(origin, self.settings, preflight=True)
                await self._send(send, Reply(204, preflight))
            else:
                await self._send(send, tus.options_reply(self.settings).with_headers(*cors))
            return
        dialect = tus.dialect_of(method, headers)
        if isinstance(dialect, Reply):
            await self._send(send, dialect.with_headers(*cors))
            return
        try:
            reply = await self._dispatch(method, rest, request, principal, dialect, body, send)
        except (OSError, StoreError) as exc:
            log.error("storage failure serving %s %s: %s", method, request.path, exc)
            refusal = storage_refusal(exc, "this upload")
            reply = _refusal_reply(refusal, dialect)
        except LeaseBusy as exc:  # several nodes: another one holds it for now
            reply = tus.problem(503, "", str(exc), dialect).with_headers(("Retry-After", "1"))
        except BodyTimeout as exc:
            reply = tus.problem(408, "", f"{exc}; what arrived is kept", dialect).with_headers(
                ("Connection", "close")
            )
        except Disconnected:
            return  # nobody to answer
        if reply is not None:
            await self._send(send, reply.with_headers(*cors), head=method == "HEAD")

    async def _dispatch(
        self,
        method: str,
        rest: str,
        request: HttpRequest,
        principal: Principal,
        dialect: Dialect,
        body: BodyReader,
        send: Send,
    ) -> Reply | None:
        if not rest:
            if method != "POST":
                return Reply(405, (("Allow", "OPTIONS, POST"), *tus.base_headers(dialect)))
            creation = tus.parse_creation(request.mapping, dialect, self.settings)
            if isinstance(creation, Reply):
                return creation
            if creation.concat == "final":
                return await self.concatenate(request, principal, creation)
            return await self.create(request, principal, creation, body)
        url_id = tus.upload_id(rest)
        if url_id is None:
            return tus.problem(404, "", f"no upload {rest[:80]!r}", dialect)
        if method == "HEAD":
            return await self.head(principal, url_id, dialect)
        if method == "PATCH":
            append = tus.parse_append(request.mapping, dialect)
            if isinstance(append, Reply):
                return append
            return await self.patch(request, principal, url_id, append, body)
        if method == "DELETE":
            return await self.delete(principal, url_id, dialect)
        if method == "GET":
            return await self.download(request, principal, url_id, dialect, send)
        allow = "OPTIONS, HEAD, PATCH, DELETE, GET"
        return Reply(405, (("Allow", allow), *tus.base_headers(dialect)))

    async def _send(self, send: Send, reply: Reply, *, head: bool = False) -> None:
        await respond(send, reply.status, reply.headers, reply.body, head=head)

    def key(self, principal: Principal, url_id: str) -> str:
        """The server's file id for an upload URL: namespaced by who asks, as on /upload."""
        if principal.sub is None:
            return url_id
        return xxhash.xxh3_128_hexdigest(principal.namespaced(url_id).encode())

    # -- creation ---------------------------------------------------------------------------

    async def create(
        self, request: HttpRequest, principal: Principal, creation: Creation, body: BodyReader
    ) -> Reply:
        dialect = creation.dialect
        url_id = _url_id(creation)
        partial = creation.concat == "partial"
        name = url_id if partial else tus.remote_name(creation.metadata) or url_id
        refused = self._check_name(name, principal, dialect)
        if refused is not None:
            return refused
        try:
            geometry = Geometry(
                creation.length if creation.length is not None else self._deferred_size(),
                self.chunk_size,
            )
        except GeometryError as exc:
            return tus.problem(413, "", str(exc), dialect)
        http: dict[str, object] = {
            "url_id": url_id,
            "metadata_header": creation.metadata_header,
            "length_deferred": creation.length is None,
            "concat": creation.concat,
            "digest": creation.digest,
        }
        overwrite = tus.wants_overwrite(creation.metadata)
        owner = RequestOwner(request.client)
        upload = await self.uploads.acquire(self.key(principal, url_id), url_id)
        epoch = 0
        try:
            existing = await self._created_before(upload, request, name, geometry, creation)
            if existing is not None:
                return existing
            refused = await self._claim_new(
                upload,
                owner,
                name,
                geometry,
                dialect,
                size_known=creation.length is not None,
                overwrite=overwrite,
                claim_name=not partial,
                http=http,
            )
            if refused is not None:
                return refused
            epoch = upload.require().epoch
            log.info(
                "upload begin %s (%s, %s bytes, HTTP) from %s",
                name,
                url_id,
                creation.length if creation.length is not None else "deferred",
                request.client,
                extra={"peer": request.client, "file_id": url_id},
            )
            if creation.has_body or (creation.complete and creation.length == 0):
                append = Append(
                    dialect, 0, None, creation.complete, creation.checksum, creation.length
                )
                refused = await self.append(upload, owner, epoch, append, body)
                if refused is not None:
                    return refused
            elif geometry.size == 0 and creation.length == 0 and not partial:
                refused = await self.complete(upload, owner, epoch, dialect)
                if refused is not None:
                    return refused
            location = request.url_for(f"{self.base}/{url_id}")
            return tus.created_reply(
                self.view(upload),
                location,
                dialect,
                self.settings,
                with_body=creation.has_body,
            )
        finally:
            await self._let_go(upload, owner, epoch)

    async def _claim_new(
        self,
        upload: Upload,
        owner: RequestOwner,
        name: str,
        geometry: Geometry,
        dialect: Dialect,
        *,
        size_known: bool,
        overwrite: bool,
        claim_name: bool,
        http: dict[str, object],
    ) -> Reply | None:
        """Check the destination and space, take the new file and record it (as ``begin``)."""
        endpoint = self.uploads
        cap = endpoint.limits.max_http_uploads
        if await asyncio.to_thread(endpoint.repo.count_unfinished_http) >= cap:
            return tus.problem(
                429,
                "",
                f"the server already has {cap} unfinished uploads over HTTP; try again later",
                dialect,
            ).with_headers(("Retry-After", "60"))
        if claim_name:
            destination = await asyncio.to_thread(endpoint.root.inspect, name)
            problem = destination_problem(destination, overwrite=overwrite)
            if problem:
                code, reason = problem
                return _refusal_reply(Refused(ErrorCode(code), f"{name}: {reason}"), dialect)
            holder = endpoint.names.get(name)
            if holder is not None and holder != upload.file_id:
                return _refusal_reply(_name_in_use(name, holder), dialect)
        if size_known and endpoint.free_bytes() - geometry.size < endpoint.limits.min_free_bytes:
            return _refusal_reply(
                Refused(ErrorCode.DISK_FULL, f"server has no space left for {name}"), dialect
            )
        # -- from here to the claim: no await (one owner per file and per name).
        upload.create_appended(name, geometry, size_known=size_known)
        if claim_name:
            endpoint.names[name] = upload.file_id
        upload.require().take(overwrite=overwrite)
        upload.owner = owner
        claimed = await upload.claim(owner, claim_name=claim_name, http=http)
        if isinstance(claimed, NameTaken):
            upload.owner = None
            upload.reception = None
            endpoint.names.pop(name, None)
            return _refusal_reply(_name_in_use(name, claimed.holder), dialect)
        crash_point("begin.claimed")
        upload.http = await asyncio.to_thread(endpoint.repo.http, upload.file_id)
        async with upload.io:
            await asyncio.to_thread(upload.partial.create)
        crash_point("begin.partial_created")
        upload.start_flusher()
        return None

    async def _created_before(
        self,
        upload: Upload,
        request: HttpRequest,
        name: str,
        geometry: Geometry,
        creation: Creation,
    ) -> Reply | None:
        """A creation repeated with the same ``resume-id``: the upload made the first time
        (its client died before it stored the URL), or 409 if the id now means another file.
        None when there is no such upload (a cancelled one is forgotten first)."""
        reception, http = upload.reception, upload.http
        if reception is None or http is None:
            return None
        if reception.phase is Phase.CANCELLED:
            await asyncio.to_thread(self.uploads.repo.delete, upload.file_id)
            upload.reception = upload.http = upload.record = None
            return None
        dialect = creation.dialect
        same = (reception.name, http.concat) == (name, creation.concat) and (
            not reception.size_known
            if creation.length is None and creation.concat != "final"
            else reception.geometry.size == geometry.size
        )
        if not same:
            return tus.problem(
                409, "", "resume-id names an upload of another name or length", dialect
            )
        location = request.url_for(f"{self.base}/{upload.wire_id}")
        return tus.created_reply(
            self.view(upload), location, dialect, self.settings, with_body=creation.has_body
        )

    def _check_name(self, name: str, principal: Principal, dialect: Dialect) -> Reply | None:
        problem = remote_name_problem(name)
        if problem:
            return tus.problem(400, "", f"refused name {name!r}: {problem}", dialect)
        if not principal.may_upload(name):
            return tus.problem(
                403, "", f"{name}: your token does not allow uploads under this name", dialect
            )
        return None

    def _deferred_size(self) -> int:
        limit = self.settings.max_size
        return min(limit if limit is not None else DEFERRED_LIMIT, DEFERRED_LIMIT)

    # -- offset retrieval, termination, download ---------------------------------------------

    async def head(self, principal: Principal, url_id: str, dialect: Dialect) -> Reply:
        upload = await self.uploads.acquire(self.key(principal, url_id), url_id)
        try:
            missing = _missing(upload, dialect)
            if missing is not None:
                return missing
            refused = await self._settle(upload, principal, dialect)
            if refused is not None:
                return refused
            return tus.head_reply(self.view(upload), dialect, self.settings)
        finally:
            await self.uploads.release(upload)

    async def _settle(self, upload: Upload, principal: Principal, dialect: Dialect) -> Reply | None:
        """Finish what a crash interrupted, before saying where the upload stands: every byte
        durable but not published (a crash at or after verification), or a concatenation cut
        short. Nothing to do for an upload still receiving bytes or already published."""
        reception, http = upload.require(), upload.http
        if reception.phase is not Phase.RECEIVING or upload.owner is not None or http is None:
            return None
        whole = reception.size_known and reception.offset == reception.geometry.size
        if http.concat == "partial" or (http.concat != "final" and not whole):
            return None
        owner = RequestOwner("-")
        epoch = await self._take(upload, owner)
        try:
            if http.concat == "final" and not whole:
                return await self._concatenate_parts(upload, principal, owner, epoch, dialect)
            return await self.complete(upload, owner, epoch, dialect)
        finally:
            await self._release_owner(upload, owner, epoch)

    async def delete(self, principal: Principal, url_id: str, dialect: Dialect) -> Reply:
        """Termination: an unfinished upload is cancelled (its owner fenced, its data gone)."""
        endpoint = self.uploads
        upload = await endpoint.acquire(self.key(principal, url_id), url_id)
        try:
            missing = _missing(upload, dialect)
            if missing is not None:
                return missing
            await upload.settled.wait()
            reception = upload.require()
            if reception.phase is Phase.COMPLETED:
                return tus.problem(
                    403,
                    "",
                    f"the upload is complete and published as {reception.name}; "
                    "it is not deleted through its upload URL",
                    dialect,
                )
            await upload.cancel()
            endpoint.names.pop(reception.name, None)
            log.info("cancelled %s (%s) over HTTP", reception.name, url_id)
            return Reply(204, tus.base_headers(dialect))
        finally:
            await endpoint.release(upload)

    async def download(
        self, request: HttpRequest, principal: Principal, url_id: str, dialect: Dialect, send: Send
    ) -> Reply | None:
        """GET of a completed upload: its bytes as published (``Range`` honoured)."""
        upload = await self.uploads.acquire(self.key(principal, url_id), url_id)
        try:
            missing = _missing(upload, dialect)
            if missing is not None:
                return missing
            reception, record = upload.require(), upload.record
            if reception.phase is not Phase.COMPLETED or record is None:
                return tus.problem(404, "", "the upload is not complete", dialect)
            fd = await asyncio.to_thread(self.uploads.root.open_read, reception.name)
        finally:
            await self.uploads.release(upload)
        if fd is None:
            return tus.problem(410, "", f"{reception.name} is no longer on the server", dialect)
        try:
            st = os.fstat(fd)
            if record.published_inode and (st.st_ino, st.st_mtime_ns) != (
                record.published_inode,
                record.published_mtime_ns,
            ):
                return tus.problem(410, "", f"{reception.name} was replaced since", dialect)
            wanted = tus.parse_range(request.header("range"), st.st_size)
            if isinstance(wanted, Reply):
                return wanted
            start, end = wanted or (0, st.st_size)
            headers = [
                *tus.base_headers(dialect),
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(end - start)),
                ("Accept-Ranges", "bytes"),
                *tus.cors_headers(request.header("origin"), self.settings, preflight=False),
            ]
            status = 200
            if wanted is not None:
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{st.st_size}"))
            await _stream_file(send, fd, start, end, status, headers)
        finally:
            os.close(fd)
        return None

    # -- appending --------------------------------------------------------------------------

    async def patch(
        self,
        request: HttpRequest,
        principal: Principal,
        url_id: str,
        append: Append,
        body: BodyReader,
    ) -> Reply:
        dialect = append.dialect
        endpoint = self.uploads
        upload = await endpoint.acquire(self.key(principal, url_id), url_id)
        owner = RequestOwner(request.client)
        epoch = 0
        try:
            missing = _missing(upload, dialect)
            if missing is not None:
                return missing
            await upload.settled.wait()
            problem = tus.append_problem(self.view(upload), append, self.settings.max_size)
            if problem is not None:
                return problem
            reception = upload.require()
            if reception.phase is Phase.COMPLETED:  # an empty PATCH at the end: nothing to do
                return tus.appended_reply(self.view(upload), dialect)
            epoch = await self._take(upload, owner)
            if upload.owner is not owner:
                return tus.mismatch_reply(reception.offset, append.offset, dialect)
            if reception.offset != append.offset:  # an earlier owner's bytes became durable
                return tus.mismatch_reply(reception.offset, append.offset, dialect)
            if append.digest is not None:  # recorded first: a crash later still checks it
                await self._record_digest(upload, append.digest)
            return await self.append(upload, owner, epoch, append, body) or tus.appended_reply(
                self.view(upload), dialect
            )
        finally:
            await self._let_go(upload, owner, epoch)

    async def _take(self, upload: Upload, owner: RequestOwner) -> int:
        """``owner`` (a new request) takes the upload: any earlier request is fenced, what it
        wrote is made durable, and the store's fence moves to the new owner."""
        reception = upload.require()
        epoch = reception.take(overwrite=reception.overwrite)
        previous, upload.owner = upload.owner, owner
        if previous is not None and previous is not owner:
            previous.lose(upload, "taken over by a newer request")
        if upload.fence < 0 or upload.failure is not None or self.uploads.lease is not None:
            # One node: claimed in the store once per loaded upload; later requests fence each
            # other in memory (the epoch above). Several nodes: every request takes the lease.
            claimed = await upload.claim(owner, claim_name=False)
            if isinstance(claimed, LeaseHeld) or (
                isinstance(claimed, ReceivedRecord) and claimed.state is not ReceiveState.RECEIVING
            ):
                raise LeaseBusy(
                    f"upload {upload.wire_id} changed hands between server nodes; try again",
                    close_code=CloseCode.TRY_AGAIN_LATER,
                )
        async with upload.io:  # a crash between the claim and the partial's creation
            created = await asyncio.to_thread(upload.partial.create)
        if created and reception.offset:  # the store listed bytes of a vanished partial
            await asyncio.to_thread(self.uploads.repo.forget_chunks, upload.file_id)
            reception.lose()
        with contextlib.suppress(Refused):
            await upload.drain()
        upload.start_flusher()
        return epoch

    async def append(
        self,
        upload: Upload,
        owner: RequestOwner,
        epoch: int,
        append: Append,
        body: BodySource,
    ) -> Reply | None:
        """Write a request body at the upload's durable offset; None when all went well (the
        caller answers with the new offset), else the refusal to send."""
        dialect = append.dialect
        reception = upload.require()
        if append.length is not None and not reception.size_known:
            geometry = reception.declare_size(append.length)
            await self._record_size(upload, geometry)
        start = reception.offset
        cursor = await self._cursor(upload, start)
        saved = cursor.copy() if append.checksum else None
        body_hash = tus.body_checksum(append.checksum[0]) if append.checksum else None
        limit = reception.geometry.size
        completed: list[tuple[int, str]] = []
        overflow = False
        gone: Exception | None = None
        idle = self.uploads.limits.idle_timeout
        # Two page-aligned buffers: the body is read into one while the other is written
        # (O_DIRECT straight from it) and hashed in a thread.
        buffers = self._buffers.take()
        writing: asyncio.Future[list[tuple[int, str]]] | None = None
        taken = start  # the stream position after the bytes read so far
        try:
            while True:
                if owner.fenced:
                    raise _Gone(owner.fenced)
                if taken >= limit:  # one more byte would be past the length
                    overflow = await body.readinto(memoryview(bytearray(1)), idle) > 0
                    break
                view = buffers.next()[: limit - taken]
                n = await body.readinto(view, idle)
                if n == 0:
                    break
                if writing is not None:
                    completed += await writing
                    writing = None
                    if saved is None:
                        self._mark(upload, epoch, completed)
                writing = asyncio.ensure_future(
                    self._write(upload, owner, epoch, cursor, view[:n], body_hash)
                )
                taken += n
        except (Disconnected, _Gone) as exc:
            gone = exc
        finally:
            if writing is not None:
                try:
                    completed += await writing
                except _Gone as exc:
                    gone = gone or exc
            self._buffers.give_back(buffers)
        if owner.fenced:
            return tus.mismatch_reply(reception.offset, append.offset, dialect)
        if saved is not None:
            assert append.checksum is not None and body_hash is not None
            if gone or body_hash.digest() != append.checksum[1]:
                upload.appender = saved  # the body counts for nothing: back to where it began
                if isinstance(gone, Disconnected):
                    raise gone
                log.warning("a PATCH body of %s failed its checksum", reception.name)
                return tus.checksum_failed(dialect)
        self._mark(upload, epoch, completed)
        if cursor.pos > start:
            reception.appended(epoch, cursor.pos)
            upload.kick()
            self.uploads.metrics.bytes_received.inc(cursor.pos - start)
        try:
            await upload.drain()
        except Refused as refusal:
            return _refusal_reply(refusal, dialect)
        if isinstance(gone, Disconnected):
            raise gone  # what arrived is kept
        if overflow:
            return tus.problem(
                413, "", f"the body goes past the upload's length of {limit} bytes", dialect
            )
        if append.complete and dialect is Dialect.IETF:
            if not reception.size_known:
                geometry = reception.declare_size(cursor.pos)
                await self._record_size(upload, geometry)
            elif cursor.pos != reception.geometry.size:
                return tus.problem(
                    400,
                    "inconsistent-upload-length",
                    "Upload-Complete: ?1 before the upload's length was reached",
                    dialect,
                )
        if await self._seal_last_chunk(upload, epoch, cursor):
            try:
                await upload.drain()
            except Refused as refusal:
                return _refusal_reply(refusal, dialect)
        if reception.size_known and reception.offset == reception.geometry.size:
            http = upload.http
            if http is None or http.concat != "partial":
                return await self.complete(upload, owner, epoch, dialect)
        return None

    async def _cursor(self, upload: Upload, start: int) -> Cursor:
        """The stream's hashes at ``start``: kept from the last request, else rebuilt from the
        chunk in progress on disk (the whole-file hash is then computed at the end)."""
        cursor = upload.appender
        if isinstance(cursor, Cursor) and cursor.pos == start:
            return cursor
        chunk_start = start - start % self.chunk_size
        partial = upload.partial

        def read_head() -> bytes:
            if start == chunk_start:
                return b""
            fd = os.open(partial.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                return os.pread(fd, start - chunk_start, chunk_start)
            finally:
                os.close(fd)

        head = await asyncio.to_thread(read_head)
        chunk = xxhash.xxh3_64()
        chunk.update(head)
        cursor = Cursor(start, chunk, xxhash.xxh3_128() if start == 0 else None)
        upload.appender = cursor
        return cursor

    async def _write(
        self,
        upload: Upload,
        owner: RequestOwner,
        epoch: int,
        cursor: Cursor,
        data: memoryview,
        body_hash: Any | None,
    ) -> list[tuple[int, str]]:
        """Write ``data`` at the cursor and hash it (in a thread); the chunks it completed."""
        reception = upload.require()
        size = reception.geometry.size
        chunk_size = self.chunk_size

        def write_and_hash() -> list[tuple[int, str]]:
            upload.partial.write(cursor.pos, data, aligned=True)
            crash_point("chunk.written")
            view = memoryview(data)
            done = []
            if body_hash is not None:
                body_hash.update(view)
            if cursor.whole is not None:
                cursor.whole.update(view)
            while view:
                room = chunk_size - cursor.pos % chunk_size
                part, view = view[:room], view[room:]
                cursor.chunk.update(part)
                cursor.pos += len(part)
                if cursor.pos % chunk_size == 0 or (reception.size_known and cursor.pos == size):
                    done.append(((cursor.pos - 1) // chunk_size, cursor.chunk.hexdigest()))
                    cursor.chunk.reset()
            return done

        async with upload.io:
            if owner.fenced or not reception.owns(epoch):
                raise _Gone(owner.fenced or "taken over")
            return await asyncio.to_thread(write_and_hash)

    async def _seal_last_chunk(self, upload: Upload, epoch: int, cursor: Cursor) -> bool:
        """The length became known with the stream already at its end (deferred length, or an
        IETF ``Upload-Complete: ?1``): the last, short chunk is whole now. True if it was
        handed to the group commit."""
        reception = upload.require()
        size = reception.geometry.size
        if not reception.size_known or cursor.pos != size or size % self.chunk_size == 0:
            return False
        last = reception.geometry.count - 1
        if last in reception.held:
            return False
        reception.written(epoch, last, cursor.chunk.hexdigest())
        cursor.chunk.reset()
        upload.kick()
        return True

    def _mark(self, upload: Upload, epoch: int, completed: list[tuple[int, str]]) -> None:
        """Hand whole chunks to the group commit."""
        reception = upload.require()
        for index, checksum in completed:
            reception.written(epoch, index, checksum)
        if completed:
            upload.kick()
        completed.clear()

    async def _record_digest(self, upload: Upload, digest: str) -> None:
        http = upload.http
        if http is None:  # not an HTTP upload: there is no row to keep a digest in
            return
        merged = tus.merge_digests(http.digest, digest)
        await asyncio.to_thread(self.uploads.repo.set_digest, upload.file_id, upload.fence, merged)
        upload.http = dataclasses.replace(http, digest=merged)

    async def _record_size(self, upload: Upload, geometry: Geometry) -> None:
        await asyncio.to_thread(
            self.uploads.repo.declare_size, upload.file_id, upload.fence, geometry.size
        )
        upload.partial.size = geometry.size
        await asyncio.to_thread(os.truncate, upload.partial.path, geometry.size)
        upload.http = await asyncio.to_thread(self.uploads.repo.http, upload.file_id)

    async def complete(
        self, upload: Upload, owner: RequestOwner, epoch: int, dialect: Dialect
    ) -> Reply | None:
        """Every byte is durable: verify, publish under the name, record (as ``finish``)."""
        reception = upload.require()
        cursor = upload.appender
        if isinstance(cursor, Cursor) and cursor.whole is not None:
            upload.hasher, upload.hashed = cursor.whole, reception.geometry.count
            upload.hasher_valid = True
        else:
            upload.hasher_valid = False
        http = upload.http
        claimed = tus.claimed_file_checksum(http.digest) if http is not None else None
        async with upload.io:
            try:
                verdict = await upload.finish(epoch, claimed)
            except Refused as refusal:
                return _refusal_reply(refusal, dialect)
            if verdict.outcome is FinishOutcome.FENCED:
                return tus.mismatch_reply(reception.offset, reception.offset, dialect)
            if verdict.outcome is FinishOutcome.INCOMPLETE:
                return None
            upload.settled.clear()
            try:
                await upload.publish(check=self._digest_check(upload))
            except Refused as refusal:
                return _refusal_reply(refusal, dialect)
            except Fenced:
                return tus.mismatch_reply(reception.offset, reception.offset, dialect)
            finally:
                upload.settled.set()
        upload.owner = None
        self.uploads.names.pop(reception.name, None)
        self.uploads.metrics.uploads_completed.inc()
        log.info(
            "upload finished %s (%d bytes, HTTP) from %s",
            reception.name,
            reception.geometry.size,
            owner.peer,
            extra={"peer": owner.peer, "file_id": upload.wire_id},
        )
        return None

    def _digest_check(self, upload: Upload) -> Any:
        """The read-back check of a sha-256/sha-512 ``Repr-Digest`` (None if there is none:
        an xxh3-128 one is the machine's own whole-file check, in ``finish``)."""
        http = upload.http
        if http is None or not http.digest:
            return None
        header = http.digest
        path = upload.partial.path
        algorithms = tus.digest_algorithms(header)
        if not algorithms:
            return None

        def check() -> str | None:
            hashers = {a: tus.body_checksum(a) for a in algorithms}
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                offset = 0
                while block := os.pread(fd, READ_BLOCK, offset):
                    offset += len(block)
                    for hasher in hashers.values():
                        hasher.update(block)
            finally:
                os.close(fd)
            digests = {a: h.digest() for a, h in hashers.items()}
            return None if tus.digest_matches(header, digests) else "Repr-Digest does not match"

        return check

    # -- concatenation ----------------------------------------------------------------------

    async def concatenate(
        self, request: HttpRequest, principal: Principal, creation: Creation
    ) -> Reply:
        """``Upload-Concat: final;...``: a new upload made of complete partial uploads."""
        dialect = creation.dialect
        if "resume-id" in creation.metadata:  # created before (the client did not learn it)?
            url_id = _url_id(creation)
            upload = await self.uploads.acquire(self.key(principal, url_id), url_id)
            try:
                if upload.reception is not None and upload.http is not None:
                    location = request.url_for(f"{self.base}/{url_id}")
                    return tus.created_reply(
                        self.view(upload), location, dialect, self.settings, with_body=False
                    )
            finally:
                await self.uploads.release(upload)
        if len(creation.parts) > MAX_PARTS:
            return tus.problem(400, "", f"a final upload joins at most {MAX_PARTS} parts", dialect)
        part_ids = []
        total = 0
        for url in creation.parts:
            part_url_id = tus.id_from_url(url)
            if part_url_id is None:
                return tus.problem(
                    400, "", f"{url[:80]!r} is not an upload of this server", dialect
                )
            file_id = self.key(principal, part_url_id)
            part = await self.uploads.acquire(file_id, part_url_id)
            try:
                reception = part.reception
                if reception is None or part.http is None or part.http.concat != "partial":
                    return tus.problem(400, "", f"{url[:80]!r} is not a partial upload", dialect)
                if not reception.size_known or reception.offset != reception.geometry.size:
                    return tus.problem(
                        400, "", f"partial upload {url[:80]!r} is not complete", dialect
                    )
                total += reception.geometry.size
                part_ids.append(part_url_id)
            finally:
                await self.uploads.release(part)
        if self.settings.max_size is not None and total > self.settings.max_size:
            return tus.problem(413, "", f"{total} bytes is over the server's limit", dialect)
        url_id = _url_id(creation)
        name = tus.remote_name(creation.metadata) or url_id
        refused = self._check_name(name, principal, dialect)
        if refused is not None:
            return refused
        owner = RequestOwner(request.client)
        upload = await self.uploads.acquire(self.key(principal, url_id), url_id)
        epoch = 0
        try:
            existing = await self._created_before(
                upload, request, name, Geometry(total, self.chunk_size), creation
            )
            if existing is not None:
                return existing
            refused = await self._claim_new(
                upload,
                owner,
                name,
                Geometry(total, self.chunk_size),
                dialect,
                size_known=True,
                overwrite=tus.wants_overwrite(creation.metadata),
                claim_name=True,
                http={
                    "url_id": url_id,
                    "metadata_header": creation.metadata_header,
                    "length_deferred": False,
                    "concat": "final",
                    "parts": " ".join(part_ids),
                },
            )
            if refused is not None:
                return refused
            epoch = upload.require().epoch
            log.info(
                "upload begin %s (%s, %d bytes, HTTP, joining %d partial uploads) from %s",
                name,
                url_id,
                total,
                len(part_ids),
                request.client,
                extra={"peer": request.client, "file_id": url_id},
            )
            refused = await self._concatenate_parts(upload, principal, owner, epoch, dialect)
            if refused is not None:
                return refused
            location = request.url_for(f"{self.base}/{url_id}")
            return tus.created_reply(
                self.view(upload), location, dialect, self.settings, with_body=False
            )
        finally:
            await self._let_go(upload, owner, epoch)

    async def _concatenate_parts(
        self,
        upload: Upload,
        principal: Principal,
        owner: RequestOwner,
        epoch: int,
        dialect: Dialect,
    ) -> Reply | None:
        """Append the partial uploads' bytes (from the final's durable offset on), publish,
        then drop the partial uploads."""
        http = upload.http
        assert http is not None and http.parts is not None
        part_ids = [self.key(principal, url_id) for url_id in http.parts.split()]
        paths = [self.uploads.root.partial_path(file_id) for file_id in part_ids]
        start = upload.require().offset

        append = Append(dialect, start)
        with _PartsBody(paths, start) as body:
            refused = await self.append(upload, owner, epoch, append, body)
        if refused is not None:
            return refused
        if upload.require().phase is Phase.COMPLETED:
            for file_id in part_ids:
                await self._drop_part(file_id)
        return None

    async def _drop_part(self, file_id: str) -> None:
        endpoint = self.uploads
        await asyncio.to_thread(endpoint.root.partial_path(file_id).unlink, missing_ok=True)
        await asyncio.to_thread(endpoint.repo.delete, file_id)

    # -- helpers ----------------------------------------------------------------------------

    def view(self, upload: Upload) -> UploadView:
        """What a reply says about ``upload`` now."""
        reception = upload.require()
        http = upload.http
        record = upload.record
        expires = None
        if self.settings.expire and record is not None:
            changed = record.timestamp.replace(tzinfo=dt.UTC).timestamp()
            expires = changed + self.settings.expire
        complete = reception.phase is Phase.COMPLETED or (
            http is not None
            and http.concat == "partial"
            and reception.size_known
            and reception.offset == reception.geometry.size
        )
        length = reception.geometry.size if reception.size_known else None
        offset = reception.geometry.size if reception.phase is Phase.COMPLETED else reception.offset
        part_urls: tuple[str, ...] = ()
        if http is not None and http.concat == "final" and http.parts:
            part_urls = tuple(f"{self.base}/{url_id}" for url_id in http.parts.split())
        return UploadView(
            url_id=upload.wire_id,
            offset=offset,
            length=length,
            complete=complete,
            metadata_header=http.metadata_header if http else None,
            concat=http.concat if http else None,
            part_urls=part_urls,
            expires=expires,
        )

    async def _let_go(self, upload: Upload, owner: RequestOwner, epoch: int) -> None:
        """The request ends: what it wrote is durable, it owns the file no more."""
        try:
            await self._release_owner(upload, owner, epoch)
            reception = upload.reception
            # Several nodes: another node may advance the upload before the next request, so
            # its state is loaded from the store every time (a node that kept it would answer
            # HEAD and PATCH with a stale offset).
            lone_node = self.uploads.lease is None
            if lone_node and reception is not None and reception.phase is Phase.RECEIVING:
                self._linger(upload)
        finally:
            await self.uploads.release(upload)

    async def _release_owner(self, upload: Upload, owner: RequestOwner, epoch: int) -> None:
        if upload.owner is owner and upload.reception is not None:
            upload.reception.release(epoch)
            upload.owner = None
            async with upload.io:
                with contextlib.suppress(Refused):
                    await upload.drain()
                if upload.owner is None:
                    upload.partial.close()
            await upload.release_lease()  # several nodes: another may take it now


class _PartsBody:
    """The body of a concatenation: the partial uploads' bytes from ``start`` on, read from
    disk straight into the caller's buffer."""

    def __init__(self, paths: list[Path], start: int) -> None:
        self.paths = paths
        self.skip = start
        self.index = 0
        self.fd = -1
        self.position = self.size = 0

    async def readinto(self, buffer: memoryview, idle: float | None = None) -> int:
        return await asyncio.to_thread(self._fill, buffer)

    def _fill(self, buffer: memoryview) -> int:
        filled = 0
        while filled < len(buffer) and self.index < len(self.paths):
            if self.fd < 0:
                path = self.paths[self.index]
                self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                self.size = os.fstat(self.fd).st_size
                self.position, self.skip = min(self.skip, self.size), max(0, self.skip - self.size)
            want = min(len(buffer) - filled, self.size - self.position)
            if want <= 0:
                self._next()
                continue
            n = os.preadv(self.fd, [buffer[filled : filled + want]], self.position)
            if n == 0:
                raise OSError(f"partial upload {self.paths[self.index].name} ends early")
            filled += n
            self.position += n
        return filled

    def _next(self) -> None:
        os.close(self.fd)
        self.fd = -1
        self.index += 1

    def __enter__(self) -> _PartsBody:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _stream_file(
    send: Send, fd: int, start: int, end: int, status: int, headers: list[tuple[str, str]]
) -> None:
    """Send bytes [start, end) of ``fd`` as the response body, a block at a time."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    position = start
    while position < end:
        block = await asyncio.to_thread(os.pread, fd, min(READ_BLOCK, end - position), position)
        if not block:
            break
        position += len(block)
        await send({"type": "http.response.body", "body": block, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def _missing(upload: Upload, dialect: Dialect) -> Reply | None:
    """404 for an upload this server does not know (or another principal's), 410 for a
    cancelled or expired one."""
    reception = upload.reception
    if reception is None or upload.http is None:
        return tus.problem(404, "", "no such upload", dialect)
    if reception.phase is Phase.CANCELLED:
        return tus.problem(410, "", "the upload was cancelled or expired", dialect)
    return None


def _url_id(creation: Creation) -> str:
    """A new upload's id: random, or derived from the client's ``resume-id`` metadata so that
    a repeated creation finds the same upload."""
    resume_id = creation.metadata.get("resume-id")
    if resume_id:
        return xxhash.xxh3_128_hexdigest(f"resume-id\0{resume_id}".encode())
    return uuid.uuid4().hex


def _name_in_use(name: str, holder: str) -> Refused:
    return Refused(
        ErrorCode.NAME_IN_USE,
        f"{name} is being uploaded by another transfer ({holder[:8]}); it is refused until "
        "that one finishes, is cancelled or expires",
    )


_STATUS = {
    ErrorCode.EXISTS: 409,
    ErrorCode.NAME_IN_USE: 409,
    ErrorCode.BAD_NAME: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.DISK_FULL: 507,
    ErrorCode.CHECKSUM_MISMATCH: 400,
    ErrorCode.MISMATCH: 409,
    ErrorCode.LIMIT: 429,
}


def _refusal_reply(refusal: Refused, dialect: Dialect) -> Reply:
    """The HTTP answer for a refusal of the shared receiver (no internals in the text)."""
    status = _STATUS.get(refusal.code, 500)
    return tus.problem(status, "", f"{refusal.code.value}: {refusal}", dialect)


__all__ = ["CHUNK_SIZE", "RequestOwner", "TusEndpoint"]
