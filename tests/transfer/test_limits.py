"""What one client can make the server hold is bounded, and hostile input is a clean refusal.

Real `resume serve` processes: descriptors and memory are read from /proc of the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from resume.protocol.upload import Begin, new_file_id
from resume.store import Store
from tests.processes import ServeProcess
from tests.transfer.conftest import make_file
from tests.transfer.test_upload import upload
from tests.transfer.wire import chunk_frame, closed_with, raw, request, send_whole

Serve = Callable[..., ServeProcess]


def descriptors(server: ServeProcess) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def rss_bytes(server: ServeProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_an_idle_connection_is_closed(serve_process: Serve) -> None:
    """A connection that sends nothing is closed after --idle-timeout; others are served."""
    server = serve_process("--idle-timeout", "0.5s")
    idle = await raw(server.url, ping_interval=None)
    started = time.monotonic()
    assert await closed_with(idle) == 1000
    assert time.monotonic() - started < 5
    ws = await raw(server.url)
    assert (await send_whole(ws, new_file_id(), "after.bin", b"data", 4))["type"] == "done"


async def test_connections_over_the_limit_get_503_and_the_server_goes_on(
    serve_process: Serve,
) -> None:
    """A flood of idle connections cannot starve new clients for long: 503, then room."""
    server = serve_process("--max-connections", "50", "--idle-timeout", "2s")
    flood = [await raw(server.url, ping_interval=None) for _ in range(50)]
    with pytest.raises(InvalidStatus) as excinfo:
        await raw(server.url)
    assert excinfo.value.response.status_code == 503
    await asyncio.gather(*(closed_with(ws) for ws in flood))  # the idle timeout frees them
    ws = await raw(server.url)
    assert (await send_whole(ws, new_file_id(), "ok.bin", b"data", 4))["type"] == "done"
    assert "Traceback" not in server.log


async def test_unfinished_files_per_connection_are_capped_and_hold_no_descriptors(
    serve_process: Serve,
) -> None:
    """Begins beyond the cap are refused; files not receiving right now hold no descriptor."""
    server = serve_process("--max-files-per-connection", "8")
    ws = await raw(server.url)
    assert (await send_whole(ws, new_file_id(), "warm.bin", b"abcdefgh", 4))["type"] == "done"
    baseline = descriptors(server)  # the store's connections are open by now
    ids = [new_file_id() for _ in range(200)]
    for i, file_id in enumerate(ids[:8]):
        reply = await request(ws, Begin(file_id, f"f{i}.bin", 8, 4).to_json())
        assert reply["state"] == "receiving"
    assert descriptors(server) <= baseline + 1  # begun, not receiving: no descriptor
    refused = [await request(ws, Begin(i, f"{i}.bin", 8, 4).to_json()) for i in ids[8:]]
    assert {r["code"] for r in refused} == {"limit"}
    for file_id in ids[:8]:
        await ws.send(chunk_frame(file_id, 0, 0, b"abcd"))
        assert json.loads(await ws.recv())["type"] == "ack"
    assert descriptors(server) <= baseline + 8 + 1
    await ws.close()
    await asyncio.sleep(0.5)
    assert descriptors(server) <= baseline  # released with the connection
    other = await raw(server.url)  # and another client is not starved of anything
    assert (await send_whole(other, new_file_id(), "g.bin", b"abcdefgh", 4))["type"] == "done"


async def test_a_begin_then_disconnect_holds_no_disk(
    serve_process: Serve, tiny_disk: Path, tmp_path: Path, client_store: Store
) -> None:
    """Nothing is reserved on disk for bytes not yet sent; a begin too big for it is disk_full."""
    server = serve_process("--min-free-space", "0", root=tiny_disk / "root")
    ws = await raw(server.url)
    reply = await request(ws, Begin(new_file_id(), "huge.bin", 2**30, 2**20).to_json())
    assert reply["code"] == "disk_full"
    reply = await request(ws, Begin(new_file_id(), "half.bin", 3 * 2**19, 2**20).to_json())
    assert reply["state"] == "receiving"
    await ws.close()
    # The 1.5 MiB begun above took no space: a 2 MiB upload still fits on the 3 MiB disk.
    source = make_file(tmp_path / "fits.bin", 2 * 2**20)
    [result] = await upload(client_store, server.url, [source])
    assert result.state == "completed"


async def test_reserved_bytes_per_connection_are_capped(serve_process: Serve) -> None:
    """The bytes still to come of one connection's files stay under the configured cap."""
    server = serve_process("--max-reserved-per-connection", "1MiB")
    ws = await raw(server.url)
    assert (await request(ws, Begin(new_file_id(), "a.bin", 600_000, 2**16).to_json()))["state"]
    reply = await request(ws, Begin(new_file_id(), "b.bin", 600_000, 2**16).to_json())
    assert reply["code"] == "limit"


