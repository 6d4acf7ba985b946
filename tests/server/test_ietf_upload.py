"""The IETF resumable-upload draft (interop version 8) on `resume serve`'s /files, over a real
server on 127.0.0.1: creation with Upload-Complete, offset retrieval, appending with
application/partial-upload, problem details, Upload-Limit and RFC 9530 digests."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.transfer.conftest import RunningServer, StartServer, partial_files

DRAFT = {"Upload-Draft-Interop-Version": "8"}
PARTIAL = {"Content-Type": "application/partial-upload"}


@pytest.fixture
async def draft(
    start_server: StartServer,
) -> AsyncIterator[tuple[httpx.AsyncClient, RunningServer]]:
    server = await start_server(max_file_size=2**20)
    async with httpx.AsyncClient(base_url=server.url.replace("ws://", "http://")) as client:
        yield client, server


def sf_digest(algorithm: str, data: bytes) -> str:
    name = {"sha-256": "sha256", "sha-512": "sha512"}[algorithm]
    return f"{algorithm}=:{base64.b64encode(hashlib.new(name, data).digest()).decode()}:"


async def test_a_complete_creation_publishes_at_once(draft) -> None:
    """Upload-Complete: ?1 with the whole body: 200, complete, the file is published."""
    client, server = draft
    response = await client.post(
        "/files", content=b"hello world", headers={**DRAFT, "Upload-Complete": "?1"}
    )
    assert response.status_code == 200
    assert response.headers["Upload-Complete"] == "?1"
    url_id = response.headers["Location"].rsplit("/", 1)[1]
    assert (server.root / url_id).read_bytes() == b"hello world"  # no name: the upload id


async def test_incomplete_creation_then_head_then_appends(draft) -> None:
    """?0 creation is 201 with Location and Upload-Offset; HEAD reports the offset, not
    complete, with Upload-Limit; PATCH with application/partial-upload appends; the last
    append with ?1 completes it."""
    client, server = draft
    created = await client.post(
        "/files", content=b"hello", headers={**DRAFT, "Upload-Complete": "?0"}
    )
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == "5"
    url = created.headers["Location"]
    head = await client.head(url, headers=DRAFT)
    assert head.status_code == 204
    assert (head.headers["Upload-Offset"], head.headers["Upload-Complete"]) == ("5", "?0")
    assert "max-size=1048576" in head.headers["Upload-Limit"]
    assert head.headers["Cache-Control"] == "no-store"
    done = await client.patch(
        url,
        content=b" world",
        headers={**DRAFT, **PARTIAL, "Upload-Offset": "5", "Upload-Complete": "?1"},
    )
    assert done.status_code == 200 and done.headers["Upload-Complete"] == "?1"
    assert (server.root / url.rsplit("/", 1)[1]).read_bytes() == b"hello world"
    again = await client.patch(
        url,
        content=b"!",
        headers={**DRAFT, **PARTIAL, "Upload-Offset": "11", "Upload-Complete": "?1"},
    )
    assert again.status_code == 400
    assert json.loads(again.text)["type"].endswith("#completed-upload")


async def test_a_mismatching_offset_is_409_with_a_problem_document(draft) -> None:
    """409 with application/problem+json naming expected-offset and provided-offset."""
    client, _ = draft
    created = await client.post(
        "/files", content=b"hello", headers={**DRAFT, "Upload-Complete": "?0"}
    )
    url = created.headers["Location"]
    response = await client.patch(
        url,
        content=b"x",
        headers={**DRAFT, **PARTIAL, "Upload-Offset": "2", "Upload-Complete": "?0"},
    )
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.text)
    assert problem["type"].endswith("#mismatching-upload-offset")
    assert (problem["expected-offset"], problem["provided-offset"]) == (5, 2)


async def test_an_append_needs_the_partial_upload_media_type(draft) -> None:
    client, _ = draft
    created = await client.post("/files", headers={**DRAFT, "Upload-Complete": "?0"})
    response = await client.patch(
        created.headers["Location"],
        content=b"x",
        headers={**DRAFT, "Upload-Offset": "0", "Upload-Complete": "?0"},
    )
    assert response.status_code == 415


async def test_an_inconsistent_length_is_refused(draft) -> None:
    """Upload-Length that disagrees with the complete body: 400 inconsistent-upload-length."""
    client, _ = draft
    response = await client.post(
        "/files",
        content=b"hello",
        headers={**DRAFT, "Upload-Complete": "?1", "Upload-Length": "9"},
    )
    assert response.status_code == 400
    assert json.loads(response.text)["type"].endswith("#inconsistent-upload-length")


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
async def test_repr_digest_is_checked_before_publishing(draft, algorithm: str) -> None:
    """Repr-Digest of the whole upload: a match publishes; a mismatch cancels it (no file)."""
    client, server = draft
    good = await client.post(
        "/files",
        content=b"payload",
        headers={**DRAFT, "Upload-Complete": "?1", "Repr-Digest": sf_digest(algorithm, b"payload")},
    )
    assert good.status_code == 200
    bad = await client.post(
        "/files",
        content=b"payload",
        headers={**DRAFT, "Upload-Complete": "?1", "Repr-Digest": sf_digest(algorithm, b"other")},
    )
    assert bad.status_code == 400
    assert not (server.root / bad.headers.get("Location", "/x").rsplit("/", 1)[1]).exists()
    assert partial_files(server.root) == []


async def test_content_digest_guards_one_append(draft) -> None:
    """Content-Digest of an append that does not match: 400, nothing stored."""
    client, _ = draft
    created = await client.post("/files", headers={**DRAFT, "Upload-Complete": "?0"})
    url = created.headers["Location"]
    bad = await client.patch(
        url,
        content=b"hello",
        headers={
            **DRAFT,
            **PARTIAL,
            "Upload-Offset": "0",
            "Upload-Complete": "?0",
            "Content-Digest": sf_digest("sha-256", b"HELLO"),
        },
    )
    assert bad.status_code == 400
    head = await client.head(url, headers=DRAFT)
    assert head.headers["Upload-Offset"] == "0"


async def test_an_unknown_interop_version_is_refused(draft) -> None:
    client, _ = draft
    response = await client.post(
        "/files", headers={"Upload-Draft-Interop-Version": "3", "Upload-Complete": "?1"}
    )
    assert response.status_code == 400
