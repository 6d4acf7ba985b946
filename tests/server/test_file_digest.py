"""Whole-file verification over HTTP: `resume serve` asks for the file's xxh3-128 in
``Repr-Digest`` (``Want-Repr-Digest`` in OPTIONS) and publishes only a file that matches it, as
over WebSocket; `resume upload` to it sends the digest and reports the file verified.
A real server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import xxhash

from resume.store import Store
from resume.transfer.plan import collect_jobs
from resume.transfer.tus_client import TusUploader
from tests.transfer.conftest import StartServer, fast_options

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def digest_of(data: bytes) -> str:
    return "xxh3-128=:" + base64.b64encode(xxhash.xxh3_128_digest(data)).decode() + ":"


async def test_options_asks_for_the_whole_file_xxh3_128(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://")) as client:
        response = await client.options("/files")
    assert "xxh3-128" in response.headers["Want-Repr-Digest"]


async def test_a_file_is_published_only_if_it_matches_its_xxh3_128(
    start_server: StartServer,
) -> None:
    """The digest on the last PATCH is checked before the rename: right, the file is there;
    wrong, it is refused and nothing is published under the name."""
    server = await start_server()
    data = os.urandom(5 * 2**20 + 3)
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://")) as client:
        outcomes = {}
        for name, digest in (("right.bin", digest_of(data)), ("wrong.bin", digest_of(b"x"))):
            meta = "filename " + base64.b64encode(name.encode()).decode()
            created = await client.post(
                "/files",
                headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
            )
            url = created.headers["Location"]
            first = await client.patch(
                url, content=data[: 2**20], headers={**PATCH, "Upload-Offset": "0"}
            )
            assert first.status_code == 204
            last = await client.patch(
                url,
                content=data[2**20 :],
                headers={**PATCH, "Upload-Offset": str(2**20), "Repr-Digest": digest},
            )
            outcomes[name] = last.status_code
    assert outcomes["right.bin"] == 204
    assert (server.root / "right.bin").read_bytes() == data
    assert outcomes["wrong.bin"] in (400, 409, 460), outcomes
    assert not (server.root / "wrong.bin").exists()


async def test_a_malformed_xxh3_128_is_refused_before_any_byte(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://")) as client:
        created = await client.post("/files", headers={**TUS, "Upload-Length": "4"})
        url = created.headers["Location"]
        short = "xxh3-128=:" + base64.b64encode(b"1234").decode() + ":"
        refused = await client.patch(
            url, content=b"abcd", headers={**PATCH, "Upload-Offset": "0", "Repr-Digest": short}
        )
        assert refused.status_code == 400
        head = await client.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == "0"


async def test_resume_upload_over_http_reports_the_file_verified(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """Large (PATCHes) and small (in the creating POST): each result carries the xxh3-128 the
    server checked; the published files are the sources."""
    server = await start_server()
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(3 * 2**20 + 11))
    small.write_bytes(os.urandom(100))
    url = server.url.replace("ws://", "http://") + "/files/"
    uploader = TusUploader(client_store, url, fast_options())
    results = await uploader.run(collect_jobs([big, small]))
    for path, result in zip((big, small), results, strict=True):
        assert result.state == "completed"
        assert result.checksum == xxhash.xxh3_128_hexdigest(path.read_bytes())
        assert (server.root / path.name).read_bytes() == path.read_bytes()
