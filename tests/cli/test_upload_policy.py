"""`resume upload` as a user meets it (issue 12, and the client half of issue 8): real processes.

Server-verified skips, --overwrite, one policy for what cannot be sent, the per-transfer lock,
`interrupted` in status, transfers identified by the canonical server, errors on the right
branch, retries and signals, progress on a terminal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.proxy import ThreadedProxy
from tests.processes import (
    ServeProcess,
    resume_cmd,
    resume_env,
    run_in_pty,
    run_resume,
    start_upload,
    stop,
    wait_until,
)
from tests.transfer.conftest import make_file, partial_files

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "srv") as server:
        yield server


def status_of(db: str) -> list[dict[str, object]]:
    return json.loads(run_resume("status", "--json", "--db", db).stdout or "[]")


def committed_chunks(db: str) -> int:
    items = status_of(db)
    return int(items[0]["chunks"]["committed"]) if items else 0  # type: ignore[index]


SLOW = ("--chunk-size", "16k", "--window", "1")  # many round trips: time to act mid-way


def wait_for_exit(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    """Let a background upload finish on its own; (exit status, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# -- server-verified skips and overwrite --------------------------------------------------------


def test_a_rerun_is_confirmed_by_the_server_and_a_deleted_file_is_sent_again(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Re-run: 'already on the server (verified)', nothing sent; deleted there: sent again."""
    source = make_file(tmp_path / "data.bin", 300_000)
    db = str(tmp_path / "c.db")
    assert run_resume("upload", str(source), serve.url, "--db", db).returncode == 0

    again = run_resume("upload", str(source), serve.url, "--db", db)
    assert again.returncode == 0, again.stderr
    assert "data.bin: already on the server (verified)" in again.stderr
    verified = run_resume("upload", str(source), serve.url, "--db", db, "--verify", "--json")
    [item] = json.loads(verified.stdout)["files"]
    assert (item["state"], item["bytes_sent"]) == ("verified", 0)

    (serve.root / "data.bin").unlink()
    resent = run_resume("upload", str(source), serve.url, "--db", db, "--json")
    assert resent.returncode == 0, resent.stderr
    [item] = json.loads(resent.stdout)["files"]
    assert (item["state"], item["bytes_sent"]) == ("completed", 300_000)
    assert (serve.root / "data.bin").read_bytes() == source.read_bytes()


def test_an_existing_file_is_refused_unless_overwrite(serve: ServeProcess, tmp_path: Path) -> None:
    """A name that exists on the server is refused (one line, exit 1); --overwrite replaces it."""
    (serve.root / "keep.bin").write_bytes(b"not written by resume")
    source = make_file(tmp_path / "new.bin", 10_000)
    db = str(tmp_path / "c.db")
    refused = run_resume("upload", str(source), serve.url, "--db", db, "--name", "keep.bin")
    assert refused.returncode == 1
    assert "keep.bin exists on the server; pass --overwrite to replace it" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (serve.root / "keep.bin").read_bytes() == b"not written by resume"
    assert partial_files(serve.root) == []

    replaced = run_resume(
        "upload", str(source), serve.url, "--db", db, "--name", "keep.bin", "--overwrite"
    )
    assert replaced.returncode == 0, replaced.stderr
    assert (serve.root / "keep.bin").read_bytes() == source.read_bytes()


# -- one policy for what cannot be sent ---------------------------------------------------------


def test_what_cannot_be_sent_is_reported_and_the_rest_is_sent(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Unreadable file and directory, a FIFO, names the server refuses: each reported, the
    others sent, exit 1 (0 with --skip-errors); nothing is begun for the unreadable file."""
    tree = tmp_path / "tree"
    make_file(tree / "good.txt", 1_000)
    make_file(tree / "sub" / "ok.bin", 70_000)
    make_file(tree / "locked.bin", 1_000).chmod(0)
    make_file(tree / "closed" / "hidden.bin", 10)
    (tree / "closed").chmod(0)
    os.mkfifo(tree / "pipe")
    make_file(tree / "back\\slash.txt", 10)
    make_file(tree / "tab\tname.txt", 10)
    db = str(tmp_path / "c.db")

    result = run_resume("upload", str(tree), serve.url, "--db", db, "--json", unprivileged=True)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    states = {f["name"]: (f["state"], f["error"]) for f in summary["files"]}
    assert states["tree/good.txt"][0] == states["tree/sub/ok.bin"][0] == "completed"
    state, error = states["tree/locked.bin"]
    assert state == "failed" and "locked.bin" in error and "Permission denied" in error
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"closed", "pipe", "back\\slash.txt", "tab\tname.txt"}
    for name in ("locked.bin", "closed", "pipe", "back\\slash.txt"):
        assert name in result.stderr  # every path that was not sent, on stderr
    assert (serve.root / "tree" / "sub" / "ok.bin").stat().st_size == 70_000
    with sqlite3.connect(serve.root / ".resume" / "server.db") as conn:
        begun = {row[0] for row in conn.execute("SELECT name FROM received_files")}
    assert begun == {"tree/good.txt", "tree/sub/ok.bin"}  # no begin for what cannot be read

    again = run_resume(
        "upload", str(tree), serve.url, "--db", db, "--skip-errors", unprivileged=True
    )
    assert again.returncode == 0, again.stderr
    assert "locked.bin" in again.stderr and "already on the server (verified)" in again.stderr


def test_a_file_over_the_servers_limit_is_reported_and_the_rest_is_sent(tmp_path: Path) -> None:
    """`serve --max-size`: the big file is named on stderr, the others are sent (also the ones
    after it), exit 1; --skip-errors exits 0."""
    tree = tmp_path / "tree"
    make_file(tree / "a.bin", 1_000)
    make_file(tree / "big.bin", 100_000, seed=1)
    make_file(tree / "c.bin", 1_000, seed=2)
    db = str(tmp_path / "c.db")
    with ServeProcess(tmp_path / "srv", "--max-size", "50000") as server:
        result = run_resume("upload", str(tree), server.url, "--db", db, "--json")
        assert result.returncode == 1, result.stderr
        states = {f["name"]: f["state"] for f in json.loads(result.stdout)["files"]}
        assert states == {
            "tree/a.bin": "completed",
            "tree/big.bin": "failed",
            "tree/c.bin": "completed",
        }
        assert "tree/big.bin: too large for the server" in result.stderr
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in (server.root / "tree").iterdir()) == ["a.bin", "c.bin"]
        again = run_resume("upload", str(tree), server.url, "--db", db, "--skip-errors")
    assert again.returncode == 0, again.stderr
    assert "tree/big.bin: too large for the server" in again.stderr


