"""One owner per file id and per name, against a real `resume serve` process.

Each test reproduces a way the server used to break a promise: an existing file replaced
without a word, two uploads of one name both told `completed`, a published file changed by a
late chunk of an owner that had been taken over, a take-over during finish.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from resume.protocol.upload import Begin, new_file_id
from resume.store import open_store
from resume.transfer.plan import collect_jobs
from resume.transfer.upload import Uploader
from tests.processes import ServeProcess
from tests.transfer.conftest import fast_options, make_file, partial_files
from tests.transfer.wire import chunk_frame, closed_with, raw, request, send_whole

Serve = Callable[..., ServeProcess]


async def test_an_existing_file_is_refused_unless_overwrite_is_asked(serve_process: Serve) -> None:
    """A file resume never wrote stays as it was; overwrite replaces it whole."""
    server = serve_process()
    keep = server.root / "keep.bin"
    keep.write_bytes(b"precious")
    ws = await raw(server.url)
    reply = await request(ws, Begin(new_file_id(), "keep.bin", 4, 4).to_json())
    assert (reply["type"], reply["code"]) == ("error", "exists")
    assert "--overwrite" in reply["message"]
    assert keep.read_bytes() == b"precious"
    assert partial_files(server.root) == []
    done = await send_whole(ws, new_file_id(), "keep.bin", b"new!", 4, overwrite=True)
    assert done["type"] == "done"
    assert keep.read_bytes() == b"new!"


async def test_a_finished_upload_frees_its_name_for_the_next_one(serve_process: Serve) -> None:
    """Once an upload is published its name claim goes: after the file is removed, another
    upload (another file id, on WebSocket or over HTTP) may use the name again at once."""
    import httpx

    server = serve_process()
    ws = await raw(server.url)
    done = await send_whole(ws, new_file_id(), "again.bin", b"one!", 4)
    assert done["type"] == "done"
    (server.root / "again.bin").unlink()
    done = await send_whole(ws, new_file_id(), "again.bin", b"two!", 4)
    assert done["type"] == "done"
    (server.root / "again.bin").unlink()
    async with httpx.AsyncClient() as client:
        created = await client.post(
            server.url.replace("ws://", "http://") + "/files",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "4",
                "Upload-Metadata": "filename YWdhaW4uYmlu",  # again.bin
            },
        )
    assert created.status_code == 201, created.text


async def test_a_file_that_appears_before_publish_is_not_replaced(serve_process: Serve) -> None:
    """The no-replace publish refuses a file created at the destination during the upload."""
    server = serve_process()
    ws = await raw(server.url)
    file_id = new_file_id()
    reply = await request(ws, Begin(file_id, "late.bin", 4, 4).to_json())
    assert reply["state"] == "receiving"
    await ws.send(chunk_frame(file_id, 0, 0, b"mine"))
    assert json.loads(await ws.recv())["type"] == "ack"
    (server.root / "late.bin").write_bytes(b"theirs")
    reply = await request(
        ws, {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(b"mine")}
    )
    assert reply["code"] == "exists"
    assert (server.root / "late.bin").read_bytes() == b"theirs"
    # Nothing was lost: asked again with overwrite, the held chunk is published.
    again = await raw(server.url)
    reply = await request(again, {**Begin(file_id, "late.bin", 4, 4).to_json(), "overwrite": True})
    assert reply["held"] == [[0, xxhash.xxh3_64_hexdigest(b"mine")]]
    reply = await request(
        again,
        {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(b"mine")},
    )
    assert reply["type"] == "done"
    assert (server.root / "late.bin").read_bytes() == b"mine"


async def test_one_name_has_one_unfinished_upload(serve_process: Serve) -> None:
    """A second upload of a name another upload owns is refused, even at the same instant."""
    server = serve_process()
    first, second = await raw(server.url), await raw(server.url)
    ids = new_file_id(), new_file_id()
    replies = await asyncio.gather(
        request(first, Begin(ids[0], "shared.bin", 8, 4).to_json()),
        request(second, Begin(ids[1], "shared.bin", 8, 4).to_json()),
    )
    kinds = sorted(r.get("state") or r.get("code") for r in replies)
    assert kinds == ["name_in_use", "receiving"]
    winner = first if replies[0]["type"] == "state" else second
    winner_id = ids[0] if winner is first else ids[1]
    loser_id = ids[1] if winner is first else ids[0]
    assert (await send_whole(winner, winner_id, "shared.bin", b"abcdefgh", 4))["type"] == "done"
    # Now the name is a published file: the other upload needs overwrite, not a silent win.
    loser = second if winner is first else first
    reply = await request(loser, Begin(loser_id, "shared.bin", 8, 4).to_json())
    assert reply["code"] == "exists"
    assert (server.root / "shared.bin").read_bytes() == b"abcdefgh"


async def test_two_hosts_uploading_one_name_are_not_both_told_completed(
    serve_process: Serve, tmp_path: Path
) -> None:
    """Two clients (their own stores) send different files to one name: one wins, one fails."""
    server = serve_process()
    sources = [make_file(tmp_path / f"host{i}.bin", 3 * 2**20, seed=i) for i in range(2)]

    async def host(i: int) -> str:
        with open_store(tmp_path / f"host{i}.db") as store:
            jobs = collect_jobs([sources[i]], name="report.bin")
            [result] = await Uploader(store, server.url, fast_options()).run(jobs)
            return f"{result.state}: {result.error}"

    outcomes = await asyncio.gather(host(0), host(1))
    assert sorted(o.split(":")[0] for o in outcomes) == ["completed", "failed"]
    loser = next(o for o in outcomes if o.startswith("failed"))
    assert "name_in_use" in loser or "exists" in loser or "being uploaded" in loser, loser
    winner = [o.split(":")[0] for o in outcomes].index("completed")
    assert (server.root / "report.bin").read_bytes() == sources[winner].read_bytes()


async def test_a_published_file_never_changes_after_a_take_over(serve_process: Serve) -> None:
    """An owner taken over cannot write into the file the new owner published."""
    server = serve_process()
    file_id = new_file_id()
    old, new = await raw(server.url), await raw(server.url)
    assert (await request(old, Begin(file_id, "f.bin", 8, 4).to_json()))["state"] == "receiving"
    reply = await send_whole(new, file_id, "f.bin", b"abcdefgh", 4)
    assert reply["type"] == "done"
    with pytest.raises(Exception):  # noqa: B017 - closed with 1008, or already gone
        await old.send(chunk_frame(file_id, 1, 4, b"WXYZ"))
        await old.recv()
    assert (server.root / "f.bin").read_bytes() == b"abcdefgh"


async def test_racing_begins_of_one_file_leave_one_owner(serve_process: Serve) -> None:
    """Two begins of one file id at once: the loser is fenced and closed with 1008."""
    server = serve_process()
    file_id = new_file_id()
    a, b = await raw(server.url), await raw(server.url)
    await asyncio.gather(
        a.send(json.dumps(Begin(file_id, "race.bin", 8, 4).to_json())),
        b.send(json.dumps(Begin(file_id, "race.bin", 8, 4).to_json())),
    )

    async def outcome(ws: object) -> str:
        try:
            message = json.loads(await ws.recv())  # type: ignore[attr-defined]
            if message.get("state") != "receiving":
                return str(message)
            await ws.send(chunk_frame(file_id, 0, 0, b"abcd"))  # type: ignore[attr-defined]
            return json.loads(await ws.recv())["type"]  # type: ignore[attr-defined]
        except Exception as exc:  # the fenced one is closed
            return f"closed {getattr(getattr(exc, 'rcvd', None), 'code', exc)}"

    results = sorted(await asyncio.gather(outcome(a), outcome(b)))
    assert results == ["ack", "closed 1008"]


async def test_a_take_over_during_finish_waits_for_the_publish(serve_process: Serve) -> None:
    """A begin that arrives while the file is verified gets `completed`; the file is whole."""
    server = serve_process()
    chunk = 2**20
    data = os.urandom(24 * chunk)
    file_id = new_file_id()
    first = await raw(server.url)
    assert (await request(first, Begin(file_id, "big.bin", len(data), chunk).to_json()))[
        "held"
    ] == []
    # Out of order, so finish must read the whole file back to verify it: a long finish.
    for index in reversed(range(len(data) // chunk)):
        await first.send(
            chunk_frame(file_id, index, index * chunk, data[index * chunk : (index + 1) * chunk])
        )
    acked = 0
    while acked < len(data) // chunk:
        acked += len(json.loads(await first.recv())["chunks"])
    await first.send(
        json.dumps(
            {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(data)}
        )
    )
    second = await raw(server.url)
    reply = await request(second, Begin(file_id, "big.bin", len(data), chunk).to_json())
    assert reply["state"] == "completed"
    assert json.loads(await first.recv())["type"] == "done"
    assert (server.root / "big.bin").read_bytes() == data


async def test_a_fenced_owner_is_closed_with_1008(serve_process: Serve) -> None:
    """The old connection learns at once that its file was taken over."""
    server = serve_process()
    file_id = new_file_id()
    old, new = await raw(server.url), await raw(server.url)
    await request(old, Begin(file_id, "f.bin", 8, 4).to_json())
    await request(new, Begin(file_id, "f.bin", 8, 4).to_json())
    assert await closed_with(old) == 1008
