"""The server's per-file upload machine, alone: ownership, chunks, finishing, recovery."""

from __future__ import annotations

import pytest

from resume.protocol.geometry import Geometry, GeometryError
from resume.protocol.receive import (
    Destination,
    FinishOutcome,
    Occupant,
    Phase,
    Reception,
    ReceptionError,
    Recovery,
    Verdict,
    destination_problem,
    recovery,
)


def reception(size: int = 8, chunk: int = 4) -> Reception:
    return Reception("f" * 32, "f.bin", Geometry(size, chunk))


def test_a_take_over_fences_the_old_owner_at_once() -> None:
    """The older epoch's chunks and finish are refused the moment a new owner takes over."""
    r = reception()
    old = r.take()
    new = r.take()
    assert r.chunk(old, 0, 0, 4, "a").verdict is Verdict.FENCED
    assert r.chunk(new, 0, 0, 4, "a").verdict is Verdict.WRITE
    assert r.finish(old, "x").outcome is FinishOutcome.FENCED
    assert not r.release(old) and r.owned
    assert r.release(new) and not r.owned


def test_chunks_must_fit_the_geometry() -> None:
    """Index, offset and length are checked against the one chunk geometry."""
    r = reception(10, 4)
    epoch = r.take()
    assert r.chunk(epoch, 3, 12, 4, "a").verdict is Verdict.VIOLATION
    assert r.chunk(epoch, 1, 0, 4, "a").verdict is Verdict.VIOLATION
    assert r.chunk(epoch, 2, 8, 4, "a").verdict is Verdict.VIOLATION  # the last has 2 bytes
    assert r.chunk(epoch, 2, 8, 2, "a").verdict is Verdict.WRITE


def test_repeated_chunks_are_idempotent_and_only_synced_ones_are_held() -> None:
    """Written-not-synced is not held; a repeat waits or is acked again without a write."""
    r = reception()
    epoch = r.take()
    r.written(epoch, 0, "a")
    assert r.held == {}
    assert r.chunk(epoch, 0, 0, 4, "a").verdict is Verdict.WAIT
    assert r.chunk(epoch, 0, 0, 4, "b").verdict is Verdict.WRITE  # other bytes: rewrite
    r.written(epoch, 0, "b")
    batch = r.sync_batch()
    assert batch is not None and batch.chunks == ((0, "b"),)
    assert r.synced(batch) == [(0, "b")]
    assert r.held == {0: "b"}
    assert r.chunk(epoch, 0, 0, 4, "b").verdict is Verdict.ACK_AGAIN


def test_a_failed_sync_holds_nothing_of_its_batch() -> None:
    """A batch whose fsync or record failed is not held: the client sends it again."""
    r = reception()
    epoch = r.take()
    r.written(epoch, 0, "a")
    first = r.sync_batch()
    assert first is not None
    r.synced(first)
    r.written(epoch, 0, "b")
    r.written(epoch, 1, "c")
    batch = r.sync_batch()
    assert batch is not None
    r.sync_failed(batch)
    assert r.held == {}  # chunk 0 may be half-rewritten on disk now


def test_finish_syncs_first_refuses_holes_and_then_verifies_once() -> None:
    """Finish waits for pending syncs, refuses holes, and stops all writes once verifying."""
    r = reception()
    epoch = r.take()
    assert r.finish(epoch, "x").outcome is FinishOutcome.INCOMPLETE
    r.written(epoch, 0, "a")
    r.written(epoch, 1, "b")
    assert r.finish(epoch, "x").outcome is FinishOutcome.SYNC_FIRST
    batch = r.sync_batch()
    assert batch is not None
    r.synced(batch)
    assert r.finish(epoch, "x").outcome is FinishOutcome.VERIFY
    assert r.phase is Phase.VERIFYING
    assert r.chunk(epoch, 0, 0, 4, "z").verdict is Verdict.FENCED  # nothing written now
    assert r.verified("x")
    assert r.phase is Phase.PUBLISHING
    r.published()
    assert r.phase is Phase.COMPLETED


def test_a_wrong_whole_file_hash_cancels_and_the_machine_refuses_illegal_moves() -> None:
    """A mismatch drops everything; an illegal move leaves the machine stuck in error."""
    r = reception(4, 4)
    epoch = r.take()
    r.written(epoch, 0, "a")
    batch = r.sync_batch()
    assert batch is not None
    r.synced(batch)
    r.finish(epoch, "x")
    assert not r.verified("y")
    assert r.phase is Phase.CANCELLED and r.held == {}
    with pytest.raises(ReceptionError):
        r.take()
    with pytest.raises(ReceptionError, match="unusable"):
        r.published()  # sticky: a machine that saw an impossible event decides nothing more


def test_a_refused_publish_goes_back_to_receiving_with_every_chunk() -> None:
    """A destination that refuses the rename loses no received data."""
    r = reception(4, 4)
    epoch = r.take()
    r.written(epoch, 0, "a")
    batch = r.sync_batch()
    assert batch is not None
    r.synced(batch)
    r.finish(epoch, "x")
    r.verified("x")
    r.abort_publish()
    assert r.phase is Phase.RECEIVING and r.held == {0: "a"}


@pytest.mark.parametrize(
    ("phase", "partial", "same", "matches", "expected"),
    [
        (Phase.RECEIVING, True, False, False, Recovery.NOTHING),
        (Phase.RECEIVING, False, False, False, Recovery.FORGET_CHUNKS),
        (Phase.PUBLISHING, True, False, False, Recovery.RECEIVE_AGAIN),
        (Phase.PUBLISHING, True, True, False, Recovery.COMPLETE_UNLINK),
        (Phase.PUBLISHING, False, False, True, Recovery.COMPLETE),
        (Phase.PUBLISHING, False, False, False, Recovery.FORGET_CHUNKS),
        (Phase.CANCELLED, True, False, False, Recovery.REMOVE_PARTIAL),
        (Phase.COMPLETED, False, False, False, Recovery.NOTHING),
    ],
)
def test_recovery_follows_the_disk(
    phase: Phase, partial: bool, same: bool, matches: bool, expected: Recovery
) -> None:
    """After a crash the record is made to agree with what is really on disk."""
    assert (
        recovery(phase, partial_exists=partial, final_is_partial=same, final_matches=matches)
        is expected
    )


def test_destination_rules() -> None:
    """Existing files need overwrite; directories, symlinks and bad parents never publish."""
    assert destination_problem(Destination(Occupant.NOTHING), overwrite=False) is None
    assert destination_problem(Destination(Occupant.FILE), overwrite=False)[0] == "exists"  # type: ignore[index]
    assert destination_problem(Destination(Occupant.FILE), overwrite=True) is None
    assert destination_problem(Destination(Occupant.FILE, ours=True), overwrite=False) is None
    for occupant in (Occupant.DIRECTORY, Occupant.OTHER):
        assert destination_problem(Destination(occupant), overwrite=True)[0] == "bad_name"  # type: ignore[index]
    bad = Destination(Occupant.NOTHING, "a is a symlink")
    assert destination_problem(bad, overwrite=True) == ("bad_name", "a is a symlink")


@pytest.mark.parametrize(("size", "chunk"), [(-1, 4), (2**63, 4), (8, 0), (8, 2**31), (2**40, 1)])
def test_impossible_geometry_is_refused(size: int, chunk: int) -> None:
    """Sizes no file or wire can have are refused before anything is stored."""
    with pytest.raises(GeometryError):
        Geometry(size, chunk)
