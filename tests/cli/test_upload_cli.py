"""`resume upload`, `cancel`, `gc` and `serve` as a user runs them: real processes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.processes import ServeProcess, run_resume, start_upload, stop
from tests.transfer.conftest import make_file, partial_files


@pytest.fixture
def serve(tmp_path: Path):
    with ServeProcess(tmp_path / "srv") as server:
        yield server


def test_upload_then_status_then_rerun(serve: ServeProcess, tmp_path: Path) -> None:
    """Upload exits 0 with a JSON summary; status shows it completed; a re-run is a no-op."""
    source = make_file(tmp_path / "data.bin", 3_000_000)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    result = run_resume(
        "upload", str(source), serve.url, "--db", db, "--json", "--chunk-size", "256k"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["bytes_sent"] == 3_000_000
    assert (serve.root / "data.bin").read_bytes() == source.read_bytes()

    [item] = json.loads(run_resume("status", "--json", "--db", db).stdout)
    assert item["state"] == "completed" and item["offset"] == 3_000_000
    assert item["checksum"] == summary["files"][0]["checksum"]
    assert item["chunks"]["committed"] == item["chunks"]["total"] == 12

    again = run_resume("upload", str(source), serve.url, "--db", db, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["bytes_sent"] == 0


def test_name_option_and_plain_output(serve: ServeProcess, tmp_path: Path) -> None:
    """--name sets the remote name; without --json a one-line summary goes to stderr."""
    source = make_file(tmp_path / "data.bin", 10_000)
    result = run_resume(
        "upload",
        str(source),
        serve.url,
        "--db",
        str(tmp_path / "c.db"),
        "--name",
        "dir/renamed.bin",
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr
    assert (serve.root / "dir" / "renamed.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.bin", "ws://127.0.0.1:1"], "no such file"),
        (["{file}", "ftp://127.0.0.1:1"], "not a server URL"),
        (["{file}", "http://127.0.0.1:1/files/", "--parallel", "0"], "--parallel must be"),
        (["{file}", "ws://127.0.0.1:1", "--chunk-size", "lots"], "not a size"),
        (["{file}", "ws://127.0.0.1:1", "--window", "0"], "--window"),
        (["{file}", "ws://127.0.0.1:1", "--name", "../up"], "cannot be sent"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad input: a clear error, exit 2, no traceback, no state written."""
    source = make_file(tmp_path / "data.bin", 10)
    db = tmp_path / "c.db"
    argv = [a.replace("{file}", str(source)) for a in args]
    result = run_resume("upload", *argv, "--db", str(db))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_wrong_token_exits_fast_with_a_clear_message(tmp_path: Path) -> None:
    """401 is fatal: non-zero exit within seconds, saying the server refused."""
    with ServeProcess(tmp_path / "srv", "--token", "right") as server:
        source = make_file(tmp_path / "data.bin", 10_000)
        started = time.monotonic()
        result = run_resume(
            "upload", str(source), server.url, "--db", str(tmp_path / "c.db"), "--token", "wrong"
        )
        assert result.returncode == 1
        assert "401" in result.stderr
        assert time.monotonic() - started < 10
        ok = run_resume(
            "upload",
            str(source),
            server.url,
            "--db",
            str(tmp_path / "c.db"),
            env={"RESUME_TOKEN": "right"},
        )
        assert ok.returncode == 0, ok.stderr


