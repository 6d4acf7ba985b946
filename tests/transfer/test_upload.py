"""The upload engine against a real in-process server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest
import xxhash

from resume.errors import (
    ConnectError,
    Interrupted,
    Rejected,
    ServerError,
)
from resume.net.connector import ConnectOptions
from resume.store import Store
from resume.store.models import TransferState
from resume.transfer.plan import FileJob, collect_jobs
from resume.transfer.remote import cancel_on_server
from resume.transfer.upload import FileResult, Uploader
from tests.transfer.conftest import (
    RunningServer,
    StartServer,
    fast_options,
    make_file,
    partial_files,
)


class StopAfter:
    """A progress sink that asks the uploader to stop once ``limit`` bytes are committed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.uploader: Uploader | None = None

    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        pass

    def committed(self, job: FileJob, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen >= self.limit and self.uploader is not None:
            self.uploader.stop()

    def file_done(self, result: FileResult) -> None:
        pass

    def connection(self, event: object) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


async def upload(store: Store, url: str, paths: list[Path], **options: object) -> list[FileResult]:
    return await Uploader(store, url, fast_options(**options)).run(collect_jobs(paths))


async def interrupted_upload(store: Store, url: str, source: Path, *, after: int) -> None:
    """Upload ``source`` but stop() it once ``after`` bytes are committed."""
    progress = StopAfter(limit=after)
    uploader = Uploader(store, url, fast_options(), progress=progress)
    progress.uploader = uploader
    with pytest.raises(Interrupted):
        await uploader.run(collect_jobs([source]))


async def test_upload_arrives_byte_identical_and_verified(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """A multi-chunk file lands under its name, identical, with no partial left behind."""
    source = make_file(tmp_path / "data.bin", 1_000_003)
    [result] = await upload(client_store, server.url, [source])
    assert result.state == "completed"
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()
    assert result.checksum == xxhash.xxh3_128_hexdigest(source.read_bytes())
    assert partial_files(server.root) == []
    record = client_store.transfers.get(result.file_id)
    assert record.state is TransferState.COMPLETED and record.offset == record.size


class Recording(StopAfter):
    """Records connection events instead of stopping."""

    def __init__(self) -> None:
        super().__init__(limit=2**62)
        self.events: list[object] = []

    def connection(self, event: object) -> None:
        self.events.append(event)


async def test_a_clean_upload_never_waits_for_an_ack_timeout(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """Acks racing the sends of later chunks are never lost: no timeout, no reconnect."""
    source = make_file(tmp_path / "data.bin", 128 * 2**20)
    progress = Recording()
    # Sends of 4 MiB fill the write buffer, so acks are processed while a batch goes out.
    options = fast_options(chunk_size=4 * 2**20, window=16, ack_timeout=3.0)
    uploader = Uploader(client_store, server.url, options, progress=progress)
    [result] = await uploader.run(collect_jobs([source]))
    assert [getattr(e, "kind", None) for e in progress.events] == ["connected"]
    assert result.bytes_sent == source.stat().st_size


async def test_directories_keep_relative_paths_and_empty_files_work(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """A directory arrives under its own name with sub-paths; a zero-byte file is fine."""
    tree = tmp_path / "photos"
    make_file(tree / "a.jpg", 70_000, seed=1)
    make_file(tree / "2024" / "b.jpg", 200_000, seed=2)
    (tree / "empty.txt").write_bytes(b"")
    results = await upload(client_store, server.url, [tree])
    assert sorted(r.job.name for r in results) == [
        "photos/2024/b.jpg",
        "photos/a.jpg",
        "photos/empty.txt",
    ]
    for name in ("a.jpg", "2024/b.jpg", "empty.txt"):
        assert (server.root / "photos" / name).read_bytes() == (tree / name).read_bytes()


async def test_rerunning_a_finished_upload_asks_the_server(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """A finished upload re-run is confirmed by the server (nothing sent), not by the record."""
    source = make_file(tmp_path / "data.bin", 300_000)
    [first] = await upload(client_store, server.url, [source])
    [again] = await upload(client_store, server.url, [source])
    assert (again.state, again.bytes_sent, again.file_id) == ("verified", 0, first.file_id)
    [checked] = await upload(client_store, server.url, [source], verify=True)
    assert (checked.state, checked.bytes_sent) == ("verified", 0)


async def test_a_finished_upload_deleted_on_the_server_is_sent_again(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """The server says the published file is gone: a new transfer sends the whole file."""
    source = make_file(tmp_path / "data.bin", 300_000)
    [first] = await upload(client_store, server.url, [source])
    os.unlink(server.root / "data.bin")
    [again] = await upload(client_store, server.url, [source])
    assert again.state == "completed" and again.bytes_sent == 300_000
    assert again.file_id != first.file_id
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()


async def test_a_finished_upload_replaced_on_the_server_is_sent_again(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """Same size, other bytes under the name: --verify re-hashes and sends the file again."""
    source = make_file(tmp_path / "data.bin", 300_000)
    await upload(client_store, server.url, [source])
    published = server.root / "data.bin"
    stat = published.stat()
    published.write_bytes(b"x" * 300_000)
    os.utime(published, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide it from a stat check
    [again] = await upload(client_store, server.url, [source], verify=True, overwrite=True)
    assert again.state == "completed" and again.bytes_sent == 300_000
    assert published.read_bytes() == source.read_bytes()


async def test_interrupted_upload_resumes_from_the_breakpoint(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """stop() mid-way saves state; the next run sends only what the server lacks."""
    source = make_file(tmp_path / "data.bin", 2_000_000)
    await interrupted_upload(client_store, server.url, source, after=500_000)
    assert not (server.root / "data.bin").exists()
    [summary] = client_store.transfers.summaries()
    assert summary.transfer.state is TransferState.PENDING
    assert summary.chunks.committed >= 500_000 // (64 * 1024)

    [result] = await upload(client_store, server.url, [source])
    assert result.resumed_from >= 500_000
    assert result.bytes_sent == source.stat().st_size - result.resumed_from
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()


async def test_prepared_chunks_the_server_holds_are_not_sent_again(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """A crash after the server's ack but before our commit record costs no resend."""
    source = make_file(tmp_path / "data.bin", 1_500_000)
    await interrupted_upload(client_store, server.url, source, after=1_000_000)
    # Simulate lost commit records: every committed chunk goes back to PREPARED.
    db = Path(client_store.url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE chunks SET state='PREPARED'")
        conn.execute('UPDATE transfers SET "offset"=0')
    [result] = await upload(client_store, server.url, [source])
    assert result.resumed_from >= 1_000_000  # reconciled as held, not resent
    assert result.bytes_sent == source.stat().st_size - result.resumed_from
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()


async def test_a_changed_source_is_refused_until_restart(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """An edited file never mixes with its earlier chunks; --restart starts it over."""
    source = make_file(tmp_path / "data.bin", 1_000_000)
    await interrupted_upload(client_store, server.url, source, after=200_000)
    [old] = client_store.transfers.summaries()
    make_file(source, 1_000_000, seed=99)  # same size, new content, new mtime
    os.utime(source, ns=(time.time_ns() + 10**9,) * 2)

    [failed] = await upload(client_store, server.url, [source])
    assert failed.state == "failed" and "--restart" in (failed.error or "")
    assert not (server.root / "data.bin").exists()

    [result] = await upload(client_store, server.url, [source], restart=True)
    assert result.file_id != old.transfer.file_id and result.resumed_from == 0
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()
    assert client_store.transfers.get(old.transfer.file_id).state is TransferState.CANCELLED
    assert partial_files(server.root) == []  # the old partial was dropped on the server


async def test_server_that_lost_a_partial_gets_the_whole_file_again(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """Committed chunks the server no longer holds (expired) are re-sent, never assumed."""
    server = await start_server(expire=0.2)
    source = make_file(tmp_path / "data.bin", 1_000_000)
    await interrupted_upload(client_store, server.url, source, after=300_000)
    for _ in range(100):  # the expiry sweep runs every 0.5 s
        if not partial_files(server.root):
            break
        await asyncio.sleep(0.1)
    assert partial_files(server.root) == []
    [result] = await upload(client_store, server.url, [source])
    assert result.bytes_sent == source.stat().st_size
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()


async def test_wrong_token_fails_fast_without_retrying(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """HTTP 401 at the handshake is fatal at once, with a clear message."""
    server = await start_server(token="right")
    source = make_file(tmp_path / "data.bin", 1000)
    started = time.monotonic()
    with pytest.raises(Rejected, match="401"):
        await upload(client_store, server.url, [source], connect=ConnectOptions(token="wrong"))
    assert time.monotonic() - started < 2.0
    [result] = await upload(
        client_store, server.url, [source], connect=ConnectOptions(token="right")
    )
    assert result.state == "completed"


async def test_unreachable_server_gives_up_with_connect_error(
    client_store: Store, tmp_path: Path
) -> None:
    """Refused connections are retried with backoff until give_up_after, then reported."""
    source = make_file(tmp_path / "data.bin", 1000)
    started = time.monotonic()
    with pytest.raises(ConnectError):
        await upload(client_store, "ws://127.0.0.1:9", [source], give_up_after=0.5)
    assert 0.4 < time.monotonic() - started < 5
    [summary] = client_store.transfers.summaries()
    assert summary.transfer.state is TransferState.PENDING  # resumable, not failed
    assert "connect" in (summary.transfer.last_error or "")


async def test_file_over_the_server_limit_is_refused(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """--max-size on the server refuses a larger file before any byte is stored."""
    server = await start_server(max_file_size=100_000)
    source = make_file(tmp_path / "big.bin", 100_001)
    small = make_file(tmp_path / "small.bin", 1_000)
    big, other = await upload(client_store, server.url, [source, small])
    assert big.state == "failed" and "too large" in (big.error or "")
    assert other.state == "completed"  # the refusal of one file does not stop the others
    assert partial_files(server.root) == []
    states = {s.transfer.name: s.transfer.state for s in client_store.transfers.summaries()}
    assert states == {"big.bin": TransferState.FAILED, "small.bin": TransferState.COMPLETED}


async def test_cancel_drops_the_partial_on_the_server(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """cancel_on_server removes the partial file and the server's record of its chunks."""
    source = make_file(tmp_path / "data.bin", 1_000_000)
    await interrupted_upload(client_store, server.url, source, after=200_000)
    [summary] = client_store.transfers.summaries()
    assert partial_files(server.root) == [f"{summary.transfer.file_id}.part"]
    await cancel_on_server(server.url, summary.transfer.file_id, ConnectOptions())
    assert partial_files(server.root) == []
    with sqlite3.connect(server.root / ".resume" / "server.db") as conn:
        assert conn.execute("SELECT count(*) FROM received_chunks").fetchone() == (0,)


async def test_server_restart_keeps_what_it_acknowledged(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """After the server restarts, the chunks it acked are still held and not sent again."""
    server = await start_server()
    source = make_file(tmp_path / "data.bin", 1_000_000)
    await interrupted_upload(client_store, server.url, source, after=400_000)
    committed = client_store.transfers.summaries()[0].chunks.committed
    await server.shutdown()
    server = await start_server(port=server.port)  # the same URL: the same transfer
    [result] = await upload(client_store, server.url, [source])
    assert result.resumed_from >= committed * 64 * 1024
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()


async def test_disk_full_is_a_clear_error_and_the_server_goes_on(
    start_server: StartServer, client_store: Store, tmp_path: Path, tiny_disk: Path
) -> None:
    """A file larger than the free space fails with disk_full; nothing lands; others proceed."""
    server = await start_server(root=tiny_disk / "root")
    big = make_file(tmp_path / "big.bin", 5 * 2**20)
    with pytest.raises(ServerError, match="disk is full"):
        await upload(client_store, server.url, [big])
    assert not (server.root / "big.bin").exists()
    assert partial_files(server.root) == []
    small = make_file(tmp_path / "small.bin", 200_000)
    [result] = await upload(client_store, server.url, [small])
    assert (server.root / "small.bin").read_bytes() == small.read_bytes()
    assert result.state == "completed"
    await server.shutdown()  # release the tmpfs before it is unmounted


async def test_a_finished_upload_is_sent_again_to_a_server_that_forgot_it(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """The server's store and the file are gone: the re-run reconciles and sends it all."""
    import shutil

    server = await start_server()
    source = make_file(tmp_path / "data.bin", 300_000)
    [first] = await upload(client_store, server.url, [source])
    await server.shutdown()
    shutil.rmtree(server.root / ".resume")
    (server.root / "data.bin").unlink()
    server = await start_server(port=server.port)
    [again] = await upload(client_store, server.url, [source])
    assert (again.state, again.bytes_sent, again.file_id) == ("completed", 300_000, first.file_id)
    assert (server.root / "data.bin").read_bytes() == source.read_bytes()
