"""A 150 MiB upload over HTTP (tus PATCH) through client and server SIGKILLs, a flipped byte,
cuts and stalls.

Real processes on 127.0.0.1: `resume serve` behind a fault-injecting proxy, `resume upload
--via http` to its ws:// URL (so the bytes go as tus PATCH requests to the same server's
/files/) started and killed several times. It proves, on the HTTP path:

- a chunk the client's ledger calls COMMITTED is durably held by the server (its recorded
  offset covers it), after every client SIGKILL and after a server SIGKILL;
- a client SIGKILL costs at most the one PATCH that was in flight (measured on the wire: what
  went through the proxy minus what the server kept), and leaves at most two PATCHes' worth of
  chunks PREPARED but not held (the one in flight and the next one, read ahead);
- a server SIGKILL loses nothing it acknowledged, and its offset never goes backwards;
- a PATCH body with one flipped byte is refused (Upload-Checksum, 460) and sent again;
- the file arrives byte-identical, with nothing left under .resume/partial.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from resume.transfer.tus_client import TusOptions
from tests.chaos.proxy import ThreadedProxy
from tests.processes import ServeProcess, run_resume, start_upload, stop, wait_until

SIZE = 150 * 2**20 + 54_321  # over 150 MiB, and not a whole number of chunks
CHUNK = 256 * 1024
TOTAL_CHUNKS = -(-SIZE // CHUNK)
MIB = 2**20
# One PATCH carries at most this many chunks; the next PATCH's chunks are read (and made
# PREPARED) while it is on its way, so at most two PATCHes' worth are PREPARED at a time.
MAX_PER_PATCH = TusOptions().max_chunks_per_patch
MIN_PER_PATCH = TusOptions().chunks_per_patch
HEADERS = 2048  # generous bytes of request line and headers per HTTP request
SERVER_NACK = "failed its checksum"  # the server's log line for a refused PATCH body
CLIENT_NACK = "failed its checksum on the server; sending it again"
SHRANK = "holds less than it acknowledged"  # the client found acked bytes gone


def durable_offset(server_db: Path) -> int:
    """The bytes the server recorded as durable for the (one) upload over HTTP: the
    ``received_files.offset`` of the row with an ``http_uploads`` row (read-only, while it
    runs). The whole size once published."""
    if not server_db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{server_db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            rows = conn.execute(
                "SELECT f.offset, f.state, f.size FROM received_files f "
                "JOIN http_uploads h ON h.file_id = f.file_id"
            ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return 0
    assert len(rows) <= 1, rows  # one file, one upload: a second would mean it started over
    if not rows:
        return 0
    offset, state, size = rows[0]
    return int(size if state == "completed" else offset)


def reached(server_db: Path, target: int) -> Callable[[], bool]:
    """Whether the server's durable offset reached ``target`` (for ``wait_until``)."""
    return lambda: durable_offset(server_db) >= target


def covered(offset: int) -> set[int]:
    """The client's chunks that lie wholly below the server's durable offset."""
    return {i for i in range(TOTAL_CHUNKS) if min((i + 1) * CHUNK, SIZE) <= offset}


