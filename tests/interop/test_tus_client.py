"""`resume upload` to third-party tus servers and to a hostile one: real processes on 127.0.0.1.

tuspyserver (PyPI) and @tus/server (npm, under node) are the peers people run; the hostile
server (hostile_tus.py) scripts the answers the real ones rarely give: 409, 460, 404/410, 503,
401/403/413, a PATCH taken only in part.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from resume.store import open_store
from resume.transfer.plan import collect_jobs
from resume.transfer.tus_client import TusOptions, TusUploader
from resume.transfer.upload import FileResult, UploadOptions
from tests.interop.peers import ListeningProcess, read_upload
from tests.interop.peers import random_file as make_file
from tests.processes import run_in_pty, run_resume, start_upload, stop, wait_until

CHUNK = 256 * 1024
BIG = 48 * 2**20 + 4321  # long enough to be killed in the middle; not a whole number of chunks


def upload_args(
    source: Path | list[Path], url: str, db: Path, *extra: str, give_up: str = "30s"
) -> list[str]:
    sources = source if isinstance(source, list) else [source]
    return [
        *map(str, sources),
        url,
        "--db",
        str(db),
        "--json",
        "--no-progress",
        "--chunk-size",
        str(CHUNK),
        "--max-retry-delay",
        "0.2",
        "--give-up-after",
        give_up,
        *extra,
    ]


def upload(source: Path | list[Path], url: str, db: Path, *extra: str) -> tuple[int, dict, str]:
    """Run `resume upload --json` to the end: (exit code, summary, stderr)."""
    result = run_resume("upload", *upload_args(source, url, db, *extra), timeout=180)
    summary = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, summary, result.stderr


def committed(db: Path) -> int:
    """COMMITTED chunks in the client's ledger (read-only, while it runs)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return conn.execute("SELECT count(*) FROM chunks WHERE state = 'COMMITTED'").fetchone()[
                0
            ]
        except sqlite3.OperationalError:
            return 0


