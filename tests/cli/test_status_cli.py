"""`resume status` and `resume db` as a user runs them: real processes, real SQLite files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from resume.store import open_store


def resume(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "resume", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def test_status_on_a_missing_store_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    """No database yet: `[]`, exit 0, and no file appears as a side effect."""
    db = tmp_path / "absent.db"
    result = resume("status", "--json", "--db", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert not db.exists()
    table = resume("status", "--db", str(db))
    assert table.returncode == 0 and "none" in table.stdout


def test_status_uses_resume_db_then_xdg_state_home(tmp_path: Path) -> None:
    """$RESUME_DB wins; without it the store lives under $XDG_STATE_HOME/resume/."""
    xdg = tmp_path / "xdg"
    result = resume("db", "upgrade", env={"XDG_STATE_HOME": str(xdg)})
    assert result.returncode == 0, result.stderr
    assert (xdg / "resume" / "state.db").exists()
    other = tmp_path / "other.db"
    result = resume("db", "upgrade", env={"XDG_STATE_HOME": str(xdg), "RESUME_DB": str(other)})
    assert result.returncode == 0 and other.exists()


def test_status_json_reports_progress_and_chunk_counts(db_url: str) -> None:
    """The JSON carries what scripts need: ids, sizes, offset, state, chunk counts, ISO time."""
    with open_store(db_url) as store:
        store.transfers.create(
            file_id="0123456789abcdef0123456789abcdef", source_path="/data/big.bin", name="big.bin",
            url="ws://127.0.0.1:8765", size=10, mtime_ns=1, inode=1, chunk_size=4,
        )  # fmt: skip
        record = store.transfers.get("0123456789abcdef0123456789abcdef")
        ledger = store.transfers.load_ledger(record)
        store.transfers.save_chunks(
            record.file_id, ledger, [ledger.prepare(0, "a"), ledger.prepare(1, "b")]
        )
        store.transfers.save_chunks(record.file_id, ledger, [ledger.commit(0, "a")])

    result = resume("status", "--json", "--db", db_url)
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)
    assert item["file_id"] == "0123456789abcdef0123456789abcdef"
    assert item["path"] == "/data/big.bin" and item["name"] == "big.bin"
    assert item["url"] == "ws://127.0.0.1:8765"
    assert (item["size"], item["offset"], item["checksum"]) == (10, 4, None)
    assert item["state"] == "pending"
    assert item["chunks"] == {"committed": 1, "prepared": 1, "total": 3}
    assert item["updated_at"].endswith("Z") and "T" in item["updated_at"]

    table = resume("status", "--db", db_url, "01234567")
    assert table.returncode == 0
    assert "big.bin" in table.stdout and "40% of 10 B" in table.stdout
    unknown = resume("status", "--json", "--db", db_url, "ffff")
    assert unknown.returncode == 1 and "no transfer with id 'ffff'" in unknown.stderr


def test_db_current_reports_head_after_upgrade(tmp_path: Path) -> None:
    """`db current` says there is no database, then the head revision after `db upgrade`."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert "no database yet" in resume("db", "current", "--db", url).stdout
    assert resume("db", "upgrade", "--db", url).returncode == 0
    assert "(head)" in resume("db", "current", "--db", url).stdout


def test_bad_database_url_is_a_clear_usage_error(tmp_path: Path) -> None:
    """An unknown dialect exits 2 with one line, no traceback."""
    result = resume("status", "--db", "nosuchdialect://x")
    assert result.returncode == 2
    assert "resume: error:" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_every_command() -> None:
    """`--help` lists the commands with a sentence each."""
    result = resume("--help")
    assert result.returncode == 0
    for command in ("status", "db"):
        assert command in result.stdout


def test_status_shows_stream_producers_and_consumers(db_url: str) -> None:
    """Messages waiting for the server and consumer positions appear; the transfer JSON stays a list."""
    url = "ws://127.0.0.1:8765/streams/orders"
    with open_store(db_url) as store:
        store.stream_client.add("shop-1", url, [(1, '"a"'), (2, '"b"'), (3, '"c"')])
        store.stream_client.confirm("shop-1", url, 1)
        store.stream_client.set_cursor("billing", url, 41)

    result = resume("status", "--streams", "--json", "--db", db_url)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    [producer] = document["producers"]
    assert (producer["client_id"], producer["channel"]) == ("shop-1", url)
    assert (producer["last_seq"], producer["acked"], producer["pending"]) == (3, 1, 2)
    [consumer] = document["consumers"]
    assert (consumer["consumer"], consumer["seq"]) == ("billing", 41)
    assert consumer["updated_at"].endswith("Z") or "+00:00" in consumer["updated_at"]

    assert json.loads(resume("status", "--json", "--db", db_url).stdout) == []
    table = resume("status", "--db", db_url)
    assert table.returncode == 0
    assert "shop-1" in table.stdout and "2 message(s)" in table.stdout
    assert "billing" in table.stdout and "took 41" in table.stdout
