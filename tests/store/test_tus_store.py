"""The client store's tus pieces: upload URLs, partial uploads, adopting chunks in one save."""

from __future__ import annotations

from resume.protocol.ledger import ChunkState, Ledger
from resume.store import Store
from resume.store.tus import PartRecord, TusPartRepository


def new_transfer(store: Store, file_id: str = "f" * 32):
    return store.transfers.create(
        file_id=file_id,
        source_path="/data/x.bin",
        name="x.bin",
        url="http://127.0.0.1:1/files/",
        size=1000,
        mtime_ns=1,
        inode=2,
        chunk_size=100,
    )


def test_upload_url_is_stored_with_the_transfer(store: Store) -> None:
    """A new transfer has none; the URL the server gave is read back with the record."""
    record = new_transfer(store)
    assert record.upload_url is None
    store.transfers.update(record.file_id, upload_url="http://127.0.0.1:1/files/abc")
    assert store.transfers.get(record.file_id).upload_url == "http://127.0.0.1:1/files/abc"


def test_parts_are_replaced_given_urls_and_deleted_with_their_transfer(store: Store) -> None:
    """Layout, URL per part, and no orphan rows after `resume gc` deletes the transfer."""
    record = new_transfer(store)
    parts = TusPartRepository(store.db)
    parts.replace(record.file_id, [PartRecord(0, 0, 5, None), PartRecord(1, 5, 10, None)])
    parts.set_url(record.file_id, 1, "http://127.0.0.1:1/files/p1")
    assert parts.parts(record.file_id) == [
        PartRecord(0, 0, 5, None),
        PartRecord(1, 5, 10, "http://127.0.0.1:1/files/p1"),
    ]
    parts.replace(record.file_id, [])
    assert parts.parts(record.file_id) == []
    parts.replace(record.file_id, [PartRecord(0, 0, 10, "u")])
    assert store.transfers.delete([record.file_id]) == 1
    assert parts.parts(record.file_id) == []


def test_adopting_a_chunk_saves_prepare_and_commit_as_one_committed_row(store: Store) -> None:
    """Reconciliation adopts held chunks with prepare then commit in one save: one row each."""
    record = new_transfer(store)
    ledger = Ledger(record.size, record.chunk_size)
    changes = []
    for index in (0, 1):
        changes.append(ledger.prepare(index, f"{index:016x}"))
        changes.append(ledger.commit(index, f"{index:016x}"))
    store.transfers.save_chunks(record.file_id, ledger, changes)
    restored = store.transfers.load_ledger(store.transfers.get(record.file_id))
    assert restored.state(0) is restored.state(1) is ChunkState.COMMITTED
    assert store.transfers.get(record.file_id).offset == 200
