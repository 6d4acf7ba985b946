"""tus 1.0 conformance of `resume serve`'s /files: every MUST of the core protocol and of each
extension the server advertises, against a real server on 127.0.0.1 (httpx as the client).

Each test names the part of https://tus.io/protocols/resumable-upload it checks.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.transfer.conftest import RunningServer, StartServer, partial_files

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


@pytest.fixture
async def tus(start_server: StartServer) -> AsyncIterator[tuple[httpx.AsyncClient, RunningServer]]:
    server = await start_server(max_file_size=10 * 2**20)
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client, server


async def create(client: httpx.AsyncClient, length: int | None = 11, **metadata: str) -> str:
    headers = {**TUS}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata:
        headers["Upload-Metadata"] = meta(**metadata)
    response = await client.post("/files", headers=headers)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


async def patch(
    client: httpx.AsyncClient, url: str, offset: int, body: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        url, content=body, headers={**TUS, **OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def offset_of(client: httpx.AsyncClient, url: str) -> int:
    response = await client.head(url, headers=TUS)
    assert response.status_code == 200
    return int(response.headers["Upload-Offset"])


# -- core --------------------------------------------------------------------------------------


async def test_options_lists_version_extensions_max_size_and_checksums(tus) -> None:
    """Core 5.2 OPTIONS: 204 with Tus-Version; Tus-Extension, Tus-Max-Size, checksums."""
    client, _ = tus
    response = await client.options("/files")
    assert response.status_code in (200, 204)
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    } <= extensions
    assert response.headers["Tus-Max-Size"] == str(10 * 2**20)
    assert {"sha1", "md5", "sha256", "xxh3"} <= set(
        response.headers["Tus-Checksum-Algorithm"].split(",")
    )


async def test_every_response_but_options_carries_tus_resumable(tus) -> None:
    """Core 5.1: Tus-Resumable MUST be in every response except OPTIONS (errors included)."""
    client, _ = tus
    url = await create(client)
    responses = [
        await client.head(url, headers=TUS),
        await patch(client, url, 0, b"hello"),
        await patch(client, url, 3, b"x"),  # 409
        await client.head("/files/" + "0" * 32, headers=TUS),  # 404
        await client.patch(url, content=b"x", headers={**TUS, "Upload-Offset": "5"}),  # 415
    ]
    for response in responses:
        assert response.headers.get("Tus-Resumable") == "1.0.0", response.status_code


async def test_an_unsupported_version_is_412_with_tus_version_and_changes_nothing(tus) -> None:
    """Core 5.1: a version the server does not support MUST get 412 and Tus-Version."""
    client, _ = tus
    url = await create(client)
    response = await patch(client, url, 0, b"hello", **{"Tus-Resumable": "0.2.2"})
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    missing = await client.post("/files", headers={"Upload-Length": "5"})
    assert missing.status_code == 412
    assert await offset_of(client, url) == 0


async def test_head_reports_offset_length_and_no_store(tus) -> None:
    """Core 3.2 HEAD: Upload-Offset always, Upload-Length when known, Cache-Control: no-store;
    404 for an upload that does not exist."""
    client, _ = tus
    url = await create(client, 11, filename="a.txt")
    await patch(client, url, 0, b"hello")
    response = await client.head(url, headers=TUS)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Length"] == "11"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Upload-Metadata"] == meta(filename="a.txt")
    unknown = await client.head("/files/" + "f" * 32, headers=TUS)
    assert unknown.status_code == 404


async def test_patch_appends_and_answers_204_with_the_new_offset(tus) -> None:
    """Core 3.3 PATCH: 204 with the new Upload-Offset; the bytes land at that offset."""
    client, server = tus
    url = await create(client, 11, filename="hello.txt")
    first = await patch(client, url, 0, b"hello")
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, "5")
    second = await patch(client, url, 5, b" world")
    assert (second.status_code, second.headers["Upload-Offset"]) == (204, "11")
    assert (server.root / "hello.txt").read_bytes() == b"hello world"
    assert partial_files(server.root) == []


async def test_patch_with_a_wrong_content_type_is_415_and_stores_nothing(tus) -> None:
    """Core 3.3: Content-Type MUST be application/offset+octet-stream, else 415."""
    client, _ = tus
    url = await create(client)
    response = await client.patch(
        url,
        content=b"hello",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 415
    assert await offset_of(client, url) == 0


async def test_patch_at_a_wrong_offset_is_409_and_stores_nothing(tus) -> None:
    """Core 3.3: an Upload-Offset that is not the resource's offset MUST get 409, no change."""
    client, server = tus
    url = await create(client, 11, filename="c.txt")
    await patch(client, url, 0, b"hello")
    for wrong in (0, 4, 6):
        response = await patch(client, url, wrong, b"XXXXXX")
        assert response.status_code == 409
    assert await offset_of(client, url) == 5
    await patch(client, url, 5, b" world")
    assert (server.root / "c.txt").read_bytes() == b"hello world"


