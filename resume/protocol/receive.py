"""The server side of one upload, as a state machine. Sans-I/O: no files, no clock, no awaits.

One :class:`Reception` per file id decides everything about that file; the asyncio receiver
(:mod:`resume.transfer.receiver`) only moves bytes and time through it::

    RECEIVING --finish, all held--> VERIFYING --hash matches--> PUBLISHING --renamed--> COMPLETED
        |                               |
        +--cancel / expire--+           +--hash differs--> CANCELLED
                            v
                        CANCELLED

Ownership: at most one connection owns a file. :meth:`Reception.take` gives the new owner a
higher *epoch* and fences every earlier one at once (no await between, so two ``begin``\\ s can
never both own it); a chunk or finish carrying an older epoch is refused. Nothing is written
once verification began: chunks are accepted only while RECEIVING.

Durability: a chunk is *written* (bytes at their offset, not yet synced), then part of a sync
batch, then *held* once the batch is fsynced and recorded. Only held chunks are acked, and only
held chunks are reported to a reconnecting client. A repeated chunk that is already held with
the same checksum is acked again without a write (idempotent).

Appended uploads (tus / HTTP): bytes arrive as one stream from offset 0, in requests of any
length. Whole chunks of the same geometry are ``written`` as above; the stream's end, which may
lie inside a chunk, is ``appended`` and becomes the durable *extent* with the next sync batch.
:attr:`Reception.offset` counts the extent too, so an HTTP response can acknowledge exactly the
bytes that are fsynced and recorded. A length given later (tus ``creation-defer-length``) is
given to ``declare_size`` once known; until then the geometry's size is a placeholder.

Every legal move is a row of :data:`TRANSITIONS`; anything else raises :class:`ReceptionError`
and leaves the machine in a sticky error state, like the client ledger.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from resume.protocol.geometry import Geometry


class ReceptionError(Exception):
    """An impossible event for the state the file is in: a bug, never a peer's fault."""


class Phase(enum.StrEnum):
    """Where one incoming file is in its life."""

    RECEIVING = "receiving"  # chunks arriving
    VERIFYING = "verifying"  # every chunk held; the whole file is being hashed (memory only)
    PUBLISHING = "publishing"  # verified; the intent to rename is recorded, the rename may not be
    COMPLETED = "completed"  # renamed into place and recorded
    CANCELLED = "cancelled"  # cancelled, expired, or failed whole-file verification


class Event(enum.StrEnum):
    """What can happen to one incoming file."""

    TAKE = "take"  # a connection becomes the owner
    CHUNK = "chunk"  # a chunk frame arrived, was checked, written, or synced
    FINISH = "finish"  # the owner says every chunk is sent
    VERIFIED = "verified"  # the whole-file hash is known
    PUBLISHED = "published"  # renamed into place and recorded
    CANCEL = "cancel"  # the client cancelled it, or it expired
    LOSE = "lose"  # the partial data vanished (found at begin or at a restart)
    ABORT = "abort"  # the destination refused the publish (a file appeared there): keep the data


TRANSITIONS: Mapping[tuple[Phase, Event], frozenset[Phase]] = {
    (Phase.RECEIVING, Event.TAKE): frozenset({Phase.RECEIVING}),
    (Phase.RECEIVING, Event.CHUNK): frozenset({Phase.RECEIVING}),
    (Phase.RECEIVING, Event.FINISH): frozenset({Phase.RECEIVING, Phase.VERIFYING}),
    (Phase.RECEIVING, Event.CANCEL): frozenset({Phase.CANCELLED}),
    (Phase.RECEIVING, Event.LOSE): frozenset({Phase.RECEIVING}),
    (Phase.VERIFYING, Event.VERIFIED): frozenset({Phase.PUBLISHING, Phase.CANCELLED}),
    (Phase.VERIFYING, Event.ABORT): frozenset({Phase.RECEIVING}),  # hashing failed (I/O)
    (Phase.PUBLISHING, Event.PUBLISHED): frozenset({Phase.COMPLETED}),
    # After a restart the publish is redone from its record: the partial is hashed again.
    (Phase.PUBLISHING, Event.VERIFIED): frozenset({Phase.PUBLISHING, Phase.CANCELLED}),
    (Phase.PUBLISHING, Event.LOSE): frozenset({Phase.RECEIVING}),
    (Phase.PUBLISHING, Event.ABORT): frozenset({Phase.RECEIVING}),
    (Phase.CANCELLED, Event.CANCEL): frozenset({Phase.CANCELLED}),
}


# -- what the machine tells the caller to do ------------------------------------------------------


