"""The chunk ledger: transitions, invariants, reconciliation, and a stateful model test."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resume.errors import LedgerError
from resume.protocol.ledger import TRANSITIONS, ChunkEvent, ChunkState, Ledger
from resume.store import open_store


def test_chunk_specs_cover_the_file_exactly() -> None:
    """Chunks tile the file with no gap or overlap; the last one is short."""
    ledger = Ledger(size=10, chunk_size=4)
    specs = [ledger.spec(i) for i in range(ledger.chunk_count)]
    assert [(s.offset, s.length) for s in specs] == [(0, 4), (4, 4), (8, 2)]


def test_empty_file_has_no_chunks_and_is_complete() -> None:
    """A zero-byte file needs nothing sent."""
    ledger = Ledger(size=0, chunk_size=4)
    assert ledger.chunk_count == 0
    assert ledger.complete


def test_two_phase_commit_advances_the_contiguous_offset() -> None:
    """Committing out of order leaves the offset at the first hole."""
    ledger = Ledger(size=12, chunk_size=4)
    for i in range(3):
        ledger.prepare(i, f"h{i}")
    ledger.commit(1, "h1")
    assert ledger.committed_offset == 0
    ledger.commit(0, "h0")
    assert ledger.committed_offset == 8
    ledger.commit(2, "h2")
    assert ledger.committed_offset == 12
    assert ledger.complete


def test_commit_without_prepare_is_illegal_and_sticky() -> None:
    """An ack for a chunk never prepared raises, and the ledger refuses everything after."""
    ledger = Ledger(size=8, chunk_size=4)
    with pytest.raises(LedgerError, match="cannot commit a PENDING chunk"):
        ledger.commit(0, "x")
    with pytest.raises(LedgerError, match="unusable"):
        ledger.prepare(1, "y")


def test_commit_with_other_checksum_is_refused() -> None:
    """A chunk is never committed under a checksum other than the one prepared."""
    ledger = Ledger(size=8, chunk_size=4)
    ledger.prepare(0, "good")
    with pytest.raises(LedgerError, match="checksum"):
        ledger.commit(0, "evil")
    assert ledger.state(0) is ChunkState.PREPARED


def test_every_transition_outside_the_table_raises() -> None:
    """The table is the whole truth: any (state, event) pair not in it is refused."""
    for state in ChunkState:
        for event in ChunkEvent:
            ledger = Ledger(size=4, chunk_size=4)
            if state is not ChunkState.PENDING:
                ledger.prepare(0, "h")
            if state is ChunkState.COMMITTED:
                ledger.commit(0, "h")
            action = {
                ChunkEvent.PREPARE: lambda lg=ledger: lg.prepare(0, "h"),
                ChunkEvent.COMMIT: lambda lg=ledger: lg.commit(0, "h"),
                ChunkEvent.LOSE: lambda lg=ledger: lg.lose(0),
            }[event]
            if (state, event) in TRANSITIONS:
                action()
                assert ledger.state(0) is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(LedgerError):
                    action()


def test_reconcile_sorts_prepared_chunks_by_what_the_peer_holds() -> None:
    """Held with our checksum: committed; not held or other checksum: back to pending."""
    ledger = Ledger(size=20, chunk_size=4)
    for i in range(4):
        ledger.prepare(i, f"h{i}")
    ledger.commit(0, "h0")
    result = ledger.reconcile({0: "h0", 1: "h1", 2: "other", 4: "h4"})
    assert result.committed == [1]
    assert result.lost == [2, 3]
    assert result.unknown == [2, 4]  # held there: the caller verifies them against the file
    assert result.missing == []
    assert ledger.committed_offset == 8
    assert list(ledger.indexes(ChunkState.PENDING)) == [2, 3, 4]


def test_reconcile_reports_committed_chunks_the_peer_lost() -> None:
    """A peer that dropped an acknowledged chunk is reported, not hidden."""
    ledger = Ledger(size=8, chunk_size=4)
    ledger.prepare(0, "h0")
    ledger.commit(0, "h0")
    assert ledger.reconcile({}).missing == [0]


def test_restore_from_store_rebuilds_the_same_ledger(store) -> None:
    """What save_chunks persisted, load_ledger brings back identically."""
    record = store.transfers.create(
        file_id="f1",
        source_path="/a",
        name="a",
        url="ws://x",
        size=10,
        mtime_ns=1,
        inode=1,
        chunk_size=4,
    )
    ledger = store.transfers.load_ledger(record)
    store.transfers.save_chunks("f1", ledger, [ledger.prepare(0, "a"), ledger.prepare(2, "c")])
    store.transfers.save_chunks("f1", ledger, [ledger.commit(0, "a")])
    again = store.transfers.load_ledger(store.transfers.get("f1"))
    assert [again.state(i) for i in range(3)] == [
        ChunkState.COMMITTED,
        ChunkState.PENDING,
        ChunkState.PREPARED,
    ]
    assert again.checksum(2) == "c"
    assert store.transfers.get("f1").offset == 4


def content(index: int) -> str:
    """The true checksum of chunk ``index`` of the local file in the model."""
    return f"h{index}"


class LedgerWithCrashes(RuleBasedStateMachine):
    """Random prepare / deliver / ack / loss / crash-and-reload against a real SQLite store.

    The "server" is a dict of the chunks it durably holds. A crash throws the in-memory ledger
    away, reloads it from the database and reconciles with the server, as the upload engine
    does on restart.
    """

    CHUNKS = 12

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-"))
        self.store = open_store(self.tmp / "state.db")
        self.record = self.store.transfers.create(
            file_id="f", source_path="/f", name="f", url="ws://x",
            size=self.CHUNKS * 4 - 1, mtime_ns=1, inode=1, chunk_size=4,
        )  # fmt: skip
        self.ledger = self.store.transfers.load_ledger(self.record)
        self.server: dict[int, str] = {}
        self.in_flight: set[int] = set()
        self.persisted_offset = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def save(self, changes: list) -> None:
        self.store.transfers.save_chunks("f", self.ledger, changes)

    @precondition(lambda self: self.ledger.count(ChunkState.PENDING) > 0)
    @rule(data=st.data())
    def prepare_and_send(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(list(self.ledger.indexes(ChunkState.PENDING))))
        self.save([self.ledger.prepare(index, content(index))])  # durable before the bytes leave
        self.in_flight.add(index)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def server_stores(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.in_flight.discard(index)
        self.server[index] = content(index)

    @precondition(
        lambda self: any(self.ledger.state(i) is ChunkState.PREPARED for i in self.server)
    )
    @rule(data=st.data())
    def ack_arrives(self, data: st.DataObject) -> None:
        acked = [i for i in self.server if self.ledger.state(i) is ChunkState.PREPARED]
        index = data.draw(st.sampled_from(sorted(acked)))
        self.save([self.ledger.commit(index, self.server[index])])

    @rule()
    def connection_drops(self) -> None:
        """Everything in flight is lost; prepared chunks without an ack go back to pending."""
        self.in_flight.clear()
        prepared = list(self.ledger.indexes(ChunkState.PREPARED))
        self.save([self.ledger.lose(i) for i in prepared if i not in self.server])

    @rule()
    def crash_and_restart(self) -> None:
        """Lose all memory; rebuild from the database and reconcile with the server."""
        self.in_flight.clear()
        self.store.close()
        self.store = open_store(self.tmp / "state.db")
        record = self.store.transfers.get("f")
        self.ledger = self.store.transfers.load_ledger(record)
        assert self.ledger.committed_offset == record.offset
        result = self.ledger.reconcile(dict(self.server))
        changes = list(result.changes)
        for index in result.unknown:  # the engine re-reads the local chunk to verify these
            assert self.server[index] == content(index)
            changes.append(self.ledger.prepare(index, content(index)))
            changes.append(self.ledger.commit(index, self.server[index]))
        self.save(changes)
        assert result.missing == []

    @invariant()
    def committed_means_held_by_server(self) -> None:
        for index in self.ledger.indexes(ChunkState.COMMITTED):
            assert self.server.get(index) == self.ledger.checksum(index)

    @invariant()
    def persisted_offset_never_goes_backwards(self) -> None:
        offset = self.store.transfers.get("f").offset
        assert offset >= self.persisted_offset
        assert offset == self.ledger.committed_offset
        self.persisted_offset = offset


TestLedgerWithCrashes = LedgerWithCrashes.TestCase
TestLedgerWithCrashes.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