async def test_patch_without_upload_offset_or_with_garbage_is_400(tus) -> None:
    """Core 3.3: Upload-Offset is required and a non-negative integer."""
    client, _ = tus
    url = await create(client)
    for headers in ({}, {"Upload-Offset": "-1"}, {"Upload-Offset": "1e3"}):
        response = await client.patch(url, content=b"x", headers={**TUS, **OCTETS, **headers})
        assert response.status_code == 400
    assert await offset_of(client, url) == 0


async def test_x_http_method_override(tus) -> None:
    """Core 3.4: X-HTTP-Method-Override MUST be interpreted as the request's method."""
    client, _ = tus
    url = await create(client, 5)
    response = await client.post(
        url,
        content=b"hello",
        headers={**TUS, **OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"


# -- creation, creation-with-upload, creation-defer-length --------------------------------------


async def test_creation_needs_a_length_and_refuses_one_over_tus_max_size(tus) -> None:
    """Creation: 201 with Location; no Upload-Length (nor defer) is 400; over max is 413."""
    client, _ = tus
    neither = await client.post("/files", headers=TUS)
    assert neither.status_code == 400
    huge = await client.post("/files", headers={**TUS, "Upload-Length": str(10 * 2**20 + 1)})
    assert huge.status_code == 413
    both = await client.post(
        "/files", headers={**TUS, "Upload-Length": "5", "Upload-Defer-Length": "1"}
    )
    assert both.status_code == 400
    bad_metadata = await client.post(
        "/files", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": "filename !!!"}
    )
    assert bad_metadata.status_code == 400


async def test_creation_with_upload_takes_the_body_and_reports_the_offset(tus) -> None:
    """creation-with-upload: the POST body is the first bytes; Upload-Offset in the 201."""
    client, server = tus
    response = await client.post(
        "/files",
        content=b"hello",
        headers={**TUS, **OCTETS, "Upload-Length": "11", "Upload-Metadata": meta(filename="w.txt")},
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    url = response.headers["Location"]
    await patch(client, url, 5, b" world")
    assert (server.root / "w.txt").read_bytes() == b"hello world"


async def test_deferred_length_is_reported_then_set_by_a_patch(tus) -> None:
    """creation-defer-length: HEAD says Upload-Defer-Length: 1 until a PATCH gives the length."""
    client, server = tus
    url = await create(client, None, filename="later.txt")
    head = await client.head(url, headers=TUS)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    await patch(client, url, 0, b"hello")
    done = await patch(client, url, 5, b" world", **{"Upload-Length": "11"})
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "11"
    assert (server.root / "later.txt").read_bytes() == b"hello world"


# -- expiration ---------------------------------------------------------------------------------


async def test_unfinished_uploads_carry_upload_expires(tus) -> None:
    """expiration: Upload-Expires (an RFC 9110 date) on creation and PATCH of an unfinished
    upload, in the future by about --expire."""
    client, server = tus
    response = await client.post("/files", headers={**TUS, "Upload-Length": "11"})
    expires = email.utils.parsedate_to_datetime(response.headers["Upload-Expires"])
    assert expires.timestamp() > email.utils.parsedate_to_datetime(
        response.headers["Date"]
    ).timestamp() + 0.9 * (server.config.expire or 0)
    after = await patch(client, response.headers["Location"], 0, b"hello")
    assert "Upload-Expires" in after.headers


# -- checksum -----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
async def test_a_matching_checksum_is_stored_and_a_wrong_one_is_460_discarded(
    tus, algorithm: str
) -> None:
    """checksum: a body matching Upload-Checksum is stored; a mismatch MUST be 460 and the
    chunk discarded; an unsupported algorithm is 400."""
    client, server = tus
    url = await create(client, 11, filename=f"{algorithm}.txt")

    def checksum(data: bytes) -> str:
        return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"

    wrong = await patch(client, url, 0, b"hello", **{"Upload-Checksum": checksum(b"hellO")})
    assert wrong.status_code == 460
    assert await offset_of(client, url) == 0
    right = await patch(client, url, 0, b"hello", **{"Upload-Checksum": checksum(b"hello")})
    assert right.status_code == 204 and right.headers["Upload-Offset"] == "5"
    odd = await patch(client, url, 5, b" world", **{"Upload-Checksum": "crc32 AAAA"})
    assert odd.status_code == 400
    await patch(client, url, 5, b" world", **{"Upload-Checksum": checksum(b" world")})
    assert (server.root / f"{algorithm}.txt").read_bytes() == b"hello world"


async def test_xxh3_checksum_under_its_own_name(tus) -> None:
    """checksum: xxh3 (8-byte big-endian xxh3-64, base64), the algorithm `resume` uses."""
    import xxhash

    client, _ = tus
    url = await create(client, 5)
    digest = base64.b64encode(xxhash.xxh3_64(b"hello").digest()).decode()
    response = await patch(client, url, 0, b"hello", **{"Upload-Checksum": f"xxh3 {digest}"})
    assert response.status_code == 204


# -- termination --------------------------------------------------------------------------------


async def test_delete_terminates_an_upload_and_frees_its_space_and_name(tus) -> None:
    """termination: DELETE is 204; afterwards the upload is gone (404/410) and its data too."""
    client, server = tus
    url = await create(client, 11, filename="gone.txt")
    await patch(client, url, 0, b"hello")
    assert len(partial_files(server.root)) == 1
    response = await client.delete(url, headers=TUS)
    assert response.status_code == 204
    assert (await client.head(url, headers=TUS)).status_code in (404, 410)
    assert (await patch(client, url, 5, b" world")).status_code in (404, 410)
    assert partial_files(server.root) == []
    await create(client, 11, filename="gone.txt")  # the name is free again


# -- concatenation ------------------------------------------------------------------------------


async def test_partial_uploads_concatenate_into_a_final_upload(tus) -> None:
    """concatenation: partial uploads are never published; a final upload joins them in order,
    has their total length, cannot be patched, and is published under its name."""
    client, server = tus
    parts = []
    for piece in (b"hello", b" ", b"world"):
        response = await client.post(
            "/files",
            headers={**TUS, "Upload-Length": str(len(piece)), "Upload-Concat": "partial"},
        )
        assert response.status_code == 201
        url = response.headers["Location"]
        assert (await patch(client, url, 0, piece)).status_code == 204
        head = await client.head(url, headers=TUS)
        assert head.headers["Upload-Concat"] == "partial"
        parts.append(url)
    assert list(server.root.iterdir()) == [server.root / ".resume"]  # nothing published
    final = await client.post(
        "/files",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(parts),
            "Upload-Metadata": meta(filename="joined.txt"),
        },
    )
    assert final.status_code == 201, final.text
    head = await client.head(final.headers["Location"], headers=TUS)
    assert head.headers["Upload-Length"] == "11" and head.headers["Upload-Offset"] == "11"
    assert head.headers["Upload-Concat"].startswith("final;")
    assert (server.root / "joined.txt").read_bytes() == b"hello world"
    refused = await patch(client, final.headers["Location"], 11, b"!")
    assert refused.status_code == 403
    assert partial_files(server.root) == []


async def test_a_final_upload_of_an_unfinished_partial_is_refused(tus) -> None:
    """concatenation: every partial named must exist and be complete."""
    client, _ = tus
    response = await client.post(
        "/files", headers={**TUS, "Upload-Length": "5", "Upload-Concat": "partial"}
    )
    url = response.headers["Location"]
    await patch(client, url, 0, b"he")
    final = await client.post("/files", headers={**TUS, "Upload-Concat": f"final;{url}"})
    assert final.status_code == 400
    unknown = await client.post(
        "/files", headers={**TUS, "Upload-Concat": "final;/files/" + "a" * 32}
    )
    assert unknown.status_code == 400


# -- what resume adds: the WebSocket path's rules -----------------------------------------------


async def test_an_existing_file_is_refused_unless_overwrite_is_asked(tus) -> None:
    """Never over an existing file unless asked: 409 at creation; overwrite metadata replaces
    it atomically at the end."""
    client, server = tus
    (server.root / "keep.txt").write_bytes(b"old")
    refused = await client.post(
        "/files",
        headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta(filename="keep.txt")},
    )
    assert refused.status_code == 409 and "exists" in refused.text
    url = await create(client, 3, filename="keep.txt", overwrite="1")
    assert (server.root / "keep.txt").read_bytes() == b"old"
    await patch(client, url, 0, b"new")
    assert (server.root / "keep.txt").read_bytes() == b"new"


async def test_names_escaping_the_root_are_refused_before_any_byte(tus) -> None:
    """Names are checked at creation with the WebSocket rules: no '..', no .resume/."""
    client, server = tus
    for name in ("../evil", ".resume/server.db", "/etc/passwd", "a//b"):
        response = await client.post(
            "/files", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta(filename=name)}
        )
        assert response.status_code == 400, name
    os.symlink(server.root / ".resume", server.root / "shared")
    response = await client.post(
        "/files",
        headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta(relativePath="shared/x")},
    )
    assert response.status_code == 400 and "symlink" in response.text


