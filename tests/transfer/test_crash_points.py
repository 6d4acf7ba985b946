"""A real server killed at every named step; the same command then completes, no --restart.

`RESUME_CRASH_AT=STEP[:N]` makes `resume serve` end with ``os._exit`` at that step (the N-th
time), leaving exactly what a SIGKILL or a power cut of the process would. The client is
SIGKILLed too, the server restarted without the hook, and the very same `resume upload`
command is run again: it must exit 0 with a byte-identical file and no partial left.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
import xxhash

from resume.crashpoints import CRASH_EXIT, STEPS
from resume.store import Store
from tests.processes import (
    ServeProcess,
    resume_cmd,
    resume_env,
    run_resume,
    start_upload,
    stop,
    wait_until,
)
from tests.transfer.conftest import make_file, partial_files
from tests.transfer.test_upload import interrupted_upload, upload

SIZE = 3 * 2**20 + 1234
CHUNK = "64KiB"
UPLOAD_STEPS = [step for step in STEPS if not step.startswith("cancel.")]
# Mid-file for the per-chunk steps, so the crash leaves some chunks held and some not. Over
# HTTP a step is passed once per server write (4 MiB buffers) or group commit, and PATCHes
# carry up to 4 MiB of these chunks: a 12 MiB file makes the 2nd time mid-file.
WHEN = {"chunk.written": 9, "chunk.synced": 3, "chunk.recorded": 3}
WHEN_HTTP = {"chunk.written": 2, "chunk.synced": 2, "chunk.recorded": 2}
SIZE_HTTP = 12 * 2**20 + 1234


def server_state(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / ".resume" / "server.db") as conn:
        return list(conn.execute("SELECT name, state FROM received_files"))


@pytest.mark.parametrize("transport", ["ws", "http"])
@pytest.mark.parametrize("step", UPLOAD_STEPS)
def test_a_server_killed_at_each_step_recovers(tmp_path: Path, step: str, transport: str) -> None:
    """Crash at the step, kill the client, restart: the same command finishes the upload, over
    WebSocket (/upload) and over HTTP (tus, /files) alike."""
    size = SIZE if transport == "ws" else SIZE_HTTP
    source = make_file(tmp_path / "data.bin", size, seed=len(step))
    when = (WHEN if transport == "ws" else WHEN_HTTP).get(step, 1)
    server = ServeProcess(tmp_path / "root", env={"RESUME_CRASH_AT": f"{step}:{when}"})
    server.start()
    url = server.url if transport == "ws" else server.url.replace("ws://", "http://") + "/files/"
    command = (str(source), url, "--db", str(tmp_path / "client.db"), "--chunk-size", CHUNK)
    client = start_upload(*command, "--give-up-after", "30s")
    try:
        assert server.proc is not None
        code = server.proc.wait(timeout=60)
        assert code == CRASH_EXIT, f"server exited {code} instead of crashing at {step}"
        server.proc = None
        stop(client)  # SIGKILL: the client dies at whatever point it had reached
        server.env = None
        server.start()  # the same port, without the crash hook
        result = run_resume("upload", *command, "--json", "--give-up-after", "30s", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (server.root / "data.bin").read_bytes() == source.read_bytes()
        # Verified on the server, and said so, even when the answer that said so was lost.
        [item] = json.loads(result.stdout)["files"]
        assert item["checksum"] == xxhash.xxh3_128_hexdigest(source.read_bytes()), item
        assert partial_files(server.root) == []
        assert server_state(server.root) == [("data.bin", "completed")]
        assert "Traceback" not in server.log
    finally:
        if client.poll() is None:
            client.kill()
        server.kill()


def test_a_server_killed_between_cancel_and_unlink_leaves_no_partial(tmp_path: Path) -> None:
    """The cancel is recorded; the orphaned partial goes at the next look, not in 7 days."""
    source = make_file(tmp_path / "data.bin", SIZE)
    server = ServeProcess(tmp_path / "root", env={"RESUME_CRASH_AT": "cancel.recorded"})
    server.start()
    db = str(tmp_path / "client.db")
    client = start_upload(str(source), server.url, "--db", db, "--chunk-size", CHUNK)
    try:
        wait_until(lambda: len(partial_files(server.root)) == 1, 30, "a partial on the server")
        stop(client)
        file_id = _only_transfer(Path(db))
        cancel = run_resume("cancel", file_id, "--db", db, timeout=60)
        assert cancel.returncode != 0  # the server died answering it
        assert server.proc is not None and server.proc.wait(timeout=30) == CRASH_EXIT
        server.proc = None
        server.env = None
        server.start()
        cancel = run_resume("cancel", file_id, "--db", db, timeout=60)
        assert cancel.returncode == 0, cancel.stderr
        assert partial_files(server.root) == []
        assert not (server.root / "data.bin").exists()
    finally:
        if client.poll() is None:
            client.kill()
        server.kill()


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_a_partial_lost_while_chunks_are_listed_is_sent_again(
    tmp_path: Path, client_store: Store, restart: bool
) -> None:
    """A partial that vanished (a power cut, an operator) while the store lists its chunks as
    held is re-derived from the disk, at the next begin or at a restart: the same upload
    sends the file again and completes, no --restart, no whole-file verification failure."""
    source = make_file(tmp_path / "data.bin", SIZE)
    with ServeProcess(tmp_path / "root") as server:
        await interrupted_upload(client_store, server.url, source, after=SIZE // 3)
        assert _held_chunks(server.root) > 0
        [partial] = partial_files(server.root)
        (server.root / ".resume" / "partial" / partial).unlink()
        if restart:
            server.kill()
            server.start()
        [result] = await upload(client_store, server.url, [source])
        assert (result.state, result.error) == ("completed", None)
        assert (server.root / "data.bin").read_bytes() == source.read_bytes()
        assert partial_files(server.root) == []
        assert server_state(server.root) == [("data.bin", "completed")]
        assert "Traceback" not in server.log


def _held_chunks(root: Path) -> int:
    with sqlite3.connect(root / ".resume" / "server.db", timeout=10) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM received_chunks").fetchall()
    return int(count)


def _only_transfer(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        [(file_id,)] = conn.execute("SELECT file_id FROM transfers").fetchall()
    return file_id


def test_every_step_is_exercised() -> None:
    """A new crash point without a test here would be a step nobody checked."""
    assert set(UPLOAD_STEPS) | {"cancel.recorded"} == set(STEPS)


def test_an_unknown_crash_point_stops_the_server_at_start(tmp_path: Path) -> None:
    """A typo in the hook is loud, not silently ignored."""
    result = subprocess.run(
        resume_cmd("serve", "--root", str(tmp_path)),
        env=resume_env({"RESUME_CRASH_AT": "nope"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "unknown crash point" in result.stderr