class Verdict(enum.Enum):
    """What to do with a chunk frame."""

    WRITE = "write"  # check its checksum, write it at its offset, then call written()
    ACK_AGAIN = "ack_again"  # already held with this checksum: ack it, write nothing
    WAIT = "wait"  # already written with this checksum and about to be synced: nothing to do
    FENCED = "fenced"  # the sender no longer owns the file (taken over, verifying, done)
    VIOLATION = "violation"  # does not fit the file's geometry: a protocol error


@dataclass(frozen=True, slots=True)
class ChunkVerdict:
    """The decision about one chunk frame, with the reason when it is refused."""

    verdict: Verdict
    reason: str = ""


class FinishOutcome(enum.Enum):
    """What ``finish`` leads to."""

    INCOMPLETE = "incomplete"  # chunks are missing: refuse, nothing changes
    SYNC_FIRST = "sync_first"  # written chunks await their sync: make them durable, then ask again
    VERIFY = "verify"  # hash the whole file and call verified()
    FENCED = "fenced"  # the sender no longer owns the file


@dataclass(frozen=True, slots=True)
class FinishVerdict:
    outcome: FinishOutcome
    missing: int = 0


class Recovery(enum.Enum):
    """What a restarted server (or a new ``begin``) must do about a file's record."""

    NOTHING = "nothing"  # record and disk agree
    FORGET_CHUNKS = "forget_chunks"  # the partial is gone: no chunk is held any more
    RECEIVE_AGAIN = "receive_again"  # verified, never renamed: back to receiving, chunks kept;
    # the client's next finish verifies and publishes it
    COMPLETE = "complete"  # the rename happened, the record did not: record it
    COMPLETE_UNLINK = "complete_unlink"  # linked under the final name, the partial name remains
    REMOVE_PARTIAL = "remove_partial"  # finished or cancelled, yet its partial is still there


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """Chunks written since the last sync: make them durable, record them, then ack them."""

    chunks: tuple[tuple[int, str], ...]  # (index, checksum), each index once, in write order
    end: int | None = None  # appended uploads: bytes [0, end) are durable once this batch is

    @property
    def indexes(self) -> list[int]:
        return [index for index, _ in self.chunks]


