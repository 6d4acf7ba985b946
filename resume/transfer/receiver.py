"""The server side of uploads: the ``/upload`` endpoint of `resume serve`.

Each connection may carry several files, one after another. For every file the decisions are
made by the pure machine (:mod:`resume.protocol.receive`); :class:`resume.transfer.incoming.Upload`
does the file I/O; this module reads frames, enforces the per-connection limits and answers.

- ``begin``: the name is checked against the disk before any byte is sent (symlinks are not
  followed; an existing file is refused unless the client asked to overwrite it; a name that
  another unfinished upload owns is refused). Ownership is taken before any await; a second
  connection beginning the same file takes it over and the first is fenced and closed (1008).
- chunks: checked, written, and acked after a group fsync + store commit.
- ``finish``: wait until durable, verify the whole-file xxh3-128, record the intent, then
  publish atomically (a no-replace link, or a rename over the old file with ``overwrite``) and
  record it; a crash at any step is finished by the next ``begin`` or by a restart.

Limits, each a `resume serve` option: idle time per connection, text frame size, unfinished
files and reserved bytes per connection, bytes queued per connection, free disk space.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any

import xxhash
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from resume.auth import principal_of
from resume.crashpoints import crash_point
from resume.errors import Fenced, ProtocolError, StoreError
from resume.housekeeping import Housekeeping
from resume.logs import peer
from resume.metrics import ServerMetrics
from resume.protocol import frames
from resume.protocol.frames import CloseCode
from resume.protocol.receive import (
    FinishOutcome,
    Phase,
    Verdict,
    destination_problem,
)
from resume.protocol.upload import (
    HEADER_SIZE,
    Begin,
    ErrorCode,
    check_file_id,
    held_to_json,
    parse_chunk,
    remote_name_problem,
)
from resume.store import Store
from resume.store.jobs import RoundGate
from resume.store.models import ReceiveState, utcnow
from resume.store.received import LeaseHeld, NameTaken, ReceivedRecord
from resume.transfer.incoming import Refused, Upload, storage_refusal
from resume.transfer.leases import LeaseBusy, LeaseKeeper, node_name
from resume.transfer.root import ServerRoot

log = logging.getLogger("resume.receiver")

__all__ = ["Refused", "UploadEndpoint", "UploadLimits"]


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What one peer may make the server hold. ``None`` means no limit."""

    idle_timeout: float | None = 60.0  # close a connection that sends nothing this long
    max_text_frame: int = 64 * 1024  # control messages are small; chunks travel as binary
    max_files_per_connection: int = 16  # unfinished files begun on one connection
    max_http_uploads: int = 10_000  # unfinished uploads over HTTP, all clients together
    max_reserved_per_connection: int | None = None  # bytes still to come of those files
    max_queue_bytes: int = 32 * 2**20  # frames read ahead of the handler, in bytes (about)
    min_free_bytes: int = 2**20  # a begin that would leave less free space is disk_full