def client_chunks(client_db: Path) -> dict[int, str]:
    """Chunk index -> PREPARED/COMMITTED in the client's ledger."""
    if not client_db.exists():
        return {}
    with closing(sqlite3.connect(f"file:{client_db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            return dict(conn.execute("SELECT chunk_index, state FROM chunks"))
        except sqlite3.OperationalError:
            return {}


def upload_path(client_db: Path) -> str:
    """The path of the upload URL the client stored (``/files/<id>``)."""
    with closing(sqlite3.connect(f"file:{client_db}?mode=ro", uri=True, timeout=10)) as conn:
        (url,) = conn.execute("SELECT upload_url FROM transfers").fetchone()
    return str(urlsplit(url).path)


def head_offset(port: int, path: str) -> int:
    """``Upload-Offset`` of a tus HEAD straight to the server (not through the proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})
        response = conn.getresponse()
        assert response.status == 200, response.status
        return int(response.headers["Upload-Offset"])
    finally:
        conn.close()


def settled(server_db: Path, quiet: float = 0.5, timeout: float = 10) -> int:
    """The durable offset once it stopped moving for ``quiet`` seconds (a request cut by the
    kill finishes what it makes durable first)."""
    last, since = durable_offset(server_db), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = durable_offset(server_db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


@pytest.mark.slow
def test_http_upload_survives_kills_cuts_stalls_and_corruption(tmp_path: Path) -> None:
    """Three client kills, one server kill, a flipped byte, cuts and stalls over HTTP."""
    rng = random.Random(20261123)
    source = tmp_path / "big.bin"
    root = tmp_path / "srv"
    received = root / "big.bin"
    try:
        with source.open("wb") as f:
            for _ in range(SIZE // MIB):
                f.write(os.urandom(MIB))
            f.write(os.urandom(SIZE % MIB))
        run_chaos(tmp_path, source, root, rng)
    finally:  # 300 MiB: not left for pytest's kept temporary directories
        source.unlink(missing_ok=True)
        received.unlink(missing_ok=True)


def run_chaos(tmp_path: Path, source: Path, root: Path, rng: random.Random) -> None:
    client_db = tmp_path / "client.db"
    server_db = root / ".resume" / "server.db"
    server = ServeProcess(root)
    procs: list[subprocess.Popen[str]] = []
    errors: list[str] = []  # the clients' stderr, every run
    args: list[str] = []

    def upload() -> subprocess.Popen[str]:
        proc = start_upload(*args)
        procs.append(proc)
        return proc

    server.start()
    try:
        with ThreadedProxy(server.port, seed=rng.randrange(2**32)) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}"
            args = [
                str(source), url, "--db", str(client_db), "--json", "--no-progress",
                "--chunk-size", str(CHUNK), "--max-retry-delay", "0.3",
                "--via", "http",  # tus PATCHes to the server's /files/, through the proxy
            ]  # fmt: skip
            print()

            # 1. Kill the client three times at random points; measure what each kill costs.
            for kill in range(3):
                before = settled(server_db)
                up_before = proxy.stats.bytes_up
                target = before + rng.randint(6 * MIB, 16 * MIB)
                proc = upload()
                wait_until(reached(server_db, target), 60, f"kill {kill} point")
                time.sleep(rng.uniform(0, 0.05))  # anywhere in a PATCH's life
                errors.append(stop(proc)[2])  # SIGKILL
                after = settled(server_db)
                ledger = client_chunks(client_db)
                on_server = covered(after)
                committed = {i for i, state in ledger.items() if state == "COMMITTED"}
                prepared = {i for i, state in ledger.items() if state == "PREPARED"}
                # PREPARED but not held: the PATCH in flight and the one read ahead.
                not_held = prepared - on_server
                # On the wire: what went up minus what the server kept. Only the PATCH in
                # flight is lost (a body that does not match its checksum counts for nothing),
                # plus the request lines and headers of every request of the run.
                sent = proxy.stats.bytes_up - up_before
                wasted = sent - (after - before)
                requests = (after - before) // (MIN_PER_PATCH * CHUNK) + 8
                print(
                    f"client kill {kill}: server at {after / MIB:.1f} MiB "
                    f"(+{(after - before) / MIB:.1f}), PREPARED-not-held "
                    f"{len(not_held) * CHUNK // 1024} KiB (bound {2 * MAX_PER_PATCH * CHUNK // 1024}"
                    f"), wasted on the wire {wasted // 1024} KiB (one PATCH: "
                    f"{MAX_PER_PATCH * CHUNK // 1024} KiB + {requests * HEADERS // 1024} KiB of "
                    "headers)"
                )
                missing = sorted(committed - on_server)
                assert not missing, f"kill {kill}: committed but not held: {missing[:10]}"
                assert len(not_held) <= 2 * MAX_PER_PATCH, sorted(not_held)
                assert wasted <= MAX_PER_PATCH * CHUNK + requests * HEADERS, (kill, wasted)

            # 2. The server is SIGKILLed mid-upload and restarted on its port.
            resumed_at = settled(server_db)
            proc = upload()
            target = resumed_at + rng.randint(6 * MIB, 12 * MIB)
            wait_until(reached(server_db, target), 60, "server kill point")
            time.sleep(rng.uniform(0, 0.05))
            seen = durable_offset(server_db)
            server.kill()
            time.sleep(0.5)  # answers already on their way reach the client
            proxy.refuse(True)  # the client keeps retrying, and gets nowhere for now
            survived = durable_offset(server_db)
            ledger = client_chunks(client_db)
            acked = {i for i, state in ledger.items() if state == "COMMITTED"}
            print(
                f"server kill: {seen / MIB:.1f} MiB durable before, {survived / MIB:.1f} MiB "
                f"after, the client had {len(acked) * CHUNK / MIB:.1f} MiB acknowledged"
            )
            assert survived >= seen, "the durable offset went backwards with the SIGKILL"
            assert acked and acked <= covered(survived), "an acknowledged chunk did not survive"
            server.start()  # same port: the proxy needs no change
            # The restarted server's own answer, before the client reaches it again.
            answered = head_offset(server.port, upload_path(client_db))
            assert answered == survived, f"HEAD after the restart: {answered}, not {survived}"
            proxy.refuse(False)
            lowest = survived

            def progressed() -> bool:
                nonlocal lowest
                now = durable_offset(server_db)
                lowest = min(lowest, now)
                return now >= survived + 8 * MIB

            wait_until(progressed, 60, "progress after the restart")
            assert lowest >= survived, f"the restarted server went back to {lowest}"

            # 3. One byte of a PATCH body flipped: refused by its checksum, sent again. Then
            #    random cuts and stalls until the end.
            proxy.corrupt_once(after_bytes=3 * CHUNK + 1000, direction="up")
            wait_until(lambda: SERVER_NACK in server.log, 30, "the flipped PATCH refused")
            at_chaos = durable_offset(server_db)
            chaos_started = time.monotonic()
            proxy.delay = 0.005  # slow the link so the chaos overlaps the rest (seconds of it)
            proxy.start_chaos(duration=8.0, seed=rng.randrange(2**32), cut_every=(0.2, 0.8))
            try:
                out, err = proc.communicate(timeout=120)
                code = proc.returncode
            finally:
                proxy.stop_chaos()
                proxy.delay = 0.0
            chaos_took = time.monotonic() - chaos_started
            errors.append(err)
            reruns = 0
            if code != 0:  # a cut can land on a fatal moment: the same command resumes
                reruns = 1
                result = run_resume("upload", *args, timeout=120)
                code, out, err = result.returncode, result.stdout, result.stderr
                errors.append(err)
            stats = proxy.stats
            print(
                f"chaos on the last {(SIZE - at_chaos) / MIB:.0f} MiB for {chaos_took:.1f} s, "
                f"re-runs {reruns}; proxy: {stats.connections} connections, {stats.cuts} cuts, "
                f"{stats.corrupted} byte flipped, {stats.bytes_up / MIB:.0f} MiB up for a "
                f"{SIZE / MIB:.0f} MiB file"
            )
            assert code == 0, err
            summary = json.loads(out)
        server_log = server.log
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        server.terminate()
    assert summary["ok"], summary
    (result_file,) = summary["files"]
    print(f"summary of the last run: {result_file}")
    assert result_file["via"] == "http", result_file
    assert result_file["state"] in ("completed", "verified"), result_file
    if not reruns:  # the run of step 2 began where the server's offset stood (its HEAD)
        assert result_file["resumed_from"] == resumed_at, (result_file, resumed_at)
    received = root / "big.bin"
    assert received.stat().st_size == SIZE
    assert file_digest(received) == file_digest(source)
    assert not any((root / ".resume" / "partial").iterdir())
    assert durable_offset(server_db) == SIZE
    # The flipped byte: the proxy flipped one, the server refused exactly one PATCH body, the
    # client sent exactly one again; nothing else failed a checksum.
    assert stats.corrupted == 1, stats
    assert server_log.count(SERVER_NACK) == 1, server_log[-3000:]
    all_errors = "".join(errors)
    assert all_errors.count(CLIENT_NACK) == 1, all_errors[-3000:]
    assert SHRANK not in all_errors, all_errors[-3000:]
    assert stats.cuts >= 1, stats


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()
