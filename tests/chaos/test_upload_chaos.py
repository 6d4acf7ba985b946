"""A 200+ MiB upload through cuts, stalls, a flipped byte, client and server SIGKILLs.

Real processes on 127.0.0.1: `resume serve` behind a fault-injecting proxy, `resume upload`
started and killed several times. The file must arrive byte-identical, and after each client
kill the bytes sent twice must stay within one window of chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos.proxy import ThreadedProxy
from tests.processes import ServeProcess, run_resume, start_upload, stop, wait_until

SIZE = 208 * 2**20 + 12_345  # over 200 MiB, and not a whole number of chunks
CHUNK = 256 * 1024
WINDOW = 4
TOTAL_CHUNKS = -(-SIZE // CHUNK)


def held(server_db: Path) -> set[int]:
    """Chunk indexes the server has durably recorded (read-only, while it runs)."""
    if not server_db.exists():
        return set()
    with sqlite3.connect(f"file:{server_db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return {row[0] for row in conn.execute("SELECT chunk_index FROM received_chunks")}
        except sqlite3.OperationalError:  # tables not created yet
            return set()


def client_chunks(client_db: Path) -> dict[int, str]:
    """Chunk index -> PREPARED/COMMITTED in the client's ledger."""
    if not client_db.exists():
        return {}
    with sqlite3.connect(f"file:{client_db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return dict(conn.execute("SELECT chunk_index, state FROM chunks"))
        except sqlite3.OperationalError:
            return {}


@pytest.mark.slow
def test_upload_survives_kills_cuts_stalls_and_corruption(tmp_path: Path) -> None:
    """Three client kills, one server kill, cuts, stalls, a flipped byte: identical file."""
    rng = random.Random(20261122)
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(SIZE // 2**20):
            f.write(os.urandom(2**20))
        f.write(os.urandom(SIZE % 2**20))
    client_db = tmp_path / "client.db"
    server_db = tmp_path / "srv" / ".resume" / "server.db"
    server = ServeProcess(tmp_path / "srv")
    server.start()
    try:
        with ThreadedProxy(server.port, seed=rng.randrange(2**32)) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}"
            args = [
                str(source), url, "--db", str(client_db), "--json", "--no-progress",
                "--chunk-size", str(CHUNK), "--window", str(WINDOW), "--max-retry-delay", "0.3",
                "--via", "ws",  # the WebSocket path: its window bounds what a kill re-sends
            ]  # fmt: skip
            resent_per_kill: list[int] = []

            # 1. Kill the client three times at random points; measure what each kill costs.
            for kill in range(3):
                target = len(held(server_db)) + rng.randint(20, 60)
                proc = start_upload(*args)
                wait_until(lambda t=target: len(held(server_db)) >= t, 60, f"kill {kill} point")
                stop(proc)  # SIGKILL
                time.sleep(0.3)  # let the server finish making durable what it received
                on_server = held(server_db)
                ledger = client_chunks(client_db)
                prepared = {i for i, state in ledger.items() if state == "PREPARED"}
                # Chunks that left the client but are not on the server go again: the waste.
                resent_per_kill.append(len(prepared - on_server) * CHUNK)
                committed = {i for i, state in ledger.items() if state == "COMMITTED"}
                assert committed <= on_server, "committed here must mean held there"
                assert len(prepared) <= WINDOW

            # 2. A run during which the server is SIGKILLed once and restarted on its port,
            #    then the link is cut and stalled at random and one byte is flipped.
            before = held(server_db)
            proc = start_upload(*args)
            wait_until(lambda: len(held(server_db)) >= len(before) + 40, 60, "server kill point")
            server.kill()
            time.sleep(0.5)
            assert held(server_db) >= before  # everything it acked survived SIGKILL
            server.start()  # same port: the proxy needs no change
            wait_until(
                lambda: len(held(server_db)) >= len(before) + 80, 60, "progress after restart"
            )
            proxy.corrupt_once(after_bytes=3 * CHUNK + 1000, direction="up")
            wait_until(lambda: "failed its checksum" in server.log, 30, "the flipped byte's nack")
            proxy.delay = 0.002  # slow the link a little so the chaos overlaps the transfer
            proxy.start_chaos(duration=6.0, seed=rng.randrange(2**32), cut_every=(0.3, 1.0))
            try:
                code, out, err = stop_when_done(proc, timeout=240)
            finally:
                proxy.stop_chaos()
                proxy.delay = 0.0
            if code != 0:  # a cut can land on a fatal moment: the same command resumes
                result = run_resume("upload", *args, timeout=240)
                code, out, err = result.returncode, result.stdout, result.stderr
            assert code == 0, err
            summary = json.loads(out)
            # "verified": a cut took the server's `done`, and the next begin (a reconnect, or
            # the re-run) found the file published and confirmed it instead of sending it.
            assert summary["ok"] and summary["files"][0]["state"] in ("completed", "verified")
            stats = proxy.stats
    finally:
        server.terminate()
    received = tmp_path / "srv" / "big.bin"
    assert received.stat().st_size == SIZE
    assert file_digest(received) == file_digest(source)
    assert not any((tmp_path / "srv" / ".resume" / "partial").iterdir())
    assert stats.corrupted == 1 and stats.cuts >= 1
    for waste in resent_per_kill:
        assert waste <= WINDOW * CHUNK, resent_per_kill
    print(
        f"\nre-sent after each client kill: {[w // 1024 for w in resent_per_kill]} KiB "
        f"(bound {WINDOW * CHUNK // 1024} KiB); proxy: {stats.connections} connections, "
        f"{stats.cuts} cuts, {stats.bytes_up / 2**20:.0f} MiB up for a {SIZE / 2**20:.0f} MiB file"
    )


def stop_when_done(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Wait for a child to finish by itself."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()