class UploadEndpoint:
    """Receives uploads into ``root``; mount it at ``/upload``."""

    def __init__(
        self,
        store: Store,
        root: os.PathLike[str] | str,
        *,
        max_file_size: int | None = None,
        max_chunk_size: int = 64 * 2**20,
        expire: float | None = 7 * 86400,
        limits: UploadLimits | None = None,
        lease: float | None = None,
        gate: RoundGate | None = None,
    ) -> None:
        """``lease``: with several nodes on one store, seconds an owner's lease lasts unless
        renewed (:mod:`resume.transfer.leases`); None for one node. ``gate`` runs each
        housekeeping round once across the nodes."""
        self.repo = store.received
        self.root = ServerRoot(root)  # type: ignore[arg-type]
        self.root.prepare()
        self.max_file_size = max_file_size
        self.max_chunk_size = max_chunk_size
        self.max_message_size = max_chunk_size + HEADER_SIZE
        self.expire = expire
        self.limits = limits or UploadLimits()
        self.node_id = node_name()
        self.lease = lease
        self.leases = LeaseKeeper(self, lease) if lease is not None else None
        self.uploads: dict[str, Upload] = {}  # file id -> the one live object for it
        self.names: dict[str, str] = {}  # name -> file id, for files not yet recorded
        self.connections: set[Connection] = set()
        self.reserved = 0  # bytes still to come of every file owned right now
        self.metrics = ServerMetrics()  # build_app puts the app's own here
        self._expiry = Housekeeping(
            self.housekeeping,
            age=expire,
            what="expiring idle partial uploads",
            errors=(OSError, StoreError),
            gate=gate,
        )

    def start_housekeeping(self) -> None:
        """Start expiring idle partial uploads, and renewing leases with several nodes
        (idempotent; needs a running loop)."""
        self._expiry.ensure_started()
        if self.leases is not None:
            self.leases.ensure_started()

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one client connection until it ends."""
        self.start_housekeeping()
        handler = Connection(self, connection)
        self.connections.add(handler)
        try:
            await handler.run()
        finally:
            self.connections.discard(handler)

    async def close(self) -> None:
        """Stop the expiry task and every file's background work."""
        await self._expiry.stop()
        if self.leases is not None:
            await self.leases.stop()
        for upload in list(self.uploads.values()):
            await upload.stop()
        self.uploads.clear()

    def partial_path(self, file_id: str) -> os.PathLike[str]:
        return self.root.partial_path(file_id)

    # -- the live objects --------------------------------------------------------------------

    async def acquire(self, file_id: str, wire_id: str | None = None) -> Upload:
        """The one :class:`Upload` for ``file_id``, loaded (and recovered); release it after."""
        upload = self.uploads.get(file_id)
        if upload is None:
            upload = self.uploads[file_id] = Upload(self, file_id, wire_id=wire_id)
        upload.users += 1
        try:
            await asyncio.shield(upload.ready)
        except BaseException:
            await self.release(upload)
            raise
        return upload

    async def release(self, upload: Upload) -> None:
        """One user is done with ``upload``; forget it when nobody uses or owns it."""
        upload.users -= 1
        await self.forget_if_unused(upload)

    async def forget_if_unused(self, upload: Upload) -> None:
        """Forget ``upload`` (and its name) when no handler uses it and nobody owns it."""
        if (
            upload.users == 0
            and upload.owner is None
            and self.uploads.get(upload.file_id) is upload
        ):
            del self.uploads[upload.file_id]
            reception = upload.reception
            if reception is not None and self.names.get(reception.name) == upload.file_id:
                del self.names[reception.name]
            await upload.stop()

    def free_bytes(self) -> int:
        """Free space for new data under the root, minus what owned uploads still expect."""
        st = os.statvfs(self.root.path)
        return st.f_bavail * st.f_frsize - self.reserved

    # -- expiry ------------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """One round: expire idle partials, remove partials no unfinished upload owns."""
        await self.expire_idle()
        await self.sweep_partials()

    async def sweep_partials(self) -> int:
        """Delete partial files left without an unfinished record (a crash mid-cancel, a
        record deleted by hand); returns how many went."""
        names = await asyncio.to_thread(os.listdir, self.root.partial_dir)
        removed = 0
        for name in names:
            file_id, dot, suffix = name.partition(".")
            if suffix != "part" or not dot or file_id in self.uploads:
                continue
            record = await asyncio.to_thread(self.repo.get, file_id)
            if record is not None and record.state.value in ("receiving", "publishing"):
                continue
            if file_id in self.uploads:  # begun while we looked it up
                continue
            await asyncio.to_thread(self.root.partial_path(file_id).unlink, missing_ok=True)
            log.info("removed orphaned partial %s", name)
            removed += 1
        return removed

    async def expire_idle(self) -> int:
        """Remove partial uploads idle longer than ``expire``; returns how many went."""
        if not self.expire:
            return 0
        before = utcnow() - dt.timedelta(seconds=self.expire)
        stale = await asyncio.to_thread(self.repo.idle_since, before)
        removed = 0
        for record in stale:
            if record.file_id in self.uploads:
                continue  # in use right now: not idle

            async def drop(file_id: str = record.file_id) -> None:
                # Only if still idle: a node may have claimed it since (several nodes).
                if await asyncio.to_thread(self.repo.delete_if_idle, file_id, before):
                    await asyncio.to_thread(self.root.partial_path(file_id).unlink, missing_ok=True)

            # Registered before the first await: a begin for this file waits for the drop.
            upload = self.uploads[record.file_id] = Upload(self, record.file_id, prelude=drop)
            upload.users += 1
            try:
                await asyncio.shield(upload.ready)
            finally:
                await self.release(upload)
            log.info("expired partial upload %s (%s)", record.file_id, record.name)
            removed += 1
        return removed


