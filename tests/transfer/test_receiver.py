"""The /upload endpoint against hostile and broken clients: clear refusals, no damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xxhash
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from resume.protocol.upload import HEADER_SIZE, Begin, new_file_id
from resume.store import Store
from tests.transfer import wire
from tests.transfer.conftest import RunningServer, StartServer, make_file, partial_files
from tests.transfer.test_upload import upload
from tests.transfer.wire import chunk_frame, closed_with, request


async def raw(server: RunningServer, path: str = "/upload", **kwargs: object) -> ClientConnection:
    return await wire.raw(server.url, path, **kwargs)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xff" * 100, 1002),  # garbage binary
        ("{not json", 1007),
        (json.dumps({"type": "launch_missiles"}), 1002),
        (json.dumps({"type": "begin", "file_id": "x"}), 1002),
    ],
)
async def test_garbage_closes_that_connection_only(
    server: RunningServer, client_store: Store, tmp_path: Path, frame: bytes | str, code: int
) -> None:
    """A broken frame gets the right close code; an honest upload alongside still works."""
    healthy = await raw(server)
    bad = await raw(server)
    await bad.send(frame)
    assert await closed_with(bad) == code
    reply = await request(healthy, Begin(new_file_id(), "ok.bin", 0, 4).to_json())
    assert reply["type"] == "state"
    await healthy.close()
    source = make_file(tmp_path / "after.bin", 100_000)
    [result] = await upload(client_store, server.url, [source])
    assert result.state == "completed"


async def test_oversized_frame_is_closed_with_1009(start_server: StartServer) -> None:
    """A frame larger than the biggest allowed chunk is refused with 'message too big'."""
    server = await start_server(max_chunk_size=64 * 1024)
    ws = await raw(server, max_size=None)
    await ws.send(b"\x01" * (64 * 1024 + HEADER_SIZE + 1))
    assert await closed_with(ws) == 1009


async def test_chunk_for_a_file_never_begun_is_a_protocol_error(server: RunningServer) -> None:
    """Chunks must follow a begin on the same connection."""
    ws = await raw(server)
    await ws.send(chunk_frame(new_file_id(), 0, 0, b"data"))
    assert await closed_with(ws) == 1002


async def test_chunk_with_a_lying_offset_or_length_is_refused(server: RunningServer) -> None:
    """Offsets and lengths must match the chunk index: nothing is written elsewhere."""
    ws = await raw(server)
    file_id = new_file_id()
    await request(ws, Begin(file_id, "f.bin", 10, 4).to_json())
    await ws.send(chunk_frame(file_id, 1, 0, b"abcd"))  # index 1 must start at 4
    assert await closed_with(ws) == 1002
    ws = await raw(server)
    await request(ws, Begin(file_id, "f.bin", 10, 4).to_json())
    await ws.send(chunk_frame(file_id, 2, 8, b"abcd"))  # the last chunk has 2 bytes
    assert await closed_with(ws) == 1002


async def test_corrupted_chunk_is_nacked_not_stored(server: RunningServer) -> None:
    """A payload that does not match its checksum is nacked and never acknowledged."""
    ws = await raw(server)
    file_id = new_file_id()
    await request(ws, Begin(file_id, "f.bin", 4, 4).to_json())
    await ws.send(chunk_frame(file_id, 0, 0, b"abcd", checksum="0000000000000000"))
    reply = json.loads(await ws.recv())
    assert reply == {"type": "nack", "file_id": file_id, "index": 0, "reason": "checksum mismatch"}
    again = await request(ws, Begin(file_id, "f.bin", 4, 4).to_json())
    assert again["held"] == []


@pytest.mark.parametrize(
    "name", ["../outside.bin", "/etc/passwd", "a/../../x", "nul\x00.bin", ".resume/server.db"]
)
async def test_names_escaping_the_root_are_refused(server: RunningServer, name: str) -> None:
    """Traversal and reserved names get bad_name; nothing is created; the connection goes on."""
    ws = await raw(server)
    reply = await request(ws, Begin(new_file_id(), name, 4, 4).to_json())
    assert reply["type"] == "error" and reply["code"] == "bad_name"
    assert partial_files(server.root) == []
    assert not (server.root.parent / "outside.bin").exists()
    ok = await request(ws, Begin(new_file_id(), "fine.bin", 4, 4).to_json())
    assert ok["type"] == "state"


async def test_symlink_out_of_the_root_is_refused(server: RunningServer, tmp_path: Path) -> None:
    """A name that resolves through a symlink to outside the root is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (server.root / "link").symlink_to(outside)
    ws = await raw(server)
    reply = await request(ws, Begin(new_file_id(), "link/x.bin", 4, 4).to_json())
    assert reply["code"] == "bad_name"


async def test_wrong_or_missing_token_is_401_before_the_upgrade(start_server: StartServer) -> None:
    """With --token set, the handshake is refused with 401 unless the bearer token matches."""
    server = await start_server(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as excinfo:
            await raw(server, additional_headers=headers)
        assert excinfo.value.response.status_code == 401
    ws = await raw(server, additional_headers={"Authorization": "Bearer s3cret"})
    await ws.close()


async def test_unknown_path_is_404(server: RunningServer) -> None:
    """Only /upload and /streams/NAME exist."""
    with pytest.raises(InvalidStatus) as excinfo:
        await raw(server, path="/nope")
    assert excinfo.value.response.status_code == 404


async def test_a_second_connection_takes_over_a_file(server: RunningServer) -> None:
    """A reconnecting client replaces its half-dead old connection for the same file."""
    file_id = new_file_id()
    old = await raw(server)
    await request(old, Begin(file_id, "f.bin", 8, 4).to_json())
    await old.send(chunk_frame(file_id, 0, 0, b"abcd"))
    assert json.loads(await old.recv())["type"] == "ack"
    new = await raw(server)
    reply = await request(new, Begin(file_id, "f.bin", 8, 4).to_json())
    assert reply["held"] == [[0, xxhash.xxh3_64_hexdigest(b"abcd")]]
    assert await closed_with(old) == 1008
    await new.send(chunk_frame(file_id, 1, 4, b"efgh"))
    assert json.loads(await new.recv())["type"] == "ack"
    reply = await request(
        new,
        {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(b"abcdefgh")},
    )
    assert reply["type"] == "done"
    assert (server.root / "f.bin").read_bytes() == b"abcdefgh"


async def test_wrong_whole_file_checksum_never_reaches_the_final_name(
    server: RunningServer,
) -> None:
    """Every chunk verified but the whole does not match: refused, partial dropped."""
    ws = await raw(server)
    file_id = new_file_id()
    await request(ws, Begin(file_id, "f.bin", 4, 4).to_json())
    await ws.send(chunk_frame(file_id, 0, 0, b"abcd"))
    await ws.recv()
    reply = await request(ws, {"type": "finish", "file_id": file_id, "checksum": "0" * 32})
    assert reply["code"] == "checksum_mismatch"
    assert not (server.root / "f.bin").exists()
    assert partial_files(server.root) == []


async def test_finish_with_missing_chunks_is_refused(server: RunningServer) -> None:
    """A file is never published with holes."""
    ws = await raw(server)
    file_id = new_file_id()
    await request(ws, Begin(file_id, "f.bin", 8, 4).to_json())
    reply = await request(ws, {"type": "finish", "file_id": file_id, "checksum": "0" * 32})
    assert reply["code"] == "incomplete"
    assert not (server.root / "f.bin").exists()
