"""How the upload client takes the server's refusals (CONTRACT.md codes), against a real
WebSocket peer on 127.0.0.1 that answers every ``begin`` with the error its name asks for."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from resume.errors import ServerError
from resume.protocol.frames import SUBPROTOCOL
from resume.store import Store
from resume.store.states import TransferState
from resume.transfer.plan import collect_jobs
from resume.transfer.upload import Uploader
from tests.transfer.conftest import fast_options, make_file


async def refuse_every_begin(ws: ServerConnection) -> None:
    """``begin`` of NAME = "CODE.bin": ``error`` CODE, without a file_id (as on_begin does)."""
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "begin":
            code = message["name"].removesuffix(".bin")
            await ws.send(json.dumps({"type": "error", "code": code, "message": f"said {code}"}))


@pytest.fixture
async def refusing_server() -> AsyncIterator[str]:
    async with serve(refuse_every_begin, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


EXPECTED = {
    "exists": "exists.bin exists on the server; pass --overwrite to replace it",
    "name_in_use": "name_in_use.bin: another unfinished upload on the server is using this name",
    "forbidden": "forbidden.bin: the server's token does not allow this name",
    "limit": "limit.bin: over a limit of the server",
    "too_large": "too_large.bin: too large for the server",
    "bad_name": "bad_name.bin: the server refuses this name",
}


async def test_each_refusal_fails_its_file_with_one_line_and_the_run_goes_on(
    refusing_server: str, client_store: Store, tmp_path: Path
) -> None:
    """exists, name_in_use, forbidden, limit, too_large, bad_name: fatal for that file only."""
    paths = [make_file(tmp_path / f"{code}.bin", 100) for code in EXPECTED]
    results = await Uploader(client_store, refusing_server, fast_options()).run(collect_jobs(paths))
    for result, (code, message) in zip(results, EXPECTED.items(), strict=True):
        assert result.state == "failed", code
        assert (result.error or "").startswith(message), (code, result.error)
        assert "\n" not in (result.error or "")
    states = {s.transfer.name: s.transfer.state for s in client_store.transfers.summaries()}
    assert set(states.values()) == {TransferState.FAILED}


async def test_disk_full_ends_the_run_and_leaves_untried_files_pending(
    refusing_server: str, client_store: Store, tmp_path: Path
) -> None:
    """disk_full is fatal at once and clear; files never tried are not marked failed."""
    full = make_file(tmp_path / "disk_full.bin", 100)
    later = make_file(tmp_path / "later.bin", 100)
    with pytest.raises(ServerError, match="the server's disk is full"):
        await Uploader(client_store, refusing_server, fast_options()).run(
            collect_jobs([full, later])
        )
    states = {s.transfer.name: s.transfer.state for s in client_store.transfers.summaries()}
    assert states["later.bin"] is TransferState.PENDING
