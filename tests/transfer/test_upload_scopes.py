"""Scoped tokens on /upload: names outside the token's `uploads` globs are forbidden, and
file ids are namespaced by the token's subject, against a real `resume serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from resume.protocol.upload import Begin, new_file_id
from tests.processes import ServeProcess, run_resume
from tests.test_auth import SECRET, mint
from tests.transfer.conftest import make_file
from tests.transfer.wire import closed_with, raw, request, send_whole


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "srv", env={"RESUME_JWT_SECRET": SECRET}) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_alice_token_writes_alice_and_never_bob(serve: ServeProcess, tmp_path: Path) -> None:
    """`resume upload` with a token for alice/* lands alice/x; bob/x is one clear line, exit 1."""
    token = mint(sub="alice", uploads=["alice/*"])
    source = make_file(tmp_path / "x.bin", 300_000)
    db = str(tmp_path / "client.db")
    ok = run_resume(
        "upload", str(source), serve.url, "--name", "alice/x.bin", "--token", token, "--db", db
    )
    assert ok.returncode == 0, ok.stderr
    assert (serve.root / "alice" / "x.bin").read_bytes() == source.read_bytes()
    refused = run_resume(
        "upload", str(source), serve.url, "--name", "bob/x.bin", "--token", token, "--db", db
    )
    assert refused.returncode == 1
    assert "does not allow" in refused.stderr and "bob/x.bin" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (serve.root / "bob").exists()


async def test_one_principal_cannot_take_over_anothers_upload(serve: ServeProcess) -> None:
    """The same file id under two subjects is two uploads: no take-over, no shared chunks."""
    file_id = new_file_id()
    alice = await raw(serve.url, additional_headers=bearer(mint(sub="alice", uploads=["*"])))
    mallory = await raw(serve.url, additional_headers=bearer(mint(sub="mallory", uploads=["*"])))
    assert (await request(alice, Begin(file_id, "a.bin", 8, 4).to_json()))["state"] == "receiving"
    reply = await request(mallory, Begin(file_id, "m.bin", 8, 4).to_json())
    assert reply["state"] == "receiving" and reply["held"] == []  # its own, not alice's
    cancel = await request(mallory, {"type": "cancel", "file_id": file_id})
    assert cancel["type"] == "cancelled"
    # Alice's upload went on untouched: it finishes.
    assert (await send_whole(alice, file_id, "a.bin", b"abcdefgh", 4))["type"] == "done"
    assert (serve.root / "a.bin").read_bytes() == b"abcdefgh"
    await mallory.close()
    await alice.close()


async def test_a_token_without_uploads_cannot_begin_anything(serve: ServeProcess) -> None:
    """A stream-only token is refused at begin, and the connection goes on for other requests."""
    ws = await raw(serve.url, additional_headers=bearer(mint(sub="feed", publish=["*"])))
    reply = await request(ws, Begin(new_file_id(), "any.bin", 4, 4).to_json())
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    await ws.close()
    assert await closed_with(ws) in (1000, 1005)