@dataclass(eq=False)
class Reception:
    """One incoming file on the server."""

    file_id: str
    name: str
    geometry: Geometry
    phase: Phase = Phase.RECEIVING
    held: dict[int, str] = field(default_factory=dict)  # durable: index -> checksum
    epoch: int = 0  # the current owner's epoch; every take() raises it
    owned: bool = False  # whether a connection owns it right now
    checksum: str | None = None  # the whole-file xxh3-128, once the client gave it at finish
    overwrite: bool = False  # the owner may replace an existing file at the destination
    extent: int = 0  # appended uploads: bytes [0, extent) are durable (may end inside a chunk)
    size_known: bool = True  # False while an appended upload's length is deferred
    _written_end: int | None = None  # appended: the stream's end written, not yet in a batch
    _written_end_by: int = 0
    _written: dict[int, str] = field(default_factory=dict)  # written, not yet in a sync batch
    _syncing: dict[int, str] = field(default_factory=dict)  # in the sync batch in progress
    _written_by: dict[int, int] = field(default_factory=dict)  # the epoch that wrote each
    _syncing_by: dict[int, int] = field(default_factory=dict)
    _syncing_end: int | None = None
    _error: ReceptionError | None = None

    # -- queries -----------------------------------------------------------------------------

    @property
    def missing(self) -> int:
        """Chunks not durably held."""
        return self.geometry.count - len(self.held)

    @property
    def offset(self) -> int:
        """Bytes durably held from the start of the file without a hole."""
        return max(self.geometry.contiguous_offset(self.held), self.extent)

    @property
    def unsynced(self) -> bool:
        """Whether written chunks await a sync (or one is in progress)."""
        return bool(self._written or self._syncing or self._written_end is not None)

    def owns(self, epoch: int) -> bool:
        """Whether ``epoch`` is the current owner's."""
        return self.owned and epoch == self.epoch

    # -- ownership ---------------------------------------------------------------------------

    def take(self, *, overwrite: bool = False) -> int:
        """A connection becomes the owner; returns its epoch. Every earlier owner is fenced."""
        self._move(Event.TAKE, Phase.RECEIVING)
        self.epoch += 1
        self.owned = True
        self.overwrite = overwrite
        self._written_end = None  # an earlier owner's unsynced stream end is not vouched for
        return self.epoch

    def release(self, epoch: int) -> bool:
        """The owner with ``epoch`` went away; False if it had been fenced already."""
        if not self.owns(epoch):
            return False
        self.owned = False
        return True

    # -- chunks ------------------------------------------------------------------------------

    def chunk(
        self, epoch: int, index: int, offset: int, length: int, checksum: str
    ) -> ChunkVerdict:
        """Decide about a chunk frame from the owner with ``epoch``."""
        self._check_usable()
        if self.phase is not Phase.RECEIVING or not self.owns(epoch):
            why = "taken over by a newer connection" if self.owns(self.epoch) else self.phase.value
            return ChunkVerdict(Verdict.FENCED, f"file {self.file_id} is {why}")
        problem = self.geometry.problem(index, offset, length)
        if problem:
            return ChunkVerdict(Verdict.VIOLATION, problem)
        if index not in self._written and index not in self._syncing:
            if self.held.get(index) == checksum:
                return ChunkVerdict(Verdict.ACK_AGAIN)
        elif self._written.get(index, self._syncing.get(index)) == checksum:
            return ChunkVerdict(Verdict.WAIT)
        return ChunkVerdict(Verdict.WRITE)

    def written(self, epoch: int, index: int, checksum: str) -> None:
        """Chunk ``index`` with ``checksum`` is at its offset (not yet durable)."""
        self._move(Event.CHUNK, Phase.RECEIVING)
        self.geometry.check_index(index)
        self._written.pop(index, None)
        self._written[index] = checksum  # re-inserted: a rewrite is ordered after older writes
        self._written_by[index] = epoch

    def appended(self, epoch: int, end: int) -> None:
        """Appended uploads: the owner wrote the stream up to ``end`` (not yet durable).

        Every whole chunk before ``end`` must have been ``written`` (or be held) already.
        """
        self._move(Event.CHUNK, Phase.RECEIVING)
        if not self.owns(epoch):
            raise self._fail(f"appended() by epoch {epoch}, which does not own {self.file_id}")
        if not self.offset <= end <= self.geometry.size:
            raise self._fail(f"appended() to {end}, outside {self.offset}..{self.geometry.size}")
        self._written_end = end
        self._written_end_by = epoch

    def declare_size(self, size: int) -> Geometry:
        """Appended uploads: the length, deferred at creation, is now known. Returns the new
        geometry (the store records it); raises :class:`ReceptionError` if it cannot be."""
        self._check_usable()
        if self.size_known:
            raise self._fail(f"the length of {self.file_id} is known already")
        if size < self.offset or size > self.geometry.size:
            raise self._fail(f"length {size} is outside {self.offset}..{self.geometry.size}")
        self.geometry = Geometry(size, self.geometry.chunk_size)
        self.size_known = True
        return self.geometry

    def sync_batch(self) -> SyncBatch | None:
        """Start a sync of everything written so far; None if nothing is."""
        self._check_usable()
        if self._syncing or self._syncing_end is not None:
            raise self._fail("a sync batch is already in progress")
        if not self._written and self._written_end is None:
            return None
        self._syncing, self._written = self._written, {}
        self._syncing_by, self._written_by = self._written_by, {}
        self._syncing_end, self._written_end = self._written_end, None
        return SyncBatch(tuple(self._syncing.items()), self._syncing_end)

    def synced(self, batch: SyncBatch) -> list[tuple[int, str]]:
        """The batch is fsynced and recorded: it is held now. Returns what to ack.

        Only chunks the current owner wrote are acked to it: a chunk a fenced owner wrote just
        before the take-over is held (its bytes are durable and recorded) but acking it to the
        new owner would confirm bytes that client never sent; it learns of them at its next
        reconciliation, or resends them.
        """
        self._check_usable()
        if (tuple(self._syncing.items()), self._syncing_end) != (batch.chunks, batch.end):
            raise self._fail("synced() for a batch that is not the one in progress")
        self.held.update(self._syncing)
        writers, self._syncing, self._syncing_by = self._syncing_by, {}, {}
        if batch.end is not None:
            self.extent = max(self.extent, batch.end)
        self._syncing_end = None
        if not self.owned:
            return []
        return [(i, c) for i, c in batch.chunks if writers.get(i) == self.epoch]

    def sync_failed(self, batch: SyncBatch) -> None:
        """The batch could not be made durable: none of it is held; the client sends it again."""
        self._check_usable()
        if (tuple(self._syncing.items()), self._syncing_end) != (batch.chunks, batch.end):
            raise self._fail("sync_failed() for a batch that is not the one in progress")
        for index, _ in batch.chunks:
            self.held.pop(index, None)  # its bytes on disk may be half-rewritten now
        self._syncing, self._syncing_by, self._syncing_end = {}, {}, None
        if batch.end is not None:  # the stream past the last held chunk is not vouched for
            self.extent = min(self.extent, self.geometry.contiguous_offset(self.held))

    # -- finishing ---------------------------------------------------------------------------

    def finish(self, epoch: int, checksum: str | None) -> FinishVerdict:
        """The owner says the file is complete and hashes to ``checksum`` (None: the client
        names no whole-file checksum, as a tus client; whatever the file hashes to is kept)."""
        self._check_usable()
        if self.phase is not Phase.RECEIVING or not self.owns(epoch):
            return FinishVerdict(FinishOutcome.FENCED)
        if self.unsynced:
            return FinishVerdict(FinishOutcome.SYNC_FIRST)
        if self.missing or not self.size_known:
            return FinishVerdict(FinishOutcome.INCOMPLETE, self.missing)
        self._move(Event.FINISH, Phase.VERIFYING)
        self.checksum = checksum
        return FinishVerdict(FinishOutcome.VERIFY)

    def verified(self, actual: str) -> bool:
        """The whole file hashes to ``actual``; True if that is what the client said.

        True moves to PUBLISHING (record the intent, then rename); False cancels the file.
        """
        if self.checksum is None and self.phase is Phase.VERIFYING:
            self.checksum = actual  # nothing was claimed: the file is what was appended
        if actual == self.checksum:
            self._move(Event.VERIFIED, Phase.PUBLISHING)
            return True
        self._move(Event.VERIFIED, Phase.CANCELLED)
        self.held.clear()
        return False

    def published(self) -> None:
        """The file is under its final name and recorded."""
        self._move(Event.PUBLISHED, Phase.COMPLETED)
        self.owned = False

    def cancel(self) -> None:
        """The client cancelled it or it expired; every owner is fenced."""
        self._move(Event.CANCEL, Phase.CANCELLED)
        self.epoch += 1
        self.owned = False
        self.held.clear()
        self.extent = 0
        self._written.clear()
        self._written_by.clear()
        self._written_end = None

    def abort_publish(self) -> None:
        """Verifying or publishing failed (the destination refused, an I/O error): back to
        receiving, every chunk still held."""
        self._move(Event.ABORT, Phase.RECEIVING)

    def lose(self) -> None:
        """The partial data is gone: nothing is held any more; the client sends it all again."""
        self._move(Event.LOSE, Phase.RECEIVING)
        self.held.clear()
        self.extent = 0
        self._written.clear()
        self._written_by.clear()
        self._written_end = None
        self.checksum = None

    # -- internals ---------------------------------------------------------------------------

    def _move(self, event: Event, target: Phase) -> None:
        self._check_usable()
        allowed = TRANSITIONS.get((self.phase, event), frozenset())
        if target not in allowed:
            raise self._fail(f"cannot {event} a {self.phase} file ({self.file_id})")
        self.phase = target

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ReceptionError(f"file {self.file_id} is unusable after: {self._error}")

    def _fail(self, message: str) -> ReceptionError:
        self._error = ReceptionError(message)
        return self._error