def test_sigint_saves_state_and_the_same_command_resumes(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Ctrl-C: exit 130 saying how to resume; the same command then finishes the file."""
    source = make_file(tmp_path / "data.bin", 40 * 2**20)
    db = str(tmp_path / "c.db")
    args = [str(source), serve.url, "--db", db, "--json", "--chunk-size", "64k", "--window", "1"]
    proc = start_upload(*args)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until some chunks are committed
        status = json.loads(run_resume("status", "--json", "--db", db).stdout or "[]")
        if status and status[0]["chunks"]["committed"] > 5:
            break
        time.sleep(0.05)
    code, out, err = stop(proc, signal.SIGINT)
    assert code == 130, err
    assert "resume with the same command" in err
    assert json.loads(out)["interrupted"] is True
    assert not (serve.root / "data.bin").exists()
    [item] = json.loads(run_resume("status", "--json", "--db", db).stdout)
    assert item["state"] == "pending" and item["chunks"]["prepared"] == 0  # drained

    result = run_resume(*["upload", *args])
    assert result.returncode == 0, result.stderr
    assert (serve.root / "data.bin").read_bytes() == source.read_bytes()


def test_cancel_and_gc(serve: ServeProcess, tmp_path: Path) -> None:
    """cancel drops the server's partial and marks it cancelled; gc forgets it."""
    source = make_file(tmp_path / "data.bin", 20 * 2**20)
    db = str(tmp_path / "c.db")
    proc = start_upload(str(source), serve.url, "--db", db, "--chunk-size", "64k", "--window", "1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not partial_files(serve.root):
        time.sleep(0.05)
    stop(proc)  # SIGKILL mid-way
    [item] = json.loads(run_resume("status", "--json", "--db", db).stdout)
    result = run_resume("cancel", item["file_id"][:8], "--db", db)
    assert result.returncode == 0, result.stderr
    assert partial_files(serve.root) == []
    [item] = json.loads(run_resume("status", "--json", "--db", db).stdout)
    assert item["state"] == "cancelled"
    assert run_resume("cancel", "ffffffff", "--db", db).returncode == 2
    gc = run_resume("gc", "--older-than", "0", "--db", db)
    assert gc.returncode == 0 and "forgot 1" in gc.stdout
    assert json.loads(run_resume("status", "--json", "--db", db).stdout) == []


def test_serve_sigterm_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM: the server closes its connections and exits 0."""
    server = ServeProcess(tmp_path / "srv")
    server.start()
    assert server.terminate() == 0


def test_serve_refuses_a_bad_root(tmp_path: Path) -> None:
    """--root pointing at a file is a clear usage error."""
    afile = tmp_path / "file"
    afile.write_text("x")
    result = run_resume("serve", "--root", str(afile), "--port", "0")
    assert result.returncode == 2
    assert "not a directory" in result.stderr or "exists" in result.stderr


def test_gc_failed_and_outbox(tmp_path: Path) -> None:
    """gc keeps failed transfers unless --failed; --outbox drops a stale producer's messages."""
    from resume.store import open_store
    from resume.store.states import TransferState

    db = tmp_path / "c.db"
    url = "ws://127.0.0.1:1/streams/orders"
    with open_store(db) as store:
        store.transfers.create(
            file_id="f" * 32, source_path="/x", name="x.bin", url="ws://127.0.0.1:1",
            size=10, mtime_ns=1, inode=1, chunk_size=4,
        )  # fmt: skip
        store.transfers.update("f" * 32, state=TransferState.FAILED, last_error="too large")
        store.stream_client.add("shop-1", url, [(1, '"a"'), (2, '"b"')])
    kept = run_resume("gc", "--older-than", "0", "--db", str(db))
    assert kept.returncode == 0 and "forgot 0 finished" in kept.stdout
    dropped = run_resume("gc", "--older-than", "0", "--failed", "--db", str(db))
    assert dropped.returncode == 0 and "forgot 1 finished or failed" in dropped.stdout
    assert json.loads(run_resume("status", "--json", "--db", str(db)).stdout) == []

    outbox = run_resume("gc", "--outbox", "shop-1", "--db", str(db))
    assert outbox.returncode == 0, outbox.stderr
    assert "dropped 1 outbox(es) with 2 unsent message(s)" in outbox.stdout
    streams = json.loads(run_resume("status", "--streams", "--json", "--db", str(db)).stdout)
    [producer] = streams["producers"]
    assert (producer["client_id"], producer["pending"]) == ("shop-1", 0)
    unknown = run_resume("gc", "--outbox", "nobody", "--db", str(db))
    assert unknown.returncode == 2 and "no stream outbox for producer 'nobody'" in unknown.stderr
