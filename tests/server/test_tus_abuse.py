"""The tus endpoint under conflict and abuse: racing requests for one upload or one name,
stalled bodies, floods of creations, hostile headers. A real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from resume.transfer.receiver import UploadLimits
from tests.transfer.conftest import RunningServer, StartServer

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def meta(name: str) -> str:
    return "filename " + base64.b64encode(name.encode()).decode()


@pytest.fixture
async def small(
    start_server: StartServer,
) -> AsyncIterator[tuple[httpx.AsyncClient, RunningServer]]:
    limits = UploadLimits(idle_timeout=0.5, max_http_uploads=3)
    server = await start_server(upload_limits=limits)
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://")) as client:
        yield client, server


async def raw_request(
    server: RunningServer, head: str, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), 10)
    return int(line.split()[1])


async def test_unfinished_http_uploads_are_capped(small) -> None:
    """--max-http-uploads: the 4th unfinished upload is refused (429, Retry-After); finishing
    or deleting one makes room."""
    client, _ = small
    urls = []
    for n in range(3):
        response = await client.post(
            "/files", headers={**TUS, "Upload-Length": "4", "Upload-Metadata": meta(f"f{n}")}
        )
        assert response.status_code == 201
        urls.append(response.headers["Location"])
    refused = await client.post("/files", headers={**TUS, "Upload-Length": "4"})
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    await client.delete(urls[0], headers=TUS)
    again = await client.post("/files", headers={**TUS, "Upload-Length": "4"})
    assert again.status_code == 201


async def test_a_stalled_body_is_answered_408_and_its_bytes_kept(small) -> None:
    """A PATCH whose body stops arriving holds nothing for ever: after --idle-timeout it is
    answered 408, the bytes that came are durable, and the upload can go on."""
    client, server = small
    created = await client.post("/files", headers={**TUS, "Upload-Length": "10"})
    url = created.headers["Location"]
    path = url.split(":", 2)[2].split("/", 1)[1]
    reader, writer = await raw_request(
        server,
        f"PATCH /{path} HTTP/1.1\nHost: x\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
        "Content-Type: application/offset+octet-stream\nContent-Length: 10\n",
        b"abc",
    )
    try:
        assert await status_of(reader) == 408
    finally:
        writer.close()
    head = await client.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == "3"
    done = await client.patch(
        url, content=b"defghij", headers={**TUS, **OCTETS, "Upload-Offset": "3"}
    )
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "10"


async def test_a_newer_patch_fences_an_older_one_on_the_same_upload(small) -> None:
    """Two requests append to one upload at once: the newer takes it over, the older is
    fenced (409) and writes nothing more; the file is the newer request's bytes."""
    client, server = small
    created = await client.post(
        "/files", headers={**TUS, "Upload-Length": "8", "Upload-Metadata": meta("race.bin")}
    )
    url = created.headers["Location"]
    path = url.split(":", 2)[2].split("/", 1)[1]
    reader, writer = await raw_request(
        server,
        f"PATCH /{path} HTTP/1.1\nHost: x\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
        "Content-Type: application/offset+octet-stream\nContent-Length: 8\n",
        b"OLD",
    )
    try:
        await asyncio.sleep(0.1)  # the older request owns the upload now
        newer = await client.patch(
            url, content=b"abcdefgh", headers={**TUS, **OCTETS, "Upload-Offset": "0"}
        )
        assert newer.status_code == 204 and newer.headers["Upload-Offset"] == "8"
        writer.write(b"OLDOL")
        await writer.drain()
        assert await status_of(reader) == 409
    finally:
        writer.close()
    assert (server.root / "race.bin").read_bytes() == b"abcdefgh"


async def test_two_creations_racing_for_one_name_leave_one_owner(small) -> None:
    """Two POSTs for the same name at the same moment: one 201, one 409 name_in_use."""
    client, _ = small
    headers = {**TUS, "Upload-Length": "4", "Upload-Metadata": meta("one.bin")}
    first, second = await asyncio.gather(
        client.post("/files", headers=headers), client.post("/files", headers=headers)
    )
    assert sorted((first.status_code, second.status_code)) == [201, 409]


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Length": "99999999999999999999999"},
        {"Upload-Length": "-5"},
        {"Upload-Length": "0x10"},
        {"Upload-Length": "5", "Upload-Metadata": "filename " + "A" * 5},
        {"Upload-Length": "5", "Upload-Concat": "final;"},
        {"Upload-Concat": "final;" + " ".join(f"/files/{n:032x}" for n in range(300))},
        {"Upload-Defer-Length": "2"},
    ],
)
async def test_hostile_creation_headers_are_400_and_the_server_goes_on(small, headers) -> None:
    client, _ = small
    response = await client.post("/files", headers={**TUS, **headers})
    assert response.status_code == 400
    assert (await client.options("/files")).status_code == 204


async def test_oversized_headers_and_bad_ids_never_reach_the_store(small) -> None:
    """64 KiB of metadata is refused (it would be stored); an id that is not ours is 404."""
    client, _ = small
    huge = await client.post(
        "/files", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": "x " + "Q" * 65536}
    )
    assert huge.status_code == 400
    for path in ("/files/../../etc/passwd", "/files/NOT-AN-ID", "/files/" + "g" * 32):
        response = await client.head(path, headers=TUS)
        assert response.status_code == 404, path
    assert (await client.options("/files")).status_code == 204
