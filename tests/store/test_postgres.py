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


# -- several nodes on one store ------------------------------------------------------------------


def test_nodes_starting_at_once_migrate_once(pg_url: str) -> None:
    """Eight processes' worth of stores opening a new database at once: one migrates, all
    find it at head (an advisory lock, not a race on CREATE TABLE)."""
    from concurrent.futures import ThreadPoolExecutor

    def open_and_report(_: int) -> str | None:
        with open_store(pg_url, durable=True) as store:
            return migrate.current_revision(store.engine)

    with ThreadPoolExecutor(8) as pool:
        revisions = list(pool.map(open_and_report, range(8)))
    assert revisions == [migrate.head_revision()] * 8


def test_appends_from_two_nodes_get_gap_free_seqs(pg_url: str) -> None:
    """Two nodes (two engines) appending to one channel at once: server seqs are 1..N with no
    gap or duplicate, and each producer's messages are in its own order exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [open_store(pg_url) for _ in range(2)]
    try:

        def produce(index: int) -> None:
            log, producer = stores[index].streams, f"p{index}"
            for first in range(1, 301, 10):
                batch = [str(first + i) for i in range(10)]
                log.append("c", producer, first, batch, instance=producer)
                log.append("c", producer, first, batch[:5], instance=producer)  # a replay

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(produce, range(2)))
        rows = (
            stores[0]
            .engine.connect()
            .exec_driver_sql(
                "SELECT seq, producer, producer_seq, data FROM stream_messages ORDER BY seq"
            )
            .all()
        )
    finally:
        for store in stores:
            store.close()
    assert [r.seq for r in rows] == list(range(1, 601))
    for producer in ("p0", "p1"):
        mine = [(r.producer_seq, r.data) for r in rows if r.producer == producer]
        assert mine == [(i, str(i)) for i in range(1, 301)]


def test_upload_lease_fences_a_paused_owner(pg_url: str) -> None:
    """Another node waits for a live lease, takes over once it lapses, and the old owner can
    then record nothing: no chunk, no renewal, no publish."""
    import time

    from resume.errors import Fenced
    from resume.store.received import LeaseHeld, ReceivedRecord, StoredChunk

    with open_store(pg_url, durable=True) as a, open_store(pg_url, durable=True) as b:
        args = {"file_id": "f" * 32, "name": "x.bin", "size": 8, "chunk_size": 4}
        mine = a.received.claim(**args, owner="A", lease=0.5, shared=True)
        assert isinstance(mine, ReceivedRecord)
        a.received.record_chunks(
            mine.file_id, mine.epoch, [StoredChunk(0, 0, 4, "c0")], 4, lease=0.5
        )
        held = b.received.claim(**args, owner="B", lease=5, shared=True)
        assert isinstance(held, LeaseHeld) and held.holder == "A" and 0 < held.remaining <= 0.5
        assert b.received.foreign_lease(mine.file_id, "B") is not None
        time.sleep(0.6)  # A is paused: its lease lapses
        assert b.received.foreign_lease(mine.file_id, "B") is None
        theirs = b.received.claim(**args, owner="B", lease=5, shared=True)
        assert isinstance(theirs, ReceivedRecord) and theirs.epoch == mine.epoch + 1
        assert b.received.held(mine.file_id) == {0: "c0"}
        with pytest.raises(Fenced):
            a.received.record_chunks(mine.file_id, mine.epoch, [StoredChunk(1, 4, 4, "c1")], 8)
        with pytest.raises(Fenced):
            a.received.renew(mine.file_id, mine.epoch, 5)
        with pytest.raises(Fenced):
            a.received.begin_publish(mine.file_id, mine.epoch, "sum", False)
        assert b.received.held(mine.file_id) == {0: "c0"}
        # A node that lets go releases at once: the next claim does not wait.
        b.received.release(theirs.file_id, theirs.epoch)
        again = a.received.claim(**args, owner="A", lease=5, shared=True)
        assert isinstance(again, ReceivedRecord) and again.epoch == theirs.epoch + 1


def test_producer_sessions_across_nodes(pg_url: str) -> None:
    """One live producer per id across nodes: another instance is refused while the session
    lives; the same instance takes over and fences the older connection's appends."""
    from resume.errors import ClientIdConflict

    with open_store(pg_url) as a, open_store(pg_url) as b:
        a.streams.claim_session("c", "p", instance="I1", session="s1", lease=5)
        with pytest.raises(ClientIdConflict, match="live producer"):
            b.streams.claim_session("c", "p", instance="I2", session="s2", lease=5)
        b.streams.claim_session("c", "p", instance="I1", session="s3", lease=5)
        with pytest.raises(ClientIdConflict) as fenced:
            a.streams.append("c", "p", 1, ['"x"'], instance="I1", session="s1", lease=5)
        assert fenced.value.close_code == 4410
        assert (
            b.streams.append("c", "p", 1, ['"x"'], instance="I1", session="s3", lease=5).count == 1
        )
        assert a.streams.renew_sessions([("c", "p", "s1"), ("c", "p", "s3")], 5) == [
            ("c", "p", "s1")
        ]
        b.streams.release_session("c", "p", "s3")
        with pytest.raises(ClientIdConflict, match="another producer instance"):
            a.streams.claim_session("c", "p", instance="I2", session="s4", lease=5)


def test_housekeeping_round_runs_on_one_node(pg_url: str) -> None:
    """Two nodes whose timers fire together: the round runs once, on one of them."""
    import asyncio

    from resume.store.jobs import RoundGate

    runs: list[str] = []

    async def both() -> list[bool]:
        with open_store(pg_url) as a, open_store(pg_url) as b:
            gates = [RoundGate(a.engine, "A"), RoundGate(b.engine, "B")]

            def job(node: str):  # type: ignore[no-untyped-def]
                async def run() -> None:
                    runs.append(node)
                    await asyncio.sleep(0.1)

                return run

            first = await asyncio.gather(*(g.run_once("expiry", 60, job(g.node)) for g in gates))
            second = await gates[1].run_once("expiry", 60, job("B"))
            return [*first, second]

    ran = asyncio.run(both())
    assert sorted(ran[:2]) == [False, True] and ran[2] is False
    assert len(runs) == 1


def test_a_node_hears_appends_of_another(pg_url: str) -> None:
    """LISTEN/NOTIFY: an append on one node reaches a listener on another at its commit."""
    import asyncio
    import json

    from resume.store.notify import STREAMS, Listener

    async def scenario() -> dict[str, int]:
        heard: asyncio.Queue[dict[str, int]] = asyncio.Queue()
        listener = Listener(pg_url, (STREAMS,), lambda _k, p: heard.put_nowait(json.loads(p)))
        listener.start()
        try:
            await asyncio.wait_for(listener.connected.wait(), 10)
            with open_store(pg_url) as other:
                await asyncio.to_thread(other.streams.append, "news", "p", 1, ['"a"', '"b"'])
            return await asyncio.wait_for(heard.get(), 10)
        finally:
            await listener.stop()

    assert asyncio.run(scenario()) == {"c": "news", "f": 1, "l": 2}
