"""The chunk ledger: which chunks of a file the peer durably holds. Sans-I/O.

Every chunk moves through a two-phase commit::

    PENDING --prepare--> PREPARED --commit--> COMMITTED
       ^                    |
       +-------lose---------+

- ``prepare`` is recorded durably *before* the chunk's bytes leave this machine.
- ``commit`` is recorded only after the peer acknowledged that the chunk is durable, and only
  when the checksum it acknowledged is the one we prepared.
- ``lose`` sends a prepared chunk back to pending: the connection dropped before the ack, or
  reconciliation found the peer does not hold it.

Every legal move is one row of :data:`TRANSITIONS`; anything else raises :class:`LedgerError`
and leaves the ledger in a sticky error state, like h11's state machine: a ledger that has seen
an impossible event cannot be trusted to decide what to send.

The ledger does no I/O: the caller persists what it returns (see ``resume/store``) and feeds
it events. ``Ledger.restore`` rebuilds it from persisted rows after a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from resume.errors import LedgerError
from resume.protocol.geometry import ChunkSpec, Geometry, GeometryError


class ChunkState(enum.StrEnum):
    """Two-phase commit marker of one chunk."""

    PENDING = "PENDING"
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"


class ChunkEvent(enum.StrEnum):
    """What can happen to a chunk."""

    PREPARE = "prepare"
    COMMIT = "commit"
    LOSE = "lose"


TRANSITIONS: Mapping[tuple[ChunkState, ChunkEvent], ChunkState] = {
    (ChunkState.PENDING, ChunkEvent.PREPARE): ChunkState.PREPARED,
    (ChunkState.PREPARED, ChunkEvent.COMMIT): ChunkState.COMMITTED,
    (ChunkState.PREPARED, ChunkEvent.LOSE): ChunkState.PENDING,
    # A repeated ack (after a reconnect the peer may confirm a chunk twice) changes nothing.
    (ChunkState.COMMITTED, ChunkEvent.COMMIT): ChunkState.COMMITTED,
}


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One non-pending chunk as persisted: enough to rebuild the ledger after a crash."""

    index: int
    state: ChunkState
    checksum: str


@dataclass(slots=True)
class Reconciliation:
    """What comparing our ledger with the peer's list of held chunks found."""

    committed: list[int] = field(default_factory=list)  # prepared here, held there: now committed
    lost: list[int] = field(default_factory=list)  # prepared here, not held there: back to pending
    unknown: list[int] = field(default_factory=list)  # pending here, held there: verify locally
    missing: list[int] = field(default_factory=list)  # committed here, no longer held there
    changes: list[ChunkRecord] = field(default_factory=list)  # transitions made, to persist


