"""`resume upload FILE ws://...` picks WebSocket or HTTP per file (resume.transfer.routed).

Real `resume serve` and `resume upload` processes: a large new file goes over HTTP and a small
one over WebSocket; a transfer continues the way it began whichever way a new one would go;
two runs of one file exclude each other whichever way each goes; the probe says no to peers
that do not verify whole files over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from resume.net.connector import ConnectOptions
from resume.transfer.routed import HTTP_FROM, http_twin, verified_http
from tests.processes import ServeProcess, run_resume, start_upload, stop, wait_until
from tests.transfer.conftest import make_file

SLOW = ("--chunk-size", "16k", "--window", "1")  # many round trips: time to act mid-way


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "srv") as server:
        yield server


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file just large enough that `--via auto` sends it over HTTP when it is new."""
    return make_file(tmp_path_factory.mktemp("route") / "large.bin", HTTP_FROM, seed=7)


def summary(result: object) -> dict[str, object]:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def records(db: Path) -> list[tuple[str, str, str]]:
    """(name, url, state) of every transfer in the client's store."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT name, url, state FROM transfers ORDER BY name").fetchall()


def committed_chunks(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            (count,) = conn.execute(
                "SELECT count(*) FROM chunks WHERE state = 'COMMITTED'"
            ).fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return 0
    return int(count)


def test_auto_sends_a_large_new_file_over_http_and_a_small_one_over_websocket(
    serve: ServeProcess, large: Path, tmp_path: Path
) -> None:
    small = make_file(tmp_path / "small.bin", 300_000)
    db = tmp_path / "c.db"
    out = summary(
        run_resume("upload", str(large), str(small), serve.url, "--db", str(db), "--json")
    )
    ways = {item["name"]: (item["via"], item["state"]) for item in out["files"]}  # type: ignore[union-attr, index]
    assert ways == {"large.bin": ("http", "completed"), "small.bin": ("ws", "completed")}
    assert (serve.root / "large.bin").read_bytes() == large.read_bytes()
    assert (serve.root / "small.bin").read_bytes() == small.read_bytes()
    urls = {name: url for name, url, _ in records(db)}
    assert urls["large.bin"] == http_twin(serve.url)
    assert urls["small.bin"].startswith("ws://")

    # Both are checked on the server by a re-run, each the way it went; nothing is sent.
    again = summary(
        run_resume("upload", str(large), str(small), serve.url, "--db", str(db), "--json")
    )
    assert again["bytes_sent"] == 0
    assert [(f["via"], f["state"]) for f in again["files"]] == [  # type: ignore[union-attr, index]
        ("http", "verified"),
        ("ws", "verified"),
    ]
    assert len(records(db)) == 2


def test_via_ws_and_via_http_force_one_way(
    serve: ServeProcess, large: Path, tmp_path: Path
) -> None:
    small = make_file(tmp_path / "small.bin", 300_000)
    db = str(tmp_path / "c.db")
    by_ws = summary(
        run_resume("upload", str(large), serve.url, "--db", db, "--json", "--via", "ws")
    )
    by_http = summary(
        run_resume(
            "upload", str(small), serve.url, "--db", db, "--json", "--via", "http", "--name", "s"
        )
    )
    assert by_ws["files"][0]["via"] == "ws"  # type: ignore[index]
    assert by_http["files"][0]["via"] == "http"  # type: ignore[index]
    assert by_http["files"][0]["checksum"]  # verified on the server: the digest went along  # type: ignore[index]
    assert (serve.root / "large.bin").read_bytes() == large.read_bytes()
    assert (serve.root / "s").read_bytes() == small.read_bytes()


@pytest.mark.parametrize(
    ("way", "size"),
    [("ws", HTTP_FROM), ("http", 8 * 2**20)],  # sizes a new transfer would send the other way
)
def test_an_interrupted_transfer_continues_the_way_it_began(
    serve: ServeProcess, large: Path, tmp_path: Path, way: str, size: int
) -> None:
    source = large if size == HTTP_FROM else make_file(tmp_path / "mid.bin", size)
    db = tmp_path / "c.db"
    first = start_upload(str(source), serve.url, "--db", str(db), "--via", way, *SLOW)
    wait_until(lambda: committed_chunks(db) > 8, 60, "some chunks committed")
    stop(first)  # SIGKILL
    [(_, url_before, _)] = records(db)

    out = summary(run_resume("upload", str(source), serve.url, "--db", str(db), "--json"))
    [item] = out["files"]  # type: ignore[misc]
    assert item["via"] == way and item["state"] == "completed"
    assert item["resumed_from"] > 0 and item["bytes_sent"] < size
    [(_, url_after, state)] = records(db)  # the same transfer, not a second one
    assert (url_after, state) == (url_before, "completed")
    assert (serve.root / source.name).read_bytes() == source.read_bytes()


@pytest.mark.parametrize("first_via", ["auto", "http"])
def test_two_runs_of_one_file_exclude_each_other_whichever_way_each_goes(
    serve: ServeProcess, large: Path, tmp_path: Path, first_via: str
) -> None:
    """The first run goes over HTTP (auto: a large new file; or asked to); a second run of the
    same file over WebSocket, and a third on auto, are refused with the first's pid while it
    runs."""
    db = tmp_path / "c.db"
    first = start_upload(
        str(large), serve.url, "--db", str(db), "--json", "--via", first_via, *SLOW
    )
    try:
        wait_until(lambda: committed_chunks(db) > 3, 60, "the first run to send chunks")
        for via in ("ws", "auto"):
            second = run_resume("upload", str(large), serve.url, "--db", str(db), "--via", via)
            assert second.returncode == 1, second.stderr
            assert f"another upload of {large} is running (pid {first.pid})" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=120)  # it goes on to the end
    assert first.returncode == 0, err
    assert json.loads(out)["files"][0]["via"] == "http"
    assert (serve.root / "large.bin").read_bytes() == large.read_bytes()
    assert len(records(db)) == 1


def test_two_runs_to_a_tus_url_exclude_each_other(serve: ServeProcess, tmp_path: Path) -> None:
    """The lock holds on the HTTP path alone too (any tus server's URL)."""
    source = make_file(tmp_path / "data.bin", 8 * 2**20)
    db = tmp_path / "c.db"
    url = http_twin(serve.url)
    first = start_upload(str(source), url, "--db", str(db), "--chunk-size", "4k")  # 64 KiB PATCHes
    try:
        wait_until(lambda: committed_chunks(db) > 3, 60, "the first run to send chunks")
        second = run_resume("upload", str(source), url, "--db", str(db), "--json")
        assert second.returncode == 1, second.stderr
        [item] = json.loads(second.stdout)["files"]
        assert item["state"] == "failed" and item["file_id"] is None
        assert f"another upload of {source} is running (pid {first.pid})" in item["error"]
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert (serve.root / "data.bin").read_bytes() == source.read_bytes()
    assert len(records(db)) == 1


@pytest.mark.parametrize("via", ["auto", "http"])
def test_a_plain_http_upload_never_imports_httpx(
    serve: ServeProcess, large: Path, tmp_path: Path, via: str
) -> None:
    """Plain http:// goes over our own h11 connections: httpx (and anyio under it), ~90 ms of
    a start-up, is imported only for TLS and proxies."""
    result = run_resume(
        "upload", str(large), serve.url, "--db", str(tmp_path / "c.db"), "--json", "--via", via,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert summary(result)["files"][0]["via"] == "http"  # type: ignore[index]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "resume.transfer.tus_client" in imported  # the import log is there
    assert not {"httpx", "anyio", "httpcore"} & imported


def test_the_probe_says_yes_only_to_a_server_that_verifies_over_plain_http(
    serve: ServeProcess,
) -> None:
    plain = ConnectOptions()
    twin = http_twin(serve.url)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}/files/"

        async def probe() -> list[bool]:
            return [
                await verified_http(twin, plain) is not None,
                await verified_http(twin, ConnectOptions(use_env_proxy=True)) is not None,
                await verified_http(twin.replace("/files/", "/nothing/"), plain) is not None,
                await verified_http(nobody, plain) is not None,
            ]

        assert asyncio.run(probe()) == [True, False, False, False]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1:1/files/", "--via", "ws"], "--via ws needs"),
        (["ws://127.0.0.1:1", "--via", "ws", "--parallel", "2"], "not with --via ws"),
        (["ws://127.0.0.1:1", "--via", "carrier-pigeon"], "invalid choice"),
    ],
)
def test_ways_that_cannot_work_exit_2_before_anything_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    source = make_file(tmp_path / "data.bin", 10)
    db = tmp_path / "c.db"
    result = run_resume("upload", str(source), *args, "--db", str(db))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not db.exists()
