"""The client half of the bulk path (resume/net/bulk.py): PATCH bodies sent from the file with
sendfile, h11 keeping the request's state. Against a real `resume serve` on 127.0.0.1 and
against rude TCP servers.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from resume.errors import AckTimeout, ConnectionLost
from resume.net import bulk
from resume.net.http import HttpClient
from tests.transfer.conftest import RunningServer, StartServer

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
MiB = 2**20


@pytest.fixture
async def files_url(start_server: StartServer) -> AsyncIterator[tuple[str, RunningServer]]:
    server = await start_server()
    yield server.url.replace("ws://", "http://") + "/files", server


async def create(url: str, length: int, name: str) -> str:
    metadata = "filename " + base64.b64encode(name.encode()).decode()
    async with httpx.AsyncClient() as client:
        response = await client.post(
            url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata}
        )
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def views_of(data: bytes, start: int, end: int) -> list[memoryview]:
    return [memoryview(data)[start:end]]


async def test_patches_go_from_the_file_on_one_kept_alive_connection(
    files_url, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two PATCHes of a file's ranges: both sent by sendfile, on the same connection, and the
    server's file is the source."""
    url, server = files_url
    data = os.urandom(10 * MiB + 7)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    location = await create(url, len(data), "sent.bin")
    sendfile_bytes: list[int] = []
    original = asyncio.get_running_loop().sendfile

    async def counting(transport, file, offset=0, count=None, **kw):  # type: ignore[no-untyped-def]
        sendfile_bytes.append(count)
        return await original(transport, file, offset, count, **kw)

    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", counting)
    half = 6 * MiB
    connections = []
    with source.open("rb", buffering=0) as file:
        async with HttpClient() as http:
            for start, end in ((0, half), (half, len(data))):
                response = await http.send_file(
                    "PATCH",
                    location,
                    {**PATCH, "Upload-Offset": str(start)},
                    bulk.FileBody(file, start, views_of(data, start, end)),
                )
                assert response.status_code == 204, response.text
                assert response.headers["Upload-Offset"] == str(end)
                connections.append(next(iter(http._plain._idle.values()))[0])
    assert connections[0] is connections[1]  # kept alive, reused
    assert sum(sendfile_bytes) == len(data)
    assert (server.root / "sent.bin").read_bytes() == data


async def test_a_file_shorter_than_the_body_is_a_lost_connection_not_a_hang(
    files_url, tmp_path: Path
) -> None:
    """The file was cut after its bytes were read (and hashed): sendfile sends less than the
    body; the request fails at once and the server keeps only what came."""
    url, _ = files_url
    data = os.urandom(3 * MiB)
    source = tmp_path / "cut.bin"
    source.write_bytes(data[:MiB])  # the file on disk holds only the first MiB
    location = await create(url, len(data), "cut.bin")
    with source.open("rb", buffering=0) as file:
        async with HttpClient(response_timeout=5) as http:
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(
                    http.send_file(
                        "PATCH", location, {**PATCH, "Upload-Offset": "0"},
                        bulk.FileBody(file, 0, views_of(data, 0, len(data))),
                    ),
                    10,
                )  # fmt: skip
    async with httpx.AsyncClient() as client:
        for _ in range(50):
            head = await client.head(location, headers=TUS)
            if int(head.headers["Upload-Offset"]) == MiB:
                break
            await asyncio.sleep(0.1)
    assert int(head.headers["Upload-Offset"]) <= MiB


@pytest.fixture
async def rude() -> AsyncIterator[tuple[str, list[str]]]:
    """Reads a request head and then: 'close' the connection, 'stall' (read, never answer),
    or 'half' (read the body, start a response and close in its middle)."""
    mode = ["close"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if mode[0] == "stall":
            while await reader.read(2**16):
                pass
            return
        if mode[0] == "half":
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 204 No Content\r\nUpload-Off")
            await writer.drain()
            writer.close()
            return
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/files/x", mode
    server.close()


async def send_one_mib(url: str, tmp_path: Path, http: HttpClient) -> None:
    """PATCH a 1 MiB file to ``url`` with ``http`` (raises what the request raises)."""
    source = tmp_path / "s.bin"
    source.write_bytes(os.urandom(MiB))
    data = source.read_bytes()
    with source.open("rb", buffering=0) as file:
        await http.send_file("PATCH", url, PATCH, bulk.FileBody(file, 0, views_of(data, 0, MiB)))


async def test_a_server_that_hangs_up_is_a_lost_connection(rude, tmp_path: Path) -> None:
    url, _ = rude
    async with HttpClient() as http:
        with pytest.raises(ConnectionLost):
            await send_one_mib(url, tmp_path, http)
        assert not any(http._plain._idle.values())


async def test_a_response_cut_in_the_middle_is_a_lost_connection(rude, tmp_path: Path) -> None:
    """Retryable, as over httpx: a server node that dies while answering is not a protocol
    error that ends the run."""
    url, mode = rude
    mode[0] = "half"
    async with HttpClient() as http:
        with pytest.raises(ConnectionLost):
            await send_one_mib(url, tmp_path, http)


async def test_a_server_that_never_answers_is_an_ack_timeout(rude, tmp_path: Path) -> None:
    url, mode = rude
    mode[0] = "stall"
    async with HttpClient(response_timeout=0.5) as http:
        with pytest.raises(AckTimeout):
            await send_one_mib(url, tmp_path, http)


async def test_tls_and_proxies_go_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path is for plain http:// without a proxy only."""
    used: list[str] = []

    async def fake_request(self, method, url, **kw):  # type: ignore[no-untyped-def]
        used.append(url)
        return httpx.Response(204)

    monkeypatch.setattr(HttpClient, "request", fake_request)
    body = bulk.FileBody(None, 0, [memoryview(b"x")])  # type: ignore[arg-type]  # not read
    async with HttpClient(use_env_proxy=True) as http:
        await http.send_file("PATCH", "http://127.0.0.1:1/f", {}, body)
        assert not http._plain._idle
    async with HttpClient() as http:
        await http.send_file("PATCH", "https://127.0.0.1:1/f", {}, body)
        assert not http._plain._idle
    assert used == ["http://127.0.0.1:1/f", "https://127.0.0.1:1/f"]