def status(db: Path) -> list[dict[str, Any]]:
    result = run_resume("status", "--json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def kill_mid_upload(source: Path, url: str, db: Path, *extra: str, chunks: int = 12) -> None:
    """Start an upload, SIGKILL it once ``chunks`` chunks are committed."""
    proc = start_upload(*upload_args(source, url, db, *extra))
    try:
        wait_until(
            lambda: committed(db) >= chunks or proc.poll() is not None, 120, "chunks committed"
        )
        assert proc.poll() is None, f"the upload ended before it could be killed: {proc.stderr}"
    finally:
        stop(proc, signal.SIGKILL)


def assert_resumed_identical(source: Path, url: str, db: Path, files: Path, *extra: str) -> dict:
    """Re-run the same command: it resumes (resumed_from > 0) and the server's file is equal."""
    before = committed(db)
    assert 0 < before < -(-source.stat().st_size // CHUNK)
    code, summary, stderr = upload(source, url, db, *extra)
    assert code == 0, stderr
    [item] = summary["files"]
    assert item["state"] == "completed"
    assert item["resumed_from"] >= before * CHUNK  # the server's offset, at least what we committed
    assert summary["bytes_sent"] <= source.stat().st_size - before * CHUNK
    [record] = status(db)
    assert record["state"] == "completed" and record["upload_url"].startswith(url)
    assert read_upload(files, record["upload_url"]) == source.read_bytes()
    return summary


# -- real third-party servers ----------------------------------------------------------------


def test_a_finished_tus_upload_is_confirmed_by_the_server_or_sent_again(
    tuspy: ListeningProcess, tmp_path: Path
) -> None:
    """A re-run asks the server (HEAD): the whole length there is 'already on the server',
    nothing sent; deleted there, it is sent again. tus has no whole-file checksum, so nothing
    claims 'verified' (and a small file sent in the creating POST is not 'resuming')."""
    source = make_file(tmp_path / "data.bin", 300_000)
    db = tmp_path / "c.db"
    code, output = run_in_pty("upload", str(source), tuspy.url, "--db", str(db))
    assert code == 0, output
    assert "uploaded data.bin" in output and "resuming" not in output
    assert "0 sent and verified, 1 sent without a whole-file check;" in output

    again = run_resume("upload", str(source), tuspy.url, "--db", str(db), "--json")
    assert again.returncode == 0, again.stderr
    [item] = json.loads(again.stdout)["files"]
    assert (item["state"], item["bytes_sent"], item["checksum"]) == ("verified", 0, None)
    assert "data.bin: already on the server (length confirmed)" in again.stderr

    for stored in (tmp_path / "tuspy").iterdir():
        stored.unlink()
    code, summary, stderr = upload(source, tuspy.url, db)
    assert code == 0, stderr
    [item] = summary["files"]
    assert (item["state"], item["bytes_sent"]) == ("completed", 300_000)
    assert "the server no longer has the upload" in stderr
    [record] = status(db)
    assert record["state"] == "completed"
    assert read_upload(tmp_path / "tuspy", record["upload_url"]) == source.read_bytes()


def test_tuspyserver_upload_survives_a_client_sigkill(
    tuspy: ListeningProcess, tmp_path: Path
) -> None:
    """Killed with SIGKILL mid-upload, the same command resumes from tuspyserver's offset."""
    source = make_file(tmp_path / "big.bin", BIG)
    db = tmp_path / "client.db"
    kill_mid_upload(source, tuspy.url, db)
    [record] = status(db)
    assert record["state"] == "interrupted" and record["upload_url"].startswith(tuspy.url)
    table = run_resume("status", "--db", str(db)).stdout
    assert f"upload: {record['upload_url']}" in table
    assert_resumed_identical(source, tuspy.url, db, tmp_path / "tuspy")


def test_tus_node_server_upload_survives_a_client_sigkill(
    tus_node: ListeningProcess, tmp_path: Path
) -> None:
    """The same against @tus/server with @tus/file-store, under node."""
    source = make_file(tmp_path / "big.bin", BIG)
    db = tmp_path / "client.db"
    kill_mid_upload(source, tus_node.url, db)
    assert_resumed_identical(source, tus_node.url, db, tmp_path / "tusnode")


def test_directory_small_and_empty_files_to_tus_node_server(
    tus_node: ListeningProcess, tmp_path: Path
) -> None:
    """A directory goes with relativePath metadata; an empty file is created complete; a second
    run skips them all."""
    folder = tmp_path / "photos"
    small = make_file(folder / "2024" / "a.jpg", 5000)
    empty = folder / "empty.txt"
    empty.write_bytes(b"")
    db = tmp_path / "client.db"
    code, summary, stderr = upload(folder, tus_node.url, db)
    assert code == 0, stderr
    assert {f["name"]: f["state"] for f in summary["files"]} == {
        "photos/2024/a.jpg": "completed",
        "photos/empty.txt": "completed",
    }
    records = {r["name"]: r for r in status(db)}
    files = tmp_path / "tusnode"
    small_url = records["photos/2024/a.jpg"]["upload_url"]
    assert read_upload(files, small_url) == small.read_bytes()
    assert read_upload(files, records["photos/empty.txt"]["upload_url"]) == b""
    info = json.loads((files / (small_url.rsplit("/", 1)[-1] + ".json")).read_text())
    assert info["metadata"]["filename"] == "a.jpg"
    assert info["metadata"]["relativePath"] == "photos/2024/a.jpg"
    assert info["size"] == 5000
    code, summary, _ = upload(folder, tus_node.url, db)
    assert code == 0 and summary["bytes_sent"] == 0
    assert {f["state"] for f in summary["files"]} == {"verified"}  # confirmed by HEAD


def test_parallel_upload_concatenates_on_tuspyserver(
    tuspy: ListeningProcess, tmp_path: Path
) -> None:
    """--parallel 3: three partial uploads, killed and resumed, joined by a final upload."""
    source = make_file(tmp_path / "big.bin", BIG)
    db = tmp_path / "client.db"
    kill_mid_upload(source, tuspy.url, db, "--parallel", "3")
    with sqlite3.connect(db) as conn:
        parts = conn.execute("SELECT part, url FROM tus_parts ORDER BY part").fetchall()
    assert [p for p, _ in parts] == [0, 1, 2] and all(url for _, url in parts)
    summary = assert_resumed_identical(source, tuspy.url, db, tmp_path / "tuspy", "--parallel", "3")
    [record] = status(db)
    assert record["upload_url"] not in {url for _, url in parts}  # the final, joined upload
    assert summary["files"][0]["resumed_from"] > 0
    final = json.loads(
        (tmp_path / "tuspy" / (record["upload_url"].rsplit("/", 1)[-1] + ".info")).read_text()
    )
    assert final["is_final"] and len(final["partial_uploads"]) == 3


def test_parallel_falls_back_to_one_upload_without_concatenation(
    tus_node: ListeningProcess, tmp_path: Path
) -> None:
    """@tus/server offers no concatenation: --parallel says so and sends one upload."""
    source = make_file(tmp_path / "data.bin", 3 * 2**20)
    db = tmp_path / "client.db"
    code, _, stderr = upload(source, tus_node.url, db, "--parallel", "4")
    assert code == 0, stderr
    assert "does not offer tus concatenation" in stderr
    [record] = status(db)
    assert read_upload(tmp_path / "tusnode", record["upload_url"]) == source.read_bytes()


def test_a_changed_source_is_refused_on_resume(tuspy: ListeningProcess, tmp_path: Path) -> None:
    """A file edited between the kill and the re-run is never mixed: exit 1, one line."""
    source = make_file(tmp_path / "big.bin", BIG)
    db = tmp_path / "client.db"
    kill_mid_upload(source, tuspy.url, db)
    with source.open("ab") as f:
        f.write(b"more")
    code, _, stderr = upload(source, tuspy.url, db)
    assert code == 1
    assert "changed since its transfer" in stderr and "--restart" in stderr
    assert "Traceback" not in stderr


# -- the hostile server: one branch per status ------------------------------------------------


def requests(server: ListeningProcess) -> list[tuple[str, int]]:
    """(method, status) of every request the hostile server answered."""
    log = httpx.get(server.url.replace("/files/", "/_log"), timeout=10).json()
    return [(method, status) for method, _, status, _ in log]


def patch_checksums(server: ListeningProcess) -> set[str | None]:
    """The Upload-Checksum algorithms of every PATCH the hostile server saw."""
    log = httpx.get(server.url.replace("/files/", "/_log"), timeout=10).json()
    return {algorithm for method, _, _, algorithm in log if method == "PATCH"}


def hostile_upload_is_identical(
    server: ListeningProcess, tmp_path: Path, db: Path, source: Path
) -> None:
    [record] = status(db)
    data_dir = Path(server.cmd[2])
    assert read_upload(data_dir, record["upload_url"]) == source.read_bytes()


def test_patches_grow_on_a_long_link(hostile, tmp_path: Path) -> None:
    """Each answer takes 100 ms: PATCHes grow past four 1 MiB chunks so that waiting for
    answers costs a smaller part of the time (24 chunks at 4 per PATCH would be 6 PATCHes).
    In-process, with no byte floor on the PATCH size (`patch_bytes=0`): by default a PATCH
    of 1 MiB chunks already carries the most (16) and there would be nothing left to grow."""
    source = tmp_path / "long.bin"
    source.write_bytes(os.urandom(24 * 2**20))
    server = hostile({"rtt": 0.1})
    db = tmp_path / "state.db"

    async def send() -> list[FileResult]:
        with open_store(db) as store:
            uploader = TusUploader(
                store, server.url, UploadOptions(chunk_size=2**20), TusOptions(patch_bytes=0)
            )
            return await uploader.run(collect_jobs([source]))

    [result] = asyncio.run(send())
    assert result.state == "completed", result.error
    hostile_upload_is_identical(server, tmp_path, db, source)
    assert sum(1 for method, _ in requests(server) if method == "PATCH") <= 3  # 4, then grown


def test_a_small_file_travels_in_the_creating_post(hostile, tmp_path: Path) -> None:
    """creation-with-upload: a file of one chunk needs one POST and no PATCH."""
    server = hostile({})
    source = make_file(tmp_path / "small.bin", 5000)
    db = tmp_path / "client.db"
    code, summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    assert requests(server) == [("OPTIONS", 204), ("POST", 201)]
    assert summary["bytes_sent"] == 5000
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_409_asks_for_the_offset_and_continues(hostile, tmp_path: Path) -> None:
    """409: HEAD, then continue from the server's offset; nothing is sent twice (6 chunks go
    in two PATCHes of four, or in one when the HEADs' round trip grew the PATCH size)."""
    server = hostile({"conflict": 2})
    source = make_file(tmp_path / "data.bin", 5 * CHUNK + 17)
    db = tmp_path / "client.db"
    code, _summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    seen = requests(server)
    assert seen[:6] == [
        ("OPTIONS", 204),
        ("POST", 201),
        ("PATCH", 409),
        ("HEAD", 200),
        ("PATCH", 409),
        ("HEAD", 200),
    ]
    assert 1 <= seen.count(("PATCH", 204)) <= 2
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_460_resends_the_chunk_and_every_patch_carries_a_checksum(hostile, tmp_path: Path) -> None:
    """With checksums offered, every PATCH has Upload-Checksum; a 460 resends that PATCH's
    chunks (here all four, in one request)."""
    server = hostile({"checksums": ["md5", "sha1", "sha256"], "corrupt": 2})
    source = make_file(tmp_path / "data.bin", 4 * CHUNK)
    db = tmp_path / "client.db"
    code, summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    seen = requests(server)
    assert seen.count(("PATCH", 460)) == 2 and seen.count(("PATCH", 204)) == 1
    assert patch_checksums(server) == {"sha1"}  # preferred among md5, sha1, sha256
    assert summary["bytes_sent"] == 12 * CHUNK  # the request went three times
    assert "failed its checksum on the server" in stderr
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_xxh3_is_used_when_the_server_lists_it(hostile, tmp_path: Path) -> None:
    """A server that lists xxh3 gets xxh3 (it verifies it; a wrong digest would be a 460)."""
    server = hostile({"checksums": ["sha256", "xxh3"]})
    source = make_file(tmp_path / "data.bin", 3 * CHUNK)
    db = tmp_path / "client.db"
    code, _, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    assert requests(server).count(("PATCH", 204)) == 1  # three chunks, one request
    assert patch_checksums(server) == {"xxh3"}
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_460_every_time_is_fatal_after_a_few_resends(hostile, tmp_path: Path) -> None:
    """A chunk failing its checksum again and again stops the run: exit 1, one line."""
    server = hostile({"checksums": ["sha1"], "corrupt": 100})
    source = make_file(tmp_path / "data.bin", 2 * CHUNK)
    db = tmp_path / "client.db"
    code, summary, stderr = upload(source, server.url, db)
    assert code == 1 and not summary["ok"]
    assert "failed its checksum on the server 4 times" in summary["error"]
    assert requests(server).count(("PATCH", 460)) == 4
    assert "Traceback" not in stderr
    assert status(db)[0]["state"] == "failed"


def test_a_partial_take_continues_mid_chunk(hostile, tmp_path: Path) -> None:
    """A server that takes half of each PATCH: the client continues from its offset, inside
    the chunk, and commits a chunk only when the offset covers all of it."""
    server = hostile({"half": True})
    source = make_file(tmp_path / "data.bin", 3 * CHUNK + 1000)
    db = tmp_path / "client.db"
    code, _summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    hostile_upload_is_identical(server, tmp_path, db, source)
    [record] = status(db)
    assert record["chunks"] == {"committed": 4, "prepared": 0, "total": 4}


def test_503_is_retried_with_backoff(hostile, tmp_path: Path) -> None:
    """503s are retried (after a HEAD for the offset) and the upload completes."""
    server = hostile({"busy": 3, "locked": 1})
    source = make_file(tmp_path / "data.bin", 3 * CHUNK)
    db = tmp_path / "client.db"
    code, _summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    seen = requests(server)
    assert seen.count(("PATCH", 503)) == 3 and ("HEAD", 423) in seen
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_410_mid_upload_says_so_and_starts_a_new_upload(hostile, tmp_path: Path) -> None:
    """The upload expired (410) half-way: a warning, a new upload, an identical file."""
    server = hostile({"gone_after": 2})
    # At least three PATCHes however the round trip grows them: 16 chunks, then at most 64.
    source = make_file(tmp_path / "data.bin", 160 * CHUNK)
    db = tmp_path / "client.db"
    code, _summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    assert "no longer has" in stderr and "starting a new upload" in stderr
    assert requests(server).count(("POST", 201)) == 2
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_a_stored_url_the_server_forgot_starts_a_new_upload(hostile, tmp_path: Path) -> None:
    """Client SIGKILLed, server restarted with no memory of the upload (404 on HEAD): the
    re-run says so and uploads the file again, from zero."""
    server = hostile({"patch_delay": 0.05})
    source = make_file(tmp_path / "data.bin", 40 * CHUNK)
    db = tmp_path / "client.db"
    kill_mid_upload(source, server.url, db, chunks=3)
    old_url = status(db)[0]["upload_url"]
    port = server.port
    server.kill()
    again = hostile({}, port=port)
    code, summary, stderr = upload(source, again.url, db)
    assert code == 0, stderr
    assert "no longer has" in stderr and "starting a new upload" in stderr
    assert summary["files"][0]["resumed_from"] == 0
    assert requests(again)[:3] == [("OPTIONS", 204), ("HEAD", 404), ("POST", 201)]
    assert status(db)[0]["upload_url"] != old_url
    hostile_upload_is_identical(again, tmp_path, db, source)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"status": {"POST": 401}}, "not allowed: HTTP 401"),
        ({"status": {"PATCH": 403}}, "not allowed: HTTP 403"),
        ({"status": {"POST": 413}}, "refuses a file this large (HTTP 413)"),
        ({"max_size": 1000}, "more than the server accepts (Tus-Max-Size 1000)"),
        ({"status": {"OPTIONS": 404}}, "no tus endpoint there (HTTP 404)"),
    ],
)
def test_fatal_statuses_stop_at_once_with_one_line(
    hostile, tmp_path: Path, faults: dict, message: str
) -> None:
    """401/403/413 (and a file over Tus-Max-Size): exit 1 at once, one clear line, no retry."""
    server = hostile(faults)
    source = make_file(tmp_path / "data.bin", 2 * CHUNK)
    db = tmp_path / "client.db"
    result = run_resume("upload", *upload_args(source, server.url, db, give_up="2s"), timeout=60)
    assert result.returncode == 1
    assert message in json.loads(result.stdout)["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("resume: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    methods = [m for m, _ in requests(server)]
    assert methods.count(methods[-1]) == 1  # the refused request was not repeated


def test_unreachable_server_gives_up_after_the_limit(tmp_path: Path) -> None:
    """Connection refused is retried with backoff until --give-up-after, then exit 1."""
    source = make_file(tmp_path / "data.bin", 1000)
    db = tmp_path / "client.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/files/"
    result = run_resume("upload", *upload_args(source, url, db, give_up="1s"))
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr


def test_cancel_deletes_the_upload_on_the_server(hostile, tmp_path: Path) -> None:
    """`resume cancel` of a tus transfer sends DELETE (termination) to its upload."""
    server = hostile({"patch_delay": 0.05})
    source = make_file(tmp_path / "data.bin", 40 * CHUNK)
    db = tmp_path / "client.db"
    kill_mid_upload(source, server.url, db, chunks=2)
    [record] = status(db)
    result = run_resume("cancel", record["file_id"][:8], "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert ("DELETE", 204) in requests(server)
    assert httpx.head(record["upload_url"], headers={"Tus-Resumable": "1.0.0"}).status_code == 404
    assert status(db)[0]["state"] == "cancelled"


def test_ctrl_c_saves_state_and_restart_deletes_the_old_upload(hostile, tmp_path: Path) -> None:
    """SIGINT: the PATCH in flight finishes, exit 130, resumable; --restart then DELETEs the
    old upload and sends the file again from zero."""
    server = hostile({"patch_delay": 0.05})
    source = make_file(tmp_path / "data.bin", 80 * CHUNK)  # 5 PATCHes: time to interrupt
    db = tmp_path / "client.db"
    proc = start_upload(*upload_args(source, server.url, db))
    wait_until(lambda: committed(db) >= 3 or proc.poll() is not None, 60, "chunks committed")
    code, out, err = stop(proc, signal.SIGINT)
    assert code == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] and "resume with the same command" in summary["error"]
    [record] = status(db)
    assert record["state"] == "pending" and record["chunks"]["prepared"] == 0
    old_url = record["upload_url"]
    code, summary, stderr = upload(source, server.url, db, "--restart")
    assert code == 0, stderr
    assert summary["files"][0]["resumed_from"] == 0
    seen = requests(server)
    assert ("DELETE", 204) in seen
    assert seen.index(("DELETE", 204)) < len(seen) - seen[::-1].index(("POST", 201))
    records = {r["state"]: r for r in status(db)}
    assert records["cancelled"]["upload_url"] == old_url
    assert (
        read_upload(Path(server.cmd[2]), records["completed"]["upload_url"]) == source.read_bytes()
    )


def test_a_server_that_lost_acknowledged_bytes_gets_them_again(hostile, tmp_path: Path) -> None:
    """The server's offset went back below what it acknowledged (no fsync, power cut): the
    run says so, sends from the server's offset, and the file is identical."""
    server = hostile({"patch_delay": 0.05})
    source = make_file(tmp_path / "data.bin", 40 * CHUNK)
    db = tmp_path / "client.db"
    kill_mid_upload(source, server.url, db, chunks=6)
    url = status(db)[0]["upload_url"]
    upload_id = url.rsplit("/", 1)[-1]
    httpx.post(server.url.replace("/files/", f"/_rewind/{upload_id}/{CHUNK + 100}"), timeout=10)
    code, summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    assert "holds less than it acknowledged" in stderr
    assert summary["files"][0]["resumed_from"] == CHUNK + 100
    assert summary["bytes_sent"] == 40 * CHUNK - (CHUNK + 100)
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_chunks_the_ledger_lost_are_adopted_from_the_server_offset(hostile, tmp_path: Path) -> None:
    """The client's records were lost (power cut on the client): the chunks below the server's
    offset are adopted with their local checksums, not sent again."""
    server = hostile({"patch_delay": 0.05})
    source = make_file(tmp_path / "data.bin", 40 * CHUNK)
    db = tmp_path / "client.db"
    kill_mid_upload(source, server.url, db, chunks=6)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM chunks")
    code, summary, stderr = upload(source, server.url, db)
    assert code == 0, stderr
    resumed = summary["files"][0]["resumed_from"]
    assert resumed >= 6 * CHUNK and summary["bytes_sent"] == 40 * CHUNK - resumed
    assert status(db)[0]["chunks"] == {"committed": 40, "prepared": 0, "total": 40}
    hostile_upload_is_identical(server, tmp_path, db, source)


def test_parallel_parts_survive_409_and_503_then_join(hostile, tmp_path: Path) -> None:
    """--parallel 3 with a 409 and a 503 on the way: every part resyncs, the final upload
    joins them in order, and the joined file is identical."""
    server = hostile({"conflict": 1, "busy": 1, "checksums": ["sha256"]})
    source = make_file(tmp_path / "data.bin", 9 * CHUNK + 5)
    db = tmp_path / "client.db"
    code, _, stderr = upload(source, server.url, db, "--parallel", "3")
    assert code == 0, stderr
    seen = requests(server)
    assert seen.count(("POST", 201)) == 4  # three partial uploads and the final one
    assert ("PATCH", 409) in seen and ("PATCH", 503) in seen
    assert patch_checksums(server) == {"sha256"}
    hostile_upload_is_identical(server, tmp_path, db, source)
