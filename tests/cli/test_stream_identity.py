"""One live producer per client id: the issue's reused-id scenario with real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from resume.protocol.frames import SUBPROTOCOL
from tests.processes import REPO, ServeProcess, resume_env, run_resume, wait_until


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "srv") as server:
        yield server


def log_of(server: ServeProcess, name: str = "orders") -> list[str]:
    db = server.root / ".resume" / "server.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT data FROM stream_messages WHERE channel = ? ORDER BY seq", (name,)
        ).fetchall()
    return [json.loads(data) for (data,) in rows]


def send(url: str, db: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    return run_resume(
        "send", url, "--client-id", "shop-1", "--db", str(db), "--give-up-after", "20s",
        input="".join(f"{line}\n" for line in lines),
    )  # fmt: skip


async def raw_hello_as(url: str, client_id: str) -> int:
    """Say hello like a hand-written client that names no instance; the close code it gets."""
    async with connect(url, subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "client_id": client_id, "subscribe": False}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_a_reused_client_id_is_refused_never_silently_dropped(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """A sends A1-A10 as shop-1; EVE (its own db, or a raw client) publishes as shop-1; A sends
    A11-A15; B (its own db) sends B1-B20 as shop-1. Before: the log ended A1-A10, EVE1-3, A14,
    A15, B16-B20 and everyone exited 0. Now EVE and B exit 1 naming the id; the log is A1-A15."""
    url = f"{serve.url}/streams/orders"
    a_db = tmp_path / "a.db"
    assert send(url, a_db, [f"A{i}" for i in range(1, 11)]).returncode == 0

    eve = send(url, tmp_path / "eve.db", ["EVE1", "EVE2", "EVE3"])
    assert eve.returncode == 1
    assert "resume: error: client id conflict: client id 'shop-1'" in eve.stderr
    assert "Traceback" not in eve.stderr and len(eve.stderr.strip().splitlines()) == 1
    assert asyncio.run(raw_hello_as(url, "shop-1")) == 4409

    second = send(url, a_db, [f"A{i}" for i in range(11, 16)])  # the same producer, restarted
    assert second.returncode == 0, second.stderr

    b = send(url, tmp_path / "b.db", [f"B{i}" for i in range(1, 21)])
    assert b.returncode == 1
    assert "client id 'shop-1' belongs to another producer instance" in b.stderr

    assert log_of(serve) == [f"A{i}" for i in range(1, 16)]


def test_a_second_process_on_the_same_store_fences_the_first(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Two processes producing as one id from one store: the newer takes over, the older stops
    with a clear error, and the log holds each message once, in order."""
    url = f"{serve.url}/streams/orders"
    db = tmp_path / "p.db"
    total = 3000
    produce = [
        sys.executable, "-m", "tests.stream_child", url, str(db), "shop-1", str(total),
        "--batch", "20", "--pause", "0.02",
    ]  # fmt: skip

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            produce, cwd=REPO, env=resume_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    first = start()
    try:
        wait_until(lambda: len(log_of(serve)) >= 200, 60, "the first producer to publish")
        second = start()
        try:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 0, (out, err)
            assert out.splitlines()[-1] == "done"
        finally:
            if second.poll() is None:
                second.kill()
        first_out, first_err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 5, (first_out, first_err)
    [error] = [line for line in first_out.splitlines() if line.startswith("error:")]
    assert "client id" in error and "'shop-1'" in error
    assert log_of(serve) == list(range(1, total + 1))


def test_a_producer_whose_store_is_behind_the_server_stops_naming_the_id(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """The same producer instance run from an older copy of its store (a restored backup): the
    server holds more of its seqs than the store ever gave out. Its new lines would have been
    dropped as replays with exit 0; now it exits 1 naming the id and the log is unchanged."""
    url = f"{serve.url}/streams/orders"
    db, backup = tmp_path / "p.db", tmp_path / "backup"
    assert send(url, db, [f"A{i}" for i in range(1, 6)]).returncode == 0
    backup.mkdir()
    for part in tmp_path.glob("p.db*"):  # the database with its WAL, as a backup would take it
        shutil.copy2(part, backup / part.name)
    assert send(url, db, [f"A{i}" for i in range(6, 11)]).returncode == 0

    stale = send(url, backup / "p.db", ["LOST1", "LOST2"])
    assert stale.returncode == 1
    assert "resume: error: the server holds messages up to seq 10 from client id 'shop-1'" in (
        stale.stderr
    )
    assert len(stale.stderr.strip().splitlines()) == 1 and "Traceback" not in stale.stderr
    assert log_of(serve) == [f"A{i}" for i in range(1, 11)]