def test_a_source_changed_while_sending_stops_at_the_next_chunk(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """The file grows mid-upload: the next chunk read notices, long before finish."""
    source = make_file(tmp_path / "data.bin", 30 * 2**20)
    db = str(tmp_path / "c.db")
    proc = start_upload(str(source), serve.url, "--db", db, "--json", *SLOW)
    wait_until(lambda: committed_chunks(db) > 5, 30, "some chunks committed")
    with source.open("ab") as f:
        f.write(b"more")
    code, out, err = wait_for_exit(proc)
    assert code == 1, err
    [item] = json.loads(out)["files"]
    assert item["state"] == "failed" and "changed while it was being sent" in item["error"]
    assert "--restart" in item["error"]
    assert item["bytes_sent"] < 15 * 2**20
    assert not (serve.root / "data.bin").exists()


# -- locks and interrupted transfers ------------------------------------------------------------


def test_a_second_run_of_the_same_upload_is_refused_while_the_first_runs(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """One line naming the running pid; no SQL; the first run goes on and completes."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = str(tmp_path / "c.db")
    first = start_upload(str(source), serve.url, "--db", db, *SLOW)
    try:
        wait_until(lambda: committed_chunks(db) > 3, 30, "the first run to send chunks")
        second = run_resume("upload", str(source), serve.url, "--db", db, *SLOW, timeout=30)
        assert second.returncode == 1
        assert f"another upload of {source} is running (pid {first.pid})" in second.stderr
        assert "SQL" not in second.stderr and "UNIQUE" not in second.stderr
        assert "Traceback" not in second.stderr
        [item] = status_of(db)
        assert item["state"] == "active" and item["running"] is True
        assert item["last_error"] is None  # the refused run wrote nothing into the record
        cancel = run_resume("cancel", str(item["file_id"])[:8], "--db", db)
        assert cancel.returncode == 2  # not killed from under the running upload
        assert f"is being sent by pid {first.pid}; stop that upload first" in cancel.stderr
    finally:
        code, _, err = wait_for_exit(first)
    assert code == 0, err
    assert (serve.root / "data.bin").read_bytes() == source.read_bytes()


def test_a_killed_upload_shows_as_interrupted_and_resumes(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """SIGKILL leaves the transfer 'interrupted' (not 'active' forever); the same command resumes."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = str(tmp_path / "c.db")
    proc = start_upload(str(source), serve.url, "--db", db, *SLOW)
    wait_until(lambda: committed_chunks(db) > 3, 30, "some chunks committed")
    stop(proc)  # SIGKILL
    [item] = status_of(db)
    assert (item["state"], item["running"]) == ("interrupted", False)
    table = run_resume("status", "--db", db)
    assert "interrupted" in table.stdout and "data.bin" in table.stdout

    resumed = run_resume("upload", str(source), serve.url, "--db", db, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["files"][0]["resumed_from"] > 0
    assert status_of(db)[0]["state"] == "completed"


# -- transfer identity --------------------------------------------------------------------------


def test_another_spelling_of_the_server_resumes_the_same_transfer(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """ws://127.0.0.1:P then ws://localhost:P/: one transfer, one partial, resumed not resent."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = str(tmp_path / "c.db")
    proc = start_upload(str(source), serve.url, "--db", db, *SLOW)
    wait_until(lambda: committed_chunks(db) > 3, 30, "some chunks committed")
    stop(proc)
    other_spelling = f"ws://localhost:{serve.port}/"
    resumed = run_resume("upload", str(source), other_spelling, "--db", db, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["files"][0]["resumed_from"] > 0
    assert len(status_of(db)) == 1
    with sqlite3.connect(serve.root / ".resume" / "server.db") as conn:
        assert conn.execute("SELECT count(*) FROM received_files").fetchone() == (1,)
    assert partial_files(serve.root) == []


def test_an_unfinished_transfer_to_another_server_is_mentioned(tmp_path: Path) -> None:
    """Sending a file whose transfer to server A is unfinished, to server B, warns about A."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = str(tmp_path / "c.db")
    with ServeProcess(tmp_path / "a") as a, ServeProcess(tmp_path / "b") as b:
        proc = start_upload(str(source), a.url, "--db", db, *SLOW)
        wait_until(lambda: committed_chunks(db) > 3, 30, "some chunks committed")
        stop(proc)
        to_b = run_resume("upload", str(source), b.url, "--db", db)
        assert to_b.returncode == 0, to_b.stderr
        assert f"an unfinished transfer of this file to {a.url} exists" in to_b.stderr


# -- errors: one line, on the right branch ------------------------------------------------------


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`resume status --json | head -c 100`: no traceback, the SIGPIPE status 141."""
    from resume.store import open_store

    db = tmp_path / "c.db"
    with open_store(db) as store:
        for i in range(400):
            store.transfers.create(
                file_id=f"{i:032x}", source_path=f"/data/{i}.bin", name=f"{i}.bin",
                url="ws://127.0.0.1:1", size=10, mtime_ns=1, inode=1, chunk_size=4,
            )  # fmt: skip
    err = tmp_path / "err.txt"
    script = f"{' '.join(resume_cmd('status', '--json', '--db', str(db)))} 2>{err} | head -c 100 >/dev/null; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=resume_env(), timeout=60
    )
    assert result.stdout.strip() == "141"
    assert err.read_text() == ""


def test_a_database_url_without_its_driver_says_what_to_install() -> None:
    """postgresql+psycopg2:// without psycopg2: exit 2, one line naming the package."""
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here")
    result = run_resume("status", "--db", "postgresql+psycopg2://u@127.0.0.1/x")
    assert result.returncode == 2
    assert "pip install psycopg2-binary" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_serve_says_when_the_root_is_not_writable(tmp_path: Path) -> None:
    """Not the port: the root is named as the problem."""
    root = tmp_path / "root"
    root.mkdir(mode=0o555)
    root.chmod(0o555)
    result = run_resume("serve", "--root", str(root), "--port", "0", unprivileged=True)
    assert result.returncode == 2
    assert f"--root {root} is not writable" in result.stderr
    assert "listen" not in result.stderr


def test_an_unreadable_source_is_fatal_for_it_and_never_retried(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """PermissionError on the source: the file named, no 'cannot connect', no retry, fast."""
    source = make_file(tmp_path / "secret.bin", 1_000)
    source.chmod(0)
    started = time.monotonic()
    result = run_resume(
        "upload", str(source), serve.url, "--db", str(tmp_path / "c.db"), unprivileged=True
    )
    assert result.returncode == 1
    assert f"{source}: cannot open: Permission denied" in result.stderr
    assert "cannot connect" not in result.stderr and "retrying" not in result.stderr
    assert time.monotonic() - started < 10


def test_a_full_disk_on_the_server_is_fatal_and_clear(tmp_path: Path) -> None:
    """disk_full: exit 1 at once with one line saying so; not retried."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=3m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here to simulate a full disk")
    try:
        source = make_file(tmp_path / "big.bin", 5 * 2**20)
        with ServeProcess(mount / "root") as server:
            started = time.monotonic()
            result = run_resume("upload", str(source), server.url, "--db", str(tmp_path / "c.db"))
        assert result.returncode == 1
        assert "resume: error: the server's disk is full" in result.stderr
        assert "retrying" not in result.stderr and "Traceback" not in result.stderr
        assert time.monotonic() - started < 20
    finally:
        os.system(f"umount -l {mount}")


# -- retries and signals ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retry_warnings_reach_stderr_when_it_is_a_file(tmp_path: Path) -> None:
    """Off a terminal the user still sees why nothing happens."""
    source = make_file(tmp_path / "data.bin", 10)
    url = f"ws://127.0.0.1:{closed_port()}"
    result = run_resume(
        "upload", str(source), url, "--db", str(tmp_path / "c.db"), "--give-up-after", "2s"
    )
    assert result.returncode == 1
    assert "retrying in" in result.stderr and "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_verbose_is_accepted_after_the_command(tmp_path: Path) -> None:
    """`resume upload -vv ...` logs like `resume -vv upload ...`."""
    source = make_file(tmp_path / "data.bin", 10)
    url = f"ws://127.0.0.1:{closed_port()}"
    args = (str(source), url, "--db", str(tmp_path / "c.db"), "--give-up-after", "1s")
    after = run_resume("upload", *args, "-vv")
    before = run_resume("-vv", "upload", *args)
    for result in (after, before):
        assert result.returncode == 1, result.stderr
        assert "INFO resume.connect:" in result.stderr


def test_give_up_after_counts_the_open_attempts(tmp_path: Path) -> None:
    """A server that accepts TCP but never answers the handshake: gone after ~2 s, not 10+."""
    source = make_file(tmp_path / "data.bin", 10)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever answers
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_resume(
            "upload", str(source), url, "--db", str(tmp_path / "c.db"), "--give-up-after", "2s"
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "timed out" in result.stderr
    assert elapsed < 8, f"gave up after {elapsed:.1f}s"  # the open timeout alone is 10 s


@pytest.mark.parametrize(
    ("sig", "word"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")]
)
def test_a_signal_ends_a_reconnect_wait_at_once(tmp_path: Path, sig: int, word: str) -> None:
    """The first SIGINT/SIGTERM while waiting for a server exits 130 at once, saying which."""
    source = make_file(tmp_path / "data.bin", 10)
    url = f"ws://127.0.0.1:{closed_port()}"
    proc = start_upload(str(source), url, "--db", str(tmp_path / "c.db"), "--max-retry-delay", "60")
    time.sleep(3)  # several attempts: it is waiting for the next one now
    sent = time.monotonic()
    code, _, err = stop(proc, sig)
    assert code == 130, err
    assert time.monotonic() - sent < 5
    assert f"resume: {word}: stopping" in err and "Ctrl-C" not in err


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_frame_corrupted_in_transit_is_retried_then_fatal(
    serve: ServeProcess, tmp_path: Path, direction: str
) -> None:
    """Garbled control frames (1007): retried a few times and the upload completes; a link
    that garbles every connection ends with a clear error instead of retrying forever."""
    source = make_file(tmp_path / "data.bin", 200_000)
    with ThreadedProxy(serve.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}"
        proxy.corrupt_first_frames(2, direction)
        ok = run_resume("upload", str(source), url, "--db", str(tmp_path / "a.db"))
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr.count("corrupted in transit") == 2
        assert (serve.root / "data.bin").read_bytes() == source.read_bytes()

        proxy.corrupt_first_frames(100, direction)
        (serve.root / "data.bin").unlink()
        started = time.monotonic()
        bad = run_resume("upload", str(source), url, "--db", str(tmp_path / "b.db"))
        assert bad.returncode == 1
        assert "kept arriving corrupted (4 times" in bad.stderr
        assert time.monotonic() - started < 30


# -- output on a terminal -----------------------------------------------------------------------


def visible_lines(output: str) -> list[str]:
    """What a terminal shows, line by line: every redraw after a \\r is its own line here."""
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]+", output) if part.strip()]


def test_progress_on_an_80_column_terminal(serve: ServeProcess, tmp_path: Path) -> None:
    """File counter, total known from the start, numbers visible at 80 columns, a summary;
    a finished re-run shows what the server confirmed and a summary."""
    tree = tmp_path / "tree"
    make_file(tree / ("a-rather-long-name-" * 5 + ".bin"), 1_000_000)
    make_file(tree / "b.bin", 2_000_000, seed=1)
    make_file(tree / "c.bin", 1_000, seed=2)
    args = ("upload", str(tree), serve.url, "--db", str(tmp_path / "c.db"), "--chunk-size", "64k")
    code, output = run_in_pty(*args)
    assert code == 0, output
    lines = visible_lines(output)
    drawn = [line for line in lines if line.startswith(("file ", "verified "))]
    assert all(len(line) <= 80 for line in drawn), [line for line in drawn if len(line) > 80]
    bars = [line for line in lines if line.startswith("file ")]
    assert {line.split()[1] for line in bars} >= {"1/3", "2/3", "3/3"}
    assert all("%" in line and "/2.9 MiB" in line for line in bars)  # the total from the start
    # the long name is shortened, not the numbers
    assert any("…" in line and line.endswith("name-.bin") for line in bars)
    assert lines[-1].startswith("3 file(s): 3 sent and verified;")
    # a finished re-run: each file confirmed by the server, then the summary (no empty bar)
    code, output = run_in_pty(*args)
    assert code == 0, output
    lines = visible_lines(output)
    assert sum(line.endswith(": already on the server (verified)") for line in lines) == 3
    assert lines[-1].startswith("3 file(s): 0 sent and verified, 3 already on the server;")
    assert not [line for line in lines if "connecting" in line or "?" in line]


def test_a_resumed_file_says_where_it_resumes(serve: ServeProcess, tmp_path: Path) -> None:
    """After an interruption, the terminal says 'resuming NAME at P%'."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = str(tmp_path / "c.db")
    proc = start_upload(str(source), serve.url, "--db", db, *SLOW)
    wait_until(lambda: committed_chunks(db) > 3, 30, "some chunks committed")
    stop(proc)
    code, output = run_in_pty("upload", str(source), serve.url, "--db", db)
    assert code == 0, output
    assert re.search(r"resuming data\.bin at \d+%", output)


def test_status_fits_80_columns(tmp_path: Path) -> None:
    """Long names and errors are shortened on a terminal; numbers and states stay."""
    from resume.store import open_store
    from resume.store.states import TransferState

    db = tmp_path / "c.db"
    with open_store(db) as store:
        store.transfers.create(
            file_id="ab" * 16, source_path="/x", name="deep/" * 20 + "file.bin",
            url="ws://127.0.0.1:1", size=5 * 2**30, mtime_ns=1, inode=1, chunk_size=4 * 2**20,
        )  # fmt: skip
        store.transfers.update("ab" * 16, state=TransferState.FAILED, last_error="x" * 300)
    code, output = run_in_pty("status", "--db", str(db))
    assert code == 0, output
    lines = visible_lines(output)
    assert all(len(line) <= 80 for line in lines), lines
    row = next(line for line in lines if line.startswith("abababab"))
    assert "failed" in row and "0% of 5.0 GiB" in row and row.endswith("file.bin")
    assert any(line.startswith("abababab  error: xxx") for line in lines)


def test_send_does_not_draw_over_typed_input(serve: ServeProcess, tmp_path: Path) -> None:
    """Lines typed on a terminal are not mixed with a redrawn counter."""
    url = serve.url + "/streams/typed"
    code, output = run_in_pty("send", url, typed=b"hello\nworld\n\x04")
    assert code == 0, output
    assert "\x1b[K" not in output  # no live counter redraws
    tail = run_resume(
        "tail", url, "--consumer", "c", "--from-start", "--count", "2",
        "--db", str(tmp_path / "t.db"),
    )  # fmt: skip
    assert tail.stdout.split() == ["hello", "world"]


def test_status_waits_for_another_process_creating_the_database(tmp_path: Path) -> None:
    """`resume status` opening a store that another process is creating right now waits for
    it (it was "database is locked" at once, when the reader tried to migrate too: seen from
    examples/demo.sh polling status while its upload created the store)."""
    db = tmp_path / "c.db"
    creator = sqlite3.connect(db, isolation_level=None)
    creator.execute("PRAGMA journal_mode=WAL")
    creator.execute("BEGIN IMMEDIATE")  # another process is creating the schema right now
    creator.execute("CREATE TABLE being_created (x INTEGER)")
    reader = subprocess.Popen(
        resume_cmd("status", "--json", "--db", str(db)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=resume_env(),
    )  # fmt: skip
    time.sleep(1.5)
    assert reader.poll() is None, reader.communicate()  # waiting, not failed
    creator.execute("COMMIT")
    creator.close()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert json.loads(out) == []
