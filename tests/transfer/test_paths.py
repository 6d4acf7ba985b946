"""Names are resolved against the disk, without following symlinks, and checked at `begin`.

Against a real `resume serve` process, except the fsync check, which watches the server's own
calls in-process (a power cut cannot be staged here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from resume.protocol.upload import Begin, new_file_id
from resume.store import open_store
from tests.processes import ServeProcess
from tests.transfer.conftest import RunningServer, partial_files
from tests.transfer.wire import chunk_frame, raw, request, send_whole

Serve = Callable[..., ServeProcess]


@pytest.mark.parametrize(
    ("link", "target", "name"),
    [
        ("shared", ".resume", "shared/server.db"),  # into the server's own state
        ("cur", ".", "cur/.resume/x"),  # around the reserved-name check
        ("up", "..", "up/escaped.bin"),  # out of the root
    ],
)
async def test_a_symlink_in_the_path_is_never_followed(
    serve_process: Serve, link: str, target: str, name: str
) -> None:
    """Symlinks inside the root cannot reach .resume/ or outside; the server keeps working."""
    server = serve_process()
    (server.root / link).symlink_to(target)
    database = server.root / ".resume" / "server.db"
    before = database.stat().st_size
    ws = await raw(server.url)
    reply = await request(ws, Begin(new_file_id(), name, 4, 4).to_json())
    assert (reply["type"], reply["code"]) == ("error", "bad_name")
    assert "symlink" in reply["message"]
    assert database.stat().st_size >= before
    assert not (server.root.parent / "escaped.bin").exists()
    assert (await send_whole(ws, new_file_id(), "fine.bin", b"data", 4))["type"] == "done"
    server.kill()
    server.start()  # its database was not overwritten: it starts again
    with open_store(database) as store:
        assert store.received.name_holder("fine.bin") is None


async def test_a_symlink_at_the_destination_is_refused(
    serve_process: Serve, tmp_path: Path
) -> None:
    """Overwrite replaces files, never what a symlink points at."""
    server = serve_process()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (server.root / "link.bin").symlink_to(victim)
    ws = await raw(server.url)
    reply = await request(
        ws, {**Begin(new_file_id(), "link.bin", 4, 4).to_json(), "overwrite": True}
    )
    assert reply["code"] == "bad_name"
    assert victim.read_text() == "keep"


async def test_a_parent_swapped_for_a_symlink_before_publish_is_refused(
    serve_process: Serve, tmp_path: Path
) -> None:
    """The publish walks the path again: a directory replaced by a symlink is not followed."""
    server = serve_process()
    (server.root / "d").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = await raw(server.url)
    file_id = new_file_id()
    await request(ws, Begin(file_id, "d/f.bin", 4, 4).to_json())
    await ws.send(chunk_frame(file_id, 0, 0, b"abcd"))
    assert json.loads(await ws.recv())["type"] == "ack"
    (server.root / "d").rmdir()
    (server.root / "d").symlink_to(outside)
    reply = await request(
        ws, {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(b"abcd")}
    )
    assert reply["code"] == "bad_name"
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("setup", "name", "words"),
    [
        (lambda root: (root / "adir").mkdir(), "adir", "directory"),
        (lambda root: (root / "afile").write_bytes(b"x"), "afile/child.bin", "is a file"),
        # under the wire's 4096-byte limit, over the OS's once the root is in front
        (lambda root: None, "/".join(["d" * 200] * 20) + "/" + "x" * 40, "longer than"),
    ],
)
async def test_a_name_that_cannot_be_published_is_refused_at_begin(
    serve_process: Serve, setup: Callable[[Path], object], name: str, words: str
) -> None:
    """A directory, a parent that is a file, a path too long: refused before any byte."""
    server = serve_process()
    setup(server.root)
    ws = await raw(server.url)
    reply = await request(ws, Begin(new_file_id(), name, 1_000_000, 4096).to_json())
    assert reply["code"] == "bad_name"
    assert words in reply["message"]
    assert partial_files(server.root) == []


async def test_new_directories_and_partials_are_fsynced(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial's directory and every directory created for a name are made durable."""
    import resume.transfer.partial as partial_module
    import resume.transfer.root as root_module

    synced: list[int] = []
    real = root_module.fsync_dir

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(root_module, "fsync_dir", spy)
    monkeypatch.setattr(partial_module, "fsync_dir", spy)
    ws = await raw(server.url)
    assert (await send_whole(ws, new_file_id(), "a/b/f.bin", b"data", 4))["type"] == "done"
    root = server.root
    for directory in (root / ".resume" / "partial", root, root / "a", root / "a" / "b"):
        assert directory.stat().st_ino in synced, f"{directory} was never fsynced"