class Connection:
    """One client connection to ``/upload``: any number of files, one after another."""

    def __init__(self, endpoint: UploadEndpoint, websocket: ServerConnection) -> None:
        self.endpoint = endpoint
        self.ws = websocket
        self.files: dict[str, Upload] = {}  # files this connection owns
        self.epochs: dict[str, int] = {}  # its epoch of each
        self.reserved: dict[str, int] = {}  # bytes still to come of each
        self.taken_over: dict[str, str] = {}  # files taken from it: why
        self.peer = peer(websocket)
        self.principal = principal_of(websocket)

    def key(self, wire_id: str) -> str:
        """The server's id of the file this client calls ``wire_id``: namespaced by who it is,
        so one principal can never reach, collide with or take over another's upload."""
        if self.principal.sub is None:
            return wire_id
        return xxhash.xxh3_128_hexdigest(self.principal.namespaced(wire_id).encode())

    async def run(self) -> None:
        limits = self.endpoint.limits
        self.set_frame_limits()
        try:
            while True:
                try:
                    async with asyncio.timeout(limits.idle_timeout):
                        message = await self.ws.recv()
                except TimeoutError:
                    log.info("closing idle upload connection from %s", self.peer)
                    await self.ws.close(CloseCode.NORMAL, "idle timeout")
                    break
                try:
                    if isinstance(message, str):
                        if len(message) > limits.max_text_frame:
                            raise ProtocolError(
                                f"control message of {len(message)} characters is over the "
                                f"limit of {limits.max_text_frame}",
                                close_code=CloseCode.MESSAGE_TOO_BIG,
                            )
                        await self.on_control(frames.decode(message))
                    else:
                        await self.on_chunk(message)
                except Fenced as exc:
                    raise ProtocolError(str(exc), close_code=CloseCode.POLICY_VIOLATION) from exc
                except (OSError, StoreError) as exc:
                    # The store or the disk failed: say so plainly (never SQL or a path), and
                    # end this connection; the client retries or stops on disk_full.
                    log.error("storage failure serving %s: %s", self.peer, exc)
                    refusal = storage_refusal(exc, "this upload")
                    await self.refuse(refusal)
                    await self.close_after(refusal)
                    break
                except Refused as refusal:
                    await self.refuse(refusal, getattr(refusal, "file_id", None))
                    if refusal.fatal_to_connection:
                        await self.close_after(refusal)
                        break
        except ProtocolError as exc:
            self.endpoint.metrics.upload_failed("protocol")
            log.warning("closing %s: %s", self.peer, exc, extra={"peer": self.peer})
            await self.ws.close(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])
        except ConnectionClosed:
            pass
        finally:
            for file_id in list(self.files):
                await self.let_go(file_id)

    async def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frames.encode(message))

    async def refuse(self, refusal: Refused, file_id: str | None = None) -> None:
        message: dict[str, Any] = {
            "type": "error",
            "code": refusal.code.value,
            "message": str(refusal),
        }
        if file_id:
            message["file_id"] = file_id
        self.endpoint.metrics.upload_failed(refusal.code.value)
        log.info(
            "upload refused for %s: %s",
            self.peer,
            refusal,
            extra={"peer": self.peer, "file_id": file_id, "code": refusal.code.value},
        )
        await self.send(message)

    async def close_after(self, refusal: Refused) -> None:
        """Close after a refusal that ends the connection; a storage failure says "later"."""
        code = (
            CloseCode.INTERNAL_ERROR
            if refusal.code in (ErrorCode.STORAGE,)
            else CloseCode.POLICY_VIOLATION
            if refusal.code is ErrorCode.MISMATCH
            else CloseCode.NORMAL
        )
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, refusal.code.value)

    def set_frame_limits(self) -> None:
        """Frames only as large as this connection's files need; a queue bounded in bytes."""
        limits = self.endpoint.limits
        largest = max(
            (u.require().geometry.chunk_size + HEADER_SIZE for u in self.files.values()),
            default=0,
        )
        size = max(limits.max_text_frame, min(largest, self.endpoint.max_message_size))
        self.ws.protocol.max_message_size = size
        queue = getattr(self.ws, "recv_messages", None)
        if queue is not None:
            queue.high = max(0, limits.max_queue_bytes // size - 1)
            queue.low = queue.high // 4

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

    def check_begin(self, begin: Begin) -> None:
        """What can be refused from the message alone."""
        endpoint = self.endpoint
        problem = remote_name_problem(begin.name)
        if problem:
            raise _refused(ErrorCode.BAD_NAME, f"refused name {begin.name!r}: {problem}", begin)
        if endpoint.max_file_size is not None and begin.size > endpoint.max_file_size:
            raise _refused(
                ErrorCode.TOO_LARGE,
                f"{begin.name}: {begin.size} bytes is over the server's limit of "
                f"{endpoint.max_file_size}",
                begin,
            )
        if begin.chunk_size > endpoint.max_chunk_size:
            raise _refused(
                ErrorCode.TOO_LARGE,
                f"chunk size {begin.chunk_size} is over the server's limit of "
                f"{endpoint.max_chunk_size}",
                begin,
            )
        limit = endpoint.limits.max_files_per_connection
        if begin.file_id not in self.files and len(self.files) >= limit:
            raise _refused(
                ErrorCode.LIMIT,
                f"{begin.name}: this connection already has {limit} unfinished files",
                begin,
            )

    async def on_begin(self, begin: Begin) -> None:
        self.check_begin(begin)
        if not self.principal.may_upload(begin.name):
            raise _refused(
                ErrorCode.FORBIDDEN,
                f"{begin.name}: your token does not allow uploads under this name",
                begin,
            )
        upload = await self.endpoint.acquire(self.key(begin.file_id), begin.file_id)
        try:
            await self._begin(upload, begin)
        finally:
            await self.endpoint.release(upload)

    async def _begin(self, upload: Upload, begin: Begin) -> None:
        endpoint = self.endpoint
        while not upload.settled.is_set():  # another connection is publishing it right now
            await upload.settled.wait()
        reception = upload.reception
        if reception is not None:
            if (reception.name, reception.geometry.size, reception.geometry.chunk_size) != (
                begin.name,
                begin.size,
                begin.chunk_size,
            ):
                raise _refused(
                    ErrorCode.MISMATCH,
                    f"file {begin.file_id} was begun as {reception.name!r} "
                    f"({reception.geometry.size} bytes, chunks of "
                    f"{reception.geometry.chunk_size}), not as {begin.name!r}",
                    begin,
                )
            if reception.phase is not Phase.RECEIVING:
                await self.answer_finished(upload, begin)
                return
        destination = await asyncio.to_thread(endpoint.root.inspect, begin.name)
        problem = destination_problem(destination, overwrite=begin.overwrite)
        if problem:
            code, reason = problem
            raise _refused(ErrorCode(code), f"{begin.name}: {reason}", begin)
        if reception is None:
            holder = endpoint.names.get(begin.name)
            if holder is not None and holder != upload.file_id:
                raise _name_in_use(begin, holder)
        remaining = begin.size - (reception.geometry.bytes_in(reception.held) if reception else 0)
        self.check_space(begin, remaining)
        # -- from here to the claim: no await. The file is ours; any earlier owner is fenced.
        if reception is None:
            upload.create(begin)
            endpoint.names[begin.name] = upload.file_id
        previous = upload.owner
        epoch = upload.require().take(overwrite=begin.overwrite)
        upload.owner = self
        if previous is not None and previous is not self:
            previous.lose(upload, "taken over by a newer connection")
        self.own(upload, epoch, remaining)
        claimed = await upload.claim(self, begin)
        if isinstance(claimed, LeaseHeld) or (
            isinstance(claimed, ReceivedRecord) and claimed.state is not ReceiveState.RECEIVING
        ):  # another node took or finished it since we loaded it: start over (several nodes)
            raise LeaseBusy(
                f"file {begin.file_id} changed hands between server nodes; try again",
                close_code=CloseCode.TRY_AGAIN_LATER,
            )
        if isinstance(claimed, NameTaken):
            self.disown(begin.file_id)
            upload.owner = None
            upload.reception = None
            endpoint.names.pop(begin.name, None)
            raise _name_in_use(begin, claimed.holder)
        if upload.owner is not self:
            return  # taken over while we waited for the store; our connection is closing
        crash_point("begin.claimed")
        try:
            async with upload.io:
                created = await asyncio.to_thread(upload.partial.create)
            if created and upload.require().held:  # the store listed chunks of a vanished file
                await asyncio.to_thread(endpoint.repo.forget_chunks, begin.file_id)
                upload.require().lose()
        except OSError as exc:
            raise _with_file(storage_refusal(exc, begin.name), begin.file_id) from exc
        crash_point("begin.partial_created")
        upload.start_flusher()
        await upload.drain()  # what an earlier owner wrote is durable: report it as held
        if upload.owner is not self:
            return
        log.info(
            "upload begin %s (%s, %d bytes, %d chunks held) from %s",
            begin.name,
            begin.file_id,
            begin.size,
            len(upload.require().held),
            self.peer,
            extra={"peer": self.peer, "file_id": begin.file_id},
        )
        await self.send(
            {
                "type": "state",
                "file_id": begin.file_id,
                "state": Phase.RECEIVING.value,
                "held": held_to_json(upload.require().held),
            }
        )

    def check_space(self, begin: Begin, remaining: int) -> None:
        limits = self.endpoint.limits
        mine = sum(v for k, v in self.reserved.items() if k != begin.file_id)
        cap = limits.max_reserved_per_connection
        if cap is not None and mine + remaining > cap:
            raise _refused(
                ErrorCode.LIMIT,
                f"{begin.name}: this connection's unfinished files would need "
                f"{mine + remaining} bytes, over the limit of {cap}",
                begin,
            )
        already = self.reserved.get(begin.file_id, 0)
        if self.endpoint.free_bytes() + already - remaining < limits.min_free_bytes:
            raise _refused(ErrorCode.DISK_FULL, f"server has no space left for {begin.name}", begin)

    async def answer_finished(self, upload: Upload, begin: Begin) -> None:
        """``begin`` of a file that is completed or cancelled: say so (checking completed)."""
        reception = upload.require()
        state = reception.phase.value
        verified = False
        if reception.phase is Phase.COMPLETED:
            record = upload.record
            assert record is not None
            root = self.endpoint.root
            identity = await asyncio.to_thread(root.identity, reception.name)
            same = identity is not None and identity.size == record.size
            if same and record.published_inode:
                same = (identity.inode, identity.mtime_ns) == (  # type: ignore[union-attr]
                    record.published_inode,
                    record.published_mtime_ns,
                )
            if same and begin.verify:
                same = await asyncio.to_thread(root.checksum, reception.name) == record.checksum
                verified = same
            if not same:
                state = "missing"
        message: dict[str, Any] = {
            "type": "state",
            "file_id": begin.file_id,
            "state": state,
            "held": [],
        }
        if state == Phase.COMPLETED.value:
            message["verified"] = verified
        await self.send(message)

    async def on_finish(self, file_id: str, checksum: str) -> None:
        upload = self.files.get(file_id)
        if upload is None:
            if file_id in self.taken_over:
                raise ProtocolError(
                    f"file {file_id}: {self.taken_over[file_id]}",
                    close_code=CloseCode.POLICY_VIOLATION,
                )
            raise _with_file(
                Refused(ErrorCode.UNKNOWN_FILE, f"finish for {file_id}, which is not begun here"),
                file_id,
            )
        reception = upload.require()
        epoch = self.epochs[file_id]
        name = reception.name
        try:
            await self._finish(upload, file_id, epoch, checksum)
        except Refused:
            if reception.phase is Phase.CANCELLED:  # failed verification: it is gone
                await self.endpoint.forget_if_unused(upload)
            raise
        self.disown(file_id)
        upload.owner = None
        await self.endpoint.forget_if_unused(upload)  # done: its object and name claim go
        self.endpoint.metrics.uploads_completed.inc()
        log.info(
            "upload finished %s (%d bytes) from %s",
            name,
            reception.geometry.size,
            self.peer,
            extra={"peer": self.peer, "file_id": file_id},
        )
        await self.send({"type": "done", "file_id": file_id, "name": name})

    async def _finish(self, upload: Upload, file_id: str, epoch: int, checksum: str) -> None:
        """Make every chunk durable, then verify and publish (holds ``upload.io``)."""
        reception = upload.require()
        name = reception.name
        async with upload.io:
            try:
                verdict = await upload.finish(epoch, checksum)
            except Refused as refusal:
                raise _with_file(refusal, file_id) from None
            if verdict.outcome is FinishOutcome.FENCED:
                raise ProtocolError(
                    f"file {file_id} is no longer yours to finish",
                    close_code=CloseCode.POLICY_VIOLATION,
                )
            if verdict.outcome is FinishOutcome.INCOMPLETE:
                raise _with_file(
                    Refused(ErrorCode.INCOMPLETE, f"{name}: {verdict.missing} chunks missing"),
                    file_id,
                )
            upload.settled.clear()
            try:
                await self.publish(upload, epoch, checksum)
            except Refused:
                if reception.phase is Phase.CANCELLED:  # failed verification: it is gone
                    self.disown(file_id)
                    upload.owner = None
                raise
            finally:
                upload.settled.set()

    async def publish(self, upload: Upload, epoch: int, checksum: str) -> None:
        """Verify, record the intent, rename into place, record it. Holds ``upload.io``."""
        try:
            await upload.publish()
        except Refused as refusal:
            raise _with_file(refusal, upload.wire_id) from None
        except Fenced:
            raise ProtocolError(
                f"file {upload.wire_id} was taken over", close_code=CloseCode.POLICY_VIOLATION
            ) from None

    async def on_cancel(self, file_id: str) -> None:
        endpoint = self.endpoint
        upload = await endpoint.acquire(self.key(file_id), file_id)
        try:
            while not upload.settled.is_set():
                await upload.settled.wait()
            reception = upload.reception
            if reception is not None and reception.phase is Phase.RECEIVING:
                if await upload.cancel(by=self):
                    self.disown(file_id)
                log.info("cancelled %s (%s) for %s", reception.name, file_id, self.peer)
        finally:
            await endpoint.release(upload)
        await self.send({"type": "cancelled", "file_id": file_id})

    # -- chunks ----------------------------------------------------------------------------------

    async def on_chunk(self, frame: bytes) -> None:
        header, payload = parse_chunk(frame)
        file_id = header.file_id
        upload = self.files.get(file_id)
        if upload is None:
            why = self.taken_over.get(file_id)
            if why is not None:
                raise ProtocolError(f"file {file_id}: {why}", close_code=CloseCode.POLICY_VIOLATION)
            raise ProtocolError(
                f"chunk for file {file_id}, which is not begun on this connection",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        if upload.failure is not None:
            raise _with_file(upload.failure, file_id)
        reception, epoch = upload.require(), self.epochs[file_id]
        verdict = reception.chunk(epoch, header.index, header.offset, len(payload), header.checksum)
        if verdict.verdict is Verdict.VIOLATION:
            raise ProtocolError(verdict.reason, close_code=CloseCode.PROTOCOL_ERROR)
        if verdict.verdict is Verdict.FENCED:
            raise ProtocolError(verdict.reason, close_code=CloseCode.POLICY_VIOLATION)
        if verdict.verdict is Verdict.ACK_AGAIN:
            await self.send(
                {"type": "ack", "file_id": file_id, "chunks": [[header.index, header.checksum]]}
            )
            return
        if verdict.verdict is Verdict.WAIT:
            return
        async with upload.io:
            if not reception.owns(epoch) or reception.phase is not Phase.RECEIVING:
                raise ProtocolError(
                    f"file {file_id} was taken over by a newer connection",
                    close_code=CloseCode.POLICY_VIOLATION,
                )
            try:
                stored = await asyncio.to_thread(
                    upload.store_chunk, header.index, header.offset, header.checksum, payload
                )
            except OSError as exc:
                raise _with_file(storage_refusal(exc, reception.name), file_id) from exc
            if stored:
                reception.written(epoch, header.index, header.checksum)
                upload.kick()
                self.endpoint.metrics.bytes_received.inc(len(payload))
        if not stored:
            log.warning("chunk %d of %s failed its checksum", header.index, file_id)
            await self.send(
                {
                    "type": "nack",
                    "file_id": file_id,
                    "index": header.index,
                    "reason": "checksum mismatch",
                }
            )

    # -- ownership -------------------------------------------------------------------------------

    def own(self, upload: Upload, epoch: int, remaining: int) -> None:
        file_id = upload.wire_id
        self.files[file_id] = upload
        self.epochs[file_id] = epoch
        self.taken_over.pop(file_id, None)
        self.endpoint.reserved += remaining - self.reserved.get(file_id, 0)
        self.reserved[file_id] = remaining
        self.set_frame_limits()

    def disown(self, file_id: str) -> Upload | None:
        upload = self.files.pop(file_id, None)
        self.epochs.pop(file_id, None)
        self.endpoint.reserved -= self.reserved.pop(file_id, 0)
        self.set_frame_limits()
        return upload

    def lose(self, upload: Upload, why: str) -> None:
        """Another connection took ``upload`` (or it was cancelled): we are fenced."""
        file_id = next((k for k, v in self.files.items() if v is upload), upload.wire_id)
        self.disown(file_id)
        self.taken_over[file_id] = why
        log.info("upload %s %s (was %s)", file_id, why, self.peer)
        asyncio.get_running_loop().create_task(self._close_fenced(why))

    async def _close_fenced(self, why: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(CloseCode.POLICY_VIOLATION, f"file {why}"[:120])

    async def let_go(self, file_id: str) -> None:
        """This connection ends: make what it wrote durable and release the file."""
        epoch = self.epochs.get(file_id, -1)
        upload = self.disown(file_id)
        if upload is None:
            return
        if upload.owner is self and upload.reception is not None:
            upload.reception.release(epoch)
            upload.owner = None
        upload.users += 1
        try:
            async with upload.io:
                with contextlib.suppress(Refused):
                    await upload.drain()
                if upload.owner is None:
                    upload.partial.close()
            await upload.release_lease()
        finally:
            await self.endpoint.release(upload)


def _with_file(refusal: Refused, file_id: str) -> Refused:
    refusal.file_id = file_id  # type: ignore[attr-defined]
    return refusal


def _refused(code: ErrorCode, message: str, begin: Begin) -> Refused:
    return _with_file(Refused(code, message), begin.file_id)


def _name_in_use(begin: Begin, holder: str) -> Refused:
    return _refused(
        ErrorCode.NAME_IN_USE,
        f"{begin.name} is being uploaded by another transfer ({holder[:8]}); it is refused "
        "until that one finishes, is cancelled or expires",
        begin,
    )