async def test_a_name_being_uploaded_over_websocket_or_http_is_refused(tus) -> None:
    """One owner per name across both protocols: a second creation for it gets 409."""
    client, _ = tus
    await create(client, 11, filename="busy.txt")
    again = await client.post(
        "/files",
        headers={**TUS, "Upload-Length": "11", "Upload-Metadata": meta(filename="busy.txt")},
    )
    assert again.status_code == 409 and "name_in_use" in again.text


async def test_a_repeated_creation_with_the_same_resume_id_gets_the_same_upload(tus) -> None:
    """A client killed between the 201 and storing the URL creates again: same upload back."""
    client, _ = tus
    first = await create(client, 11, filename="idem.txt", **{"resume-id": "abc"})
    await patch(client, first, 0, b"hello")
    second = await create(client, 11, filename="idem.txt", **{"resume-id": "abc"})
    assert second == first
    assert await offset_of(client, second) == 5
    other = await client.post(
        "/files",
        headers={
            **TUS,
            "Upload-Length": "12",
            "Upload-Metadata": meta(filename="idem.txt", **{"resume-id": "abc"}),
        },
    )
    assert other.status_code == 409


async def test_get_returns_a_completed_upload_with_ranges(tus) -> None:
    """GET of a completed upload: its bytes (Range honoured); an unfinished one is 404."""
    client, _ = tus
    url = await create(client, 11, filename="g.txt")
    await patch(client, url, 0, b"hello")
    assert (await client.get(url, headers=TUS)).status_code == 404
    await patch(client, url, 5, b" world")
    whole = await client.get(url, headers=TUS)
    assert (whole.status_code, whole.content) == (200, b"hello world")
    part = await client.get(url, headers={**TUS, "Range": "bytes=6-"})
    assert (part.status_code, part.content) == (206, b"world")
    assert part.headers["Content-Range"] == "bytes 6-10/11"
    beyond = await client.get(url, headers={**TUS, "Range": "bytes=20-"})
    assert beyond.status_code == 416


