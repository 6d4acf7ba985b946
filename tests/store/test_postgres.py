"""The store on PostgreSQL: migrations, the stream log and the client state, dialect-neutral.

Each test gets a scratch database on the server at ``$RESUME_TEST_POSTGRES`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), dropped afterwards (``tests/pg.py``).
Where no PostgreSQL answers they skip with the reason; ``.ci/run`` makes that a failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from resume.errors import ProtocolError
from resume.store import Store, migrate, open_store
from resume.store.models import utcnow


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    with open_store(pg_url) as store:
        yield store


def test_migrations_reach_head_and_match_the_models(pg_store: Store) -> None:
    """The same Alembic revisions build the schema on PostgreSQL, with no drift."""
    assert migrate.current_revision(pg_store.engine) == migrate.head_revision()
    migrate.check(pg_store.engine)


def test_stream_log_dedups_trims_and_refuses_holes(pg_store: Store) -> None:
    """The driver-level insert and the upserts behave as on SQLite."""
    log = pg_store.streams
    assert log.append("c", "p", 1, ['"a"', '"b"']).count == 2
    assert log.append("c", "p", 2, ['"b"', '"c"']).count == 1
    with pytest.raises(ProtocolError):
        log.append("c", "p", 9, ['"x"'])
    for seq in range(4, 10):
        log.append("c", "p", seq, [str(seq)], keep=3)
    assert [m.seq for m in log.read("c", 0, 100)] == [7, 8, 9]
    assert log.trim("c", before=utcnow() + dt.timedelta(seconds=1)).first == 10


def test_client_outbox_and_cursors(pg_store: Store) -> None:
    """Outbox, seq counter and cursor writes (the compiled UPDATE path) work on PostgreSQL."""
    repo = pg_store.stream_client
    repo.add("me", "u", [(1, '"a"'), (2, '"b"')])
    repo.confirm("me", "u", 1)
    outbox = repo.load_outbox("me", "u")
    assert (outbox.pending, outbox.last_seq, outbox.acked) == ([(2, '"b"')], 2, 1)
    repo.set_cursor("c1", "u", 5)
    repo.set_cursor("c1", "u", 6)
    assert repo.cursor("c1", "u") == 6
    assert [p.pending for p in repo.producers()] == [1]


def test_client_transfer_records_and_locks(pg_store: Store) -> None:
    """The client's plain-SQL repository (reserved words quoted) and its locks on PostgreSQL."""
    from resume.store.states import TransferState
    from resume.store.transfers import LockOwner, lock_key

    repo = pg_store.transfers
    record = repo.create(
        file_id="a" * 32, source_path="/x", name="x.bin", url="ws://h:1", size=10,
        mtime_ns=1, inode=2, chunk_size=4, server="ws://127.0.0.1:1",
    )  # fmt: skip
    found = repo.latest_for("/x", "ws://other:1", "x.bin", server="ws://127.0.0.1:1")
    assert found is not None and found.file_id == record.file_id
    ledger = repo.load_ledger(record)
    repo.prepare_chunks(record.file_id, ledger, [ledger.prepare(0, "c0"), ledger.prepare(1, "c1")])
    repo.commit_chunks(record.file_id, ledger, [ledger.commit(0, "c0")])
    repo.update(record.file_id, state=TransferState.ACTIVE)
    key, me = lock_key("/x", "ws://127.0.0.1:1", "x.bin"), LockOwner.me()
    assert repo.lock(key, me) is None
    repo.lock_transfer(key, record.file_id)
    [summary] = repo.summaries()
    assert (summary.chunks.committed, summary.chunks.prepared, summary.running) == (1, 1, True)
    assert summary.transfer.offset == 4
    repo.unlock([key], me)
    assert repo.summaries()[0].running is False
    assert repo.delete([record.file_id]) == 1
