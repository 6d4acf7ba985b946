"""PATCH bodies read straight from the socket into the server's buffers (resume/direct_body.py),
past uvicorn and h11: the bytes, the HTTP connection after them, and the fallback, against a
real `resume serve` on 127.0.0.1.

Each test spies on the real :class:`BodyReader` objects (nothing is replaced) to see which
way a body went: ``direct_bytes`` counts the bytes the kernel wrote into the server's buffer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from resume import direct_body
from resume.transfer.receiver import UploadLimits
from tests.transfer.conftest import RunningServer, StartServer

TUS = {"Tus-Resumable": "1.0.0"}
MiB = 2**20


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> list[direct_body.BodyReader]:
    """Every BodyReader the server makes during the test."""
    made: list[direct_body.BodyReader] = []
    original = direct_body.BodyReader.__init__

    def spy(self: direct_body.BodyReader, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(direct_body.BodyReader, "__init__", spy)
    return made


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(upload_limits=UploadLimits(idle_timeout=1.0))


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield http


async def create(client: httpx.AsyncClient, length: int, name: str) -> str:
    import base64

    metadata = "filename " + base64.b64encode(name.encode()).decode()
    response = await client.post(
        "/files", headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata}
    )
    assert response.status_code == 201, response.text
    return response.headers["Location"].split("/", 3)[3]  # the path, without scheme and host


def patch_head(path: str, offset: int, length: int, extra: str = "") -> bytes:
    lines = [
        f"PATCH /{path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Tus-Resumable: 1.0.0",
        f"Upload-Offset: {offset}",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {length}",
    ]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def response_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers of one response (whose body, if any, is read and dropped)."""
    status = int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
    headers = {}
    while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if int(headers.get("content-length", "0")):
        await reader.readexactly(int(headers["content-length"]))
    return status, headers


async def connect(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.url.removeprefix("ws://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_a_large_body_goes_straight_into_the_buffer_and_lands_intact(
    server: RunningServer, client: httpx.AsyncClient, readers: list[direct_body.BodyReader]
) -> None:
    """All but what uvicorn read with the request head bypasses it; the file is the bytes."""
    data = os.urandom(9 * MiB + 4099)  # crosses chunk and buffer edges, ends off a page
    path = await create(client, len(data), "direct.bin")
    response = await client.patch(
        f"/{path}",
        content=data,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
    )
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    direct = sum(r.direct_bytes for r in readers)
    assert direct >= len(data) - 512 * 1024, direct  # only the first read went through h11
    assert (server.root / "direct.bin").read_bytes() == data


async def test_the_connection_serves_requests_after_a_direct_body_even_pipelined(
    server: RunningServer, client: httpx.AsyncClient, readers: list[direct_body.BodyReader]
) -> None:
    """h11 ends the request as usual: on the same connection, a HEAD written in the same
    send as the end of the body is answered, then a second PATCH finishes the upload."""
    data = os.urandom(6 * MiB)
    half = 3 * MiB
    path = await create(client, len(data), "pipelined.bin")
    reader, writer = await connect(server)
    try:
        head = f"HEAD /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n\r\n"
        writer.write(patch_head(path, 0, half) + data[:half] + head.encode())
        await writer.drain()
        status, headers = await response_of(reader)
        assert status == 204 and headers["upload-offset"] == str(half)
        status, headers = await response_of(reader)
        assert status == 200 and headers["upload-offset"] == str(half)
        writer.write(patch_head(path, half, len(data) - half) + data[half:])
        await writer.drain()
        status, headers = await response_of(reader)
        assert status == 204 and headers["upload-offset"] == str(len(data))
    finally:
        writer.close()
    assert sum(r.direct_bytes for r in readers) > 4 * MiB
    assert (server.root / "pipelined.bin").read_bytes() == data


async def test_a_client_gone_in_the_middle_of_a_direct_body_leaves_what_arrived(
    server: RunningServer, client: httpx.AsyncClient, readers: list[direct_body.BodyReader]
) -> None:
    """The connection closes 5 MiB into an 8 MiB body: those bytes are kept, and the server
    goes on serving (a HEAD says where to resume; a PATCH from there completes the file)."""
    data = os.urandom(8 * MiB)
    sent = 5 * MiB
    path = await create(client, len(data), "cut.bin")
    _, writer = await connect(server)
    writer.write(patch_head(path, 0, len(data)) + data[:sent])
    await writer.drain()
    await asyncio.sleep(0.3)  # let the server take them in
    writer.close()
    offset = -1
    for _ in range(100):
        head = await client.head(f"/{path}", headers=TUS)
        offset = int(head.headers["Upload-Offset"])
        if offset == sent:
            break
        await asyncio.sleep(0.05)
    assert offset == sent
    assert sum(r.direct_bytes for r in readers) > 4 * MiB
    rest = await client.patch(
        f"/{path}",
        content=data[sent:],
        headers={
            **TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(sent),
        },
    )
    assert rest.status_code == 204
    assert (server.root / "cut.bin").read_bytes() == data


async def test_a_stalled_direct_body_is_answered_408_with_its_bytes_kept(
    server: RunningServer, client: httpx.AsyncClient, readers: list[direct_body.BodyReader]
) -> None:
    """A body that stops after 2 MiB (read past uvicorn) is answered 408 after the idle
    timeout, and the 2 MiB are durable."""
    data = os.urandom(4 * MiB)
    path = await create(client, len(data), "stall.bin")
    reader, writer = await connect(server)
    try:
        writer.write(patch_head(path, 0, len(data)))
        await writer.drain()
        await asyncio.sleep(0.1)  # the head alone first: the body is all read directly
        writer.write(data[: 2 * MiB])
        await writer.drain()
        status, _ = await response_of(reader)
        assert status == 408
    finally:
        writer.close()
    head = await client.head(f"/{path}", headers=TUS)
    assert head.headers["Upload-Offset"] == str(2 * MiB)
    assert sum(r.direct_bytes for r in readers) == 2 * MiB


async def test_a_chunked_body_is_read_through_uvicorn_instead(
    server: RunningServer, client: httpx.AsyncClient, readers: list[direct_body.BodyReader]
) -> None:
    """Without a Content-Length there is no takeover: the same bytes come through receive()."""
    data = os.urandom(3 * MiB + 5)
    path = await create(client, len(data), "chunked.bin")

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    response = await client.patch(
        f"/{path}",
        content=pieces(),  # httpx sends an iterator without a length chunked
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
    )
    assert response.status_code == 204, response.text
    assert sum(r.direct_bytes for r in readers) == 0
    assert (server.root / "chunked.bin").read_bytes() == data