def recovery(
    phase: Phase, *, partial_exists: bool, final_is_partial: bool, final_matches: bool
) -> Recovery:
    """What to do about a recorded file after a crash, from what is on disk.

    ``final_is_partial``: the final name and the partial are one file (a crash between the
    no-replace link and the partial's unlink). ``final_matches``: the file under the final name
    hashes to the recorded checksum (only needed when the partial is gone).
    """
    if phase is Phase.RECEIVING:
        return Recovery.NOTHING if partial_exists else Recovery.FORGET_CHUNKS
    if phase is Phase.PUBLISHING:
        if partial_exists:
            return Recovery.COMPLETE_UNLINK if final_is_partial else Recovery.RECEIVE_AGAIN
        return Recovery.COMPLETE if final_matches else Recovery.FORGET_CHUNKS
    if partial_exists and not final_is_partial:
        return Recovery.REMOVE_PARTIAL
    return Recovery.NOTHING


# -- the destination -----------------------------------------------------------------------------


class Occupant(enum.Enum):
    """What is at a destination path right now."""

    NOTHING = "nothing"
    FILE = "file"  # a regular file
    DIRECTORY = "directory"
    OTHER = "other"  # a symlink, a device, a socket...


@dataclass(frozen=True, slots=True)
class Destination:
    """What walking the root to a name found, without following any symlink."""

    occupant: Occupant
    problem: str | None = None  # a parent that is a file or a symlink, a path too long
    ours: bool = False  # the occupant is this very upload's earlier publish


def destination_problem(destination: Destination, *, overwrite: bool) -> tuple[str, str] | None:
    """``(error code, reason)`` when an upload may not be published there; None if it may."""
    if destination.problem:
        return ("bad_name", destination.problem)
    if destination.occupant is Occupant.DIRECTORY:
        return ("bad_name", "an existing directory has that name")
    if destination.occupant is Occupant.OTHER:
        return ("bad_name", "a symlink or special file has that name")
    if destination.occupant is Occupant.FILE and not overwrite and not destination.ours:
        return ("exists", "a file with that name exists; pass --overwrite to replace it")
    return None