async def test_a_huge_text_frame_is_refused_without_being_buffered(serve_process: Serve) -> None:
    """/upload takes small control messages only: 1009 before the frame is read, RSS flat."""
    server = serve_process()
    before = rss_bytes(server)
    for size in (2**20, 64 * 2**20):
        ws = await raw(server.url, max_size=None, write_limit=2**27)
        with pytest.raises(ConnectionClosed):
            await ws.send("[" + "1," * (size // 2) + "1]")
            await ws.recv()
        assert ws.close_code in (1009, 1006)
    assert rss_bytes(server) - before < 32 * 2**20
    # After a begin with 64 KiB chunks, a text frame between 64 KiB and a chunk is refused too.
    ws = await raw(server.url)
    await request(ws, Begin(new_file_id(), "x.bin", 2**20, 2**16).to_json())
    await ws.send(json.dumps({"type": "finish", "pad": "x" * 70_000}))
    assert await closed_with(ws) == 1009


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "begin", "file_id": "0" * 32, "name": "a", "size": 2**64, "chunk_size": 4}, 1002),
        (
            {"type": "begin", "file_id": "0" * 32, "name": "a", "size": 10**400, "chunk_size": 4},
            1002,
        ),
        ({"type": "begin", "file_id": "0" * 32, "name": "a", "size": 8, "chunk_size": 0}, 1002),
        ({"type": "begin", "file_id": "0" * 32, "name": "a", "size": 2**40, "chunk_size": 1}, 1002),
        (
            {
                "type": "begin",
                "file_id": "0" * 32,
                "name": "a",
                "size": 8,
                "chunk_size": 4,
                "overwrite": "yes",
            },
            1002,
        ),
        ("[" * 50_000 + "]" * 50_000, 1007),
    ],
)
async def test_impossible_sizes_and_deep_json_are_protocol_errors(
    serve_process: Serve, message: object, code: int
) -> None:
    """Never 1011 and no traceback: a clear protocol error, and the server goes on."""
    server = serve_process()
    ws = await raw(server.url)
    text = message if isinstance(message, str) else json.dumps(message)
    if len(text) > 60_000:
        text = "[" * 30_000 + "]" * 30_000
    await ws.send(text)
    assert await closed_with(ws) == code
    other = await raw(server.url)
    assert (await send_whole(other, new_file_id(), "ok.bin", b"data", 4))["type"] == "done"
    assert "Traceback" not in server.log


async def test_two_authorization_headers_are_400(serve_process: Serve) -> None:
    """A malformed request is refused before the upgrade, not a 500."""
    server = serve_process("--token", "s3cret")
    with pytest.raises(InvalidStatus) as excinfo:
        await raw(
            server.url,
            additional_headers=[("Authorization", "Bearer s3cret"), ("Authorization", "Bearer x")],
        )
    assert excinfo.value.response.status_code == 400


async def test_a_chunk_repeated_inside_one_group_commit_is_stored_once(
    serve_process: Serve,
) -> None:
    """Duplicates are idempotent: acked, never a storage error, never SQL to the client."""
    server = serve_process()
    ws = await raw(server.url)
    file_id = new_file_id()
    chunk = 2**20
    data = os.urandom(4 * chunk)
    await request(ws, Begin(file_id, "dup.bin", len(data), chunk).to_json())
    frames = [
        chunk_frame(file_id, i, i * chunk, data[i * chunk : (i + 1) * chunk]) for i in range(4)
    ]
    for frame in (frames[0], frames[0], frames[1], frames[1], frames[0], frames[2], frames[3]):
        await ws.send(frame)
    acked: set[int] = set()
    while acked != {0, 1, 2, 3}:
        message = json.loads(await ws.recv())
        assert message["type"] == "ack", message
        acked |= {index for index, _ in message["chunks"]}
    await ws.send(frames[2])  # already held: acked again without a write
    again = json.loads(await ws.recv())
    assert again["type"] == "ack" and [i for i, _ in again["chunks"]] == [2]
    import xxhash

    reply = await request(
        ws, {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(data)}
    )
    assert reply["type"] == "done"
    assert (server.root / "dup.bin").read_bytes() == data


async def test_a_full_disk_under_the_database_is_disk_full_not_1011(
    serve_process: Serve, tiny_disk: Path
) -> None:
    """When the store cannot write for lack of space the client hears disk_full, plainly."""
    server = serve_process("--min-free-space", "0", root=tiny_disk / "root")
    filler = tiny_disk / "filler"
    with filler.open("wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    ws = await raw(server.url)
    reply = await request(ws, Begin(new_file_id(), "empty.bin", 0, 4).to_json())
    assert (reply["type"], reply["code"]) == ("error", "disk_full")
    assert "SQL" not in reply["message"] and "INSERT" not in reply["message"]
    assert await closed_with(ws) == 1000
    filler.unlink()
    ws = await raw(server.url)
    assert (await send_whole(ws, new_file_id(), "later.bin", b"data", 4))["type"] == "done"