class Ledger:
    """The state of every chunk of one file, with the committed offset derived from it."""

    def __init__(self, size: int, chunk_size: int) -> None:
        try:
            self.geometry = Geometry(size, chunk_size)
        except GeometryError as exc:
            raise LedgerError(str(exc)) from exc
        self.size = size
        self.chunk_size = chunk_size
        self.chunk_count = self.geometry.count
        self._states: dict[int, ChunkState] = {}  # absent means PENDING
        self._checksums: dict[int, str] = {}
        self._contiguous = 0  # number of leading committed chunks
        self._error: LedgerError | None = None

    @classmethod
    def restore(cls, size: int, chunk_size: int, records: Iterable[ChunkRecord]) -> Ledger:
        """Rebuild a ledger from persisted rows (pending chunks have no row)."""
        ledger = cls(size, chunk_size)
        for record in records:
            ledger._check_index(record.index)
            if record.state is ChunkState.PENDING:
                continue
            ledger._states[record.index] = ChunkState(record.state)
            ledger._checksums[record.index] = record.checksum
        ledger._advance()
        return ledger

    # -- queries -------------------------------------------------------------------------------

    def spec(self, index: int) -> ChunkSpec:
        """Offset and length of chunk ``index``."""
        self._check_index(index)
        return self.geometry.spec(index)

    def state(self, index: int) -> ChunkState:
        """The current state of chunk ``index``."""
        self._check_index(index)
        return self._states.get(index, ChunkState.PENDING)

    def checksum(self, index: int) -> str | None:
        """The checksum recorded when chunk ``index`` was prepared, if it was."""
        return self._checksums.get(index)

    def indexes(self, state: ChunkState) -> Iterator[int]:
        """Indexes of the chunks in ``state``, in file order."""
        if state is ChunkState.PENDING:
            return (i for i in range(self.chunk_count) if i not in self._states)
        return iter(sorted(i for i, s in self._states.items() if s is state))

    def count(self, state: ChunkState) -> int:
        """How many chunks are in ``state``."""
        if state is ChunkState.PENDING:
            return self.chunk_count - len(self._states)
        return sum(1 for s in self._states.values() if s is state)

    @property
    def committed_offset(self) -> int:
        """Bytes from the start of the file that are committed without a hole."""
        return min(self._contiguous * self.chunk_size, self.size)

    @property
    def committed_bytes(self) -> int:
        """Bytes committed in all, holes or not."""
        return self.geometry.bytes_in(
            i for i, s in self._states.items() if s is ChunkState.COMMITTED
        )

    @property
    def complete(self) -> bool:
        """True when every chunk is committed."""
        return self._contiguous == self.chunk_count

    # -- events --------------------------------------------------------------------------------

    def prepare(self, index: int, checksum: str) -> ChunkRecord:
        """Record that chunk ``index`` with ``checksum`` is about to be sent."""
        self._move(index, ChunkEvent.PREPARE)
        self._checksums[index] = checksum
        return ChunkRecord(index, ChunkState.PREPARED, checksum)

    def commit(self, index: int, checksum: str) -> ChunkRecord:
        """Record the peer's durable ack of chunk ``index`` carrying ``checksum``."""
        self._check_usable()
        self._check_index(index)
        expected = self._checksums.get(index)
        if expected is not None and expected != checksum:
            self._fail(
                f"chunk {index}: peer acknowledged checksum {checksum}, we prepared {expected}"
            )
        self._move(index, ChunkEvent.COMMIT)
        self._advance()
        return ChunkRecord(index, ChunkState.COMMITTED, checksum)

    def lose(self, index: int) -> ChunkRecord:
        """Send a prepared chunk back to pending: its bytes may never have arrived."""
        self._move(index, ChunkEvent.LOSE)
        checksum = self._checksums.pop(index)
        return ChunkRecord(index, ChunkState.PENDING, checksum)

    def reconcile(self, held: Mapping[int, str]) -> Reconciliation:
        """Compare with the chunks the peer durably holds (index -> checksum) and apply it.

        Prepared chunks the peer holds with our checksum become committed; every other prepared
        chunk goes back to pending. Chunks the peer holds that we never prepared (their records
        were lost with a power cut) are reported as ``unknown`` for the caller to verify against
        the local file; committed chunks the peer no longer holds are reported as ``missing``.
        """
        self._check_usable()
        result = Reconciliation()
        for index in list(self.indexes(ChunkState.PREPARED)):
            if held.get(index) == self._checksums[index]:
                result.changes.append(self.commit(index, held[index]))
                result.committed.append(index)
            else:
                result.changes.append(self.lose(index))
                result.lost.append(index)
        for index in sorted(held):
            self._check_index(index)
            state = self.state(index)
            if state is ChunkState.PENDING:
                result.unknown.append(index)
        for index in self.indexes(ChunkState.COMMITTED):
            if held.get(index) != self._checksums[index]:
                result.missing.append(index)
        return result

    # -- internals -----------------------------------------------------------------------------

    def _move(self, index: int, event: ChunkEvent) -> None:
        self._check_usable()
        self._check_index(index)
        current = self.state(index)
        target = TRANSITIONS.get((current, event))
        if target is None:
            self._fail(f"chunk {index}: cannot {event} a {current} chunk")
            return  # not reached: _fail raises
        if target is ChunkState.PENDING:
            self._states.pop(index, None)
        else:
            self._states[index] = target

    def _advance(self) -> None:
        while self._states.get(self._contiguous) is ChunkState.COMMITTED:
            self._contiguous += 1

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.chunk_count:
            raise LedgerError(f"chunk index {index} out of range 0..{self.chunk_count - 1}")

    def _check_usable(self) -> None:
        if self._error is not None:
            raise LedgerError(f"ledger is unusable after an earlier error: {self._error}")

    def _fail(self, message: str) -> None:
        self._error = LedgerError(message)
        raise self._error
