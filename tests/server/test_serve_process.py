"""`resume serve` as an operator runs it: logs, safety at start, the root lock, the inventory."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from resume.errors import UsageError
from resume.protocol.upload import Begin, new_file_id
from resume.server import ServerConfig, check_exposure, is_loopback
from tests.processes import ServeProcess, resume_cmd, resume_env, run_resume
from tests.transfer.conftest import RunningServer
from tests.transfer.test_receiver import raw, request


def upload(tmp_path: Path, url: str, *args: str, size: int = 200_000) -> str:
    """`resume upload` data.bin; returns its stderr (asserting only that it ran)."""
    source = tmp_path / "data.bin"
    if not source.exists():
        source.write_bytes(b"\x01" * size)
    result = run_resume("upload", str(source), url, "--db", str(tmp_path / "c.db"), *args)
    return f"exit {result.returncode}: {result.stderr}"


def test_json_log_lines_parse(tmp_path: Path) -> None:
    """--log-format json: every line is a JSON object; connections, upload begin, finish and
    failure, refused tokens logged with the peer."""
    args = ("--log-format", "json", "--token", "s3cret", "--max-size", "300000")
    server = ServeProcess(tmp_path / "srv", *args)
    server.start()
    try:
        assert upload(tmp_path, server.url, "--token", "wrong").startswith("exit 1:")
        assert upload(tmp_path, server.url, "--token", "s3cret").startswith("exit 0:")
        (tmp_path / "big").mkdir()
        too_big = upload(tmp_path / "big", server.url, "--token", "s3cret", size=400_000)
        assert too_big.startswith("exit 1:"), too_big
    finally:
        assert server.terminate() == 0
    records = [json.loads(line) for line in server.log.splitlines()]  # each line parses
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    messages = [r["message"] for r in records]
    refused = [r for r in records if r.get("event") == "auth_refused"]
    assert refused and refused[0]["peer"].startswith("127.0.0.1:")
    assert "wrong token" in refused[0]["message"]
    begin = [r for r in records if r["message"].startswith("upload begin data.bin")]
    finish = [r for r in records if r["message"].startswith("upload finished data.bin")]
    assert begin and finish and finish[0]["peer"].startswith("127.0.0.1:")
    [failed] = [r for r in records if r["message"].startswith("upload refused for 127.0.0.1:")]
    assert failed["code"] == "too_large" and failed["peer"].startswith("127.0.0.1:")
    connections = [r for r in records if r.get("event") == "connection"]
    assert connections and connections[-1]["path"] == "/upload"
    assert connections[-1]["close_code"] == 1000 and connections[-1]["level"] == "info"
    assert any(m.startswith("listening on ws://127.0.0.1:") for m in messages)
    assert messages[-1] == "server stopped"
    # third-party noise is held back at the default level
    assert not [r for r in records if not r["logger"].startswith("resume")]


def test_text_logs_name_the_peer_and_hold_back_alembic(tmp_path: Path) -> None:
    """Default: one line per connection with the peer; no Alembic or websockets lines."""
    with ServeProcess(tmp_path / "srv") as server:
        assert upload(tmp_path, server.url).startswith("exit 0:")
    lines = server.log.splitlines()
    assert any(" INFO resume.server: connection 127.0.0.1:" in line for line in lines), lines
    assert any("upload begin data.bin" in line and "from 127.0.0.1:" in line for line in lines)
    assert not [line for line in lines if " alembic" in line or " websockets" in line]


def test_non_loopback_without_token_is_refused(tmp_path: Path) -> None:
    """--host 0.0.0.0 without a token: exit 2 with a reason, nothing created or bound."""
    root = tmp_path / "srv"
    result = run_resume("serve", "--root", str(root), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "--allow-anonymous" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not root.exists()


def test_exposure_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Loopback needs nothing; elsewhere a token, client certificates or an explicit opt-out."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.1.2.3", "example.com"))
    base = ServerConfig(root=tmp_path, host="0.0.0.0")
    with pytest.raises(UsageError):
        check_exposure(base)
    for allowed in (
        ServerConfig(root=tmp_path, host="0.0.0.0", token="t"),
        ServerConfig(root=tmp_path, host="0.0.0.0", client_ca=tmp_path / "ca.pem"),
        ServerConfig(root=tmp_path, host="0.0.0.0", allow_anonymous=True),
    ):
        with caplog.at_level(logging.WARNING, logger="resume.server"):
            caplog.clear()
            check_exposure(allowed)
        assert "without TLS" in caplog.text  # and says so: none of them has a certificate
    check_exposure(ServerConfig(root=tmp_path, host="127.0.0.1"))


def test_the_root_is_said_to_be_created(tmp_path: Path) -> None:
    """A --root that does not exist is created, with a warning (a typo shows at once)."""
    with ServeProcess(tmp_path / "new-root"):
        pass
    assert "root " + str(tmp_path / "new-root") + " did not exist: created it" in (
        (tmp_path / "new-root-serve.log").read_text()
    )
    with ServeProcess(tmp_path / "new-root") as again:
        pass
    assert again.log.count("did not exist") == 1  # the second start found it


def test_a_second_server_on_the_same_root_refuses_to_start(tmp_path: Path) -> None:
    """The root lock: a clear refusal while the first runs; free again after kill -9."""
    root = tmp_path / "srv"
    with ServeProcess(root) as first:
        assert first.proc is not None
        second = run_resume("serve", "--root", str(root), "--port", "0", timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"resume: error: another resume server (pid {first.proc.pid}) is already serving "
            f"root {root}; stop it first, or give this one another --root"
        )
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        restarted = ServeProcess(root)
        restarted.start()
        restarted.kill()


async def test_server_status_lists_partials_with_owner_and_channels(
    server: RunningServer,
) -> None:
    """server-status: a partial upload with its size and owner, a channel with its length."""
    uploading = await raw(server)
    file_id = new_file_id()
    reply = await request(uploading, Begin(file_id, "half.bin", 10_000, 4096).to_json())
    assert reply["type"] == "state"
    producer = await raw(server, "/streams/orders")
    hello = {"type": "hello", "client_id": "p", "after": "end", "subscribe": False}
    await request(producer, hello)
    await request(producer, {"type": "pub", "seq": 1, "data": ["a", "b", "c"]})

    async def run(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            *resume_cmd(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=resume_env({"COLUMNS": "120"}),
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        return out.decode()

    async def status(*args: str) -> dict:
        return json.loads(await run(*args))

    document = await status("server-status", "--root", str(server.root), "--json")
    [partial] = document["partials"]
    assert (partial["file_id"], partial["name"], partial["size"]) == (file_id, "half.bin", 10_000)
    assert partial["received"] == 0
    [channel] = document["channels"]
    assert (channel["channel"], channel["retained"], channel["producers"]) == ("orders", 3, 1)
    # The server runs in this process: its lock is held, its /status answers with live owners.
    assert document["server"]["running"] is True
    local = uploading.local_address
    assert partial["owner"] == f"{local[0]}:{local[1]}"
    assert len(channel["connections"]) == 1

    same = await status("serve", "--root", str(server.root), "--list", "--json")
    assert same["partials"] == document["partials"]
    # for people: the same rows in tables
    table = await run("server-status", "--root", str(server.root))
    assert f"server: running (pid {os.getpid()})" in table
    row = next(line for line in table.splitlines() if "half.bin" in line)
    assert file_id[:8] in row and partial["owner"] in row
    assert any("orders" in line and " 3 " in line for line in table.splitlines())
    await uploading.close()
    await producer.close()


def test_server_status_of_a_root_without_a_server(tmp_path: Path) -> None:
    """A directory that never held a server is a one-line error, and nothing is created."""
    result = run_resume("server-status", "--root", str(tmp_path / "typo"))
    assert result.returncode == 2
    assert "no resume server state under" in result.stderr
    assert not (tmp_path / "typo").exists()