async def test_a_body_past_the_length_is_refused(tus) -> None:
    """Bytes past Upload-Length never land: 413, the offset unchanged."""
    client, _ = tus
    url = await create(client, 5)
    response = await patch(client, url, 0, b"hello world")
    assert response.status_code == 413
    assert await offset_of(client, url) == 0


async def test_cors_preflight_and_exposed_headers(start_server: StartServer) -> None:
    """--cors-origin: a browser preflight is answered, and tus headers are exposed."""
    server = await start_server(cors_origins=("https://app.example",))
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base) as client:
        preflight = await client.options(
            "/files",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "tus-resumable,upload-length",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Upload-Length" in preflight.headers["Access-Control-Allow-Headers"]
        created = await client.post(
            "/files", headers={**TUS, "Upload-Length": "1", "Origin": "https://app.example"}
        )
        assert "Location" in created.headers["Access-Control-Expose-Headers"]
        stranger = await client.post(
            "/files", headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in stranger.headers


async def test_a_token_is_required_and_another_principals_upload_is_invisible(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Bearer tokens apply to /files: 401 without; a JWT's upload globs; ids namespaced."""
    import time

    import jwt

    secret = "s" * 40
    server = await start_server(jwt_secret=secret)
    base = server.url.replace("ws://", "http://")

    def token(sub: str, uploads: list[str]) -> dict[str, str]:
        claims = {"sub": sub, "exp": int(time.time()) + 60, "uploads": uploads}
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}

    async with httpx.AsyncClient(base_url=base) as client:
        anonymous = await client.post("/files", headers={**TUS, "Upload-Length": "1"})
        assert anonymous.status_code == 401
        alice = token("alice", ["alice/*"])
        refused = await client.post(
            "/files",
            headers={
                **TUS,
                **alice,
                "Upload-Length": "1",
                "Upload-Metadata": meta(filename="bob/x"),
            },
        )
        assert refused.status_code == 403
        created = await client.post(
            "/files",
            headers={
                **TUS,
                **alice,
                "Upload-Length": "5",
                "Upload-Metadata": meta(relativePath="alice/x"),
            },
        )
        assert created.status_code == 201
        url = created.headers["Location"]
        bob = token("bob", ["*"])
        assert (await client.head(url, headers={**TUS, **bob})).status_code == 404
        assert (await client.delete(url, headers={**TUS, **bob})).status_code == 404
        assert (await client.head(url, headers={**TUS, **alice})).status_code == 200


async def test_the_http_app_mounts_in_a_starlette_application(tmp_path: Path) -> None:
    """`ResumeApp.http` is an ASGI app: mounted under /uploads in Starlette, its tus endpoint
    answers there and its Location URLs keep the mount prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from resume.server import ServerConfig, build_app

    resume_app = build_app(ServerConfig(root=tmp_path / "mounted"))
    try:
        site = Starlette(routes=[Mount("/uploads", app=resume_app.http)])
        transport = httpx.ASGITransport(app=site)
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as client:
            created = await client.post(
                "/uploads/files",
                headers={**TUS, "Upload-Length": "5", "Upload-Metadata": meta(filename="m.txt")},
            )
            assert created.status_code == 201
            location = created.headers["Location"]
            assert location.startswith("http://site/uploads/files/")
            done = await patch(client, location, 0, b"hello")
            assert done.status_code == 204
        assert (tmp_path / "mounted" / "m.txt").read_bytes() == b"hello"
    finally:
        await resume_app.close()
