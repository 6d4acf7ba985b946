"""A tiny tus 1.0 server with scripted faults, for the client's error branches.

    python tests/interop/hostile_tus.py DATA_DIR [--port N] [--faults JSON]

A plain ASGI app under uvicorn (no framework): creation, creation-with-upload, checksum
(``sha1``/``sha256``/``md5``/``xxh3``, verified for real), concatenation, termination. Upload
state lives in memory, so a restarted server has forgotten every upload (404), while the
bytes of each upload are in ``DATA_DIR/<id>``. ``GET /_log`` returns every request as
``[method, path, status, checksum algorithm or null]``; ``POST /_rewind/<id>/<offset>`` makes
an upload lose what it held beyond ``offset`` (an acknowledgement without fsync, then a power
cut).

Faults (JSON object, all optional):
    "checksums": ["sha1"]       advertise the checksum extension with these algorithms
    "no_concat": true           do not offer concatenation
    "conflict": N               answer the first N PATCHes 409 without storing anything
    "corrupt": N                answer the first N PATCHes 460 (as if the bytes were damaged)
    "busy": N                   answer the first N PATCHes 503
    "locked": N                 answer the first N HEADs 423
    "status": {"POST": 401}     always answer a method with this status
    "gone_after": N             after N PATCHes to the first upload, it is gone (410)
    "patch_delay": SECONDS      sleep before answering each PATCH
    "rtt": SECONDS              sleep before answering every request (a long link)
    "max_size": BYTES           Tus-Max-Size (and 413 beyond it)
    "half": true                store only the first half of every PATCH body (a partial take)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resume.protocol import tus


@dataclass
class Upload:
    length: int
    offset: int = 0
    partial: bool = False
    metadata: str = ""
    gone: bool = False
    patches: int = 0


@dataclass
class State:
    data: Path
    faults: dict[str, Any]
    uploads: dict[str, Upload] = field(default_factory=dict)
    log: list[list[Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    first_upload: str | None = None

    def take(self, fault: str) -> bool:
        """True while fault ``fault`` still has occurrences left (each call uses one)."""
        used = self.counts.get(fault, 0)
        if used < int(self.faults.get(fault, 0)):
            self.counts[fault] = used + 1
            return True
        return False


def make_app(state: State):
    extensions = ["creation", "creation-with-upload", "termination"]
    if not state.faults.get("no_concat"):
        extensions.append("concatenation")
    if state.faults.get("checksums"):
        extensions.append("checksum")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        method = scope["method"]
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if state.faults.get("rtt") and not path.startswith("/_"):
            await asyncio.sleep(float(state.faults["rtt"]))
        status, out, content = await handle(method, path, headers, body)
        algorithm = headers.get("upload-checksum", " ").split(" ")[0] or None
        state.log.append([method, path, status, algorithm])
        out = {"Tus-Resumable": tus.TUS_VERSION, "Cache-Control": "no-store", **out}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), str(v).encode()) for k, v in out.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def handle(
        method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], bytes]:
        if path == "/_log":
            return 200, {"Content-Type": "application/json"}, json.dumps(state.log).encode()
        if path.startswith("/_rewind/"):  # lose bytes it acknowledged, like a cut power
            _, _, upload_id, offset = path.split("/")
            rewound = state.uploads[upload_id]
            rewound.offset = min(rewound.offset, int(offset))
            with (state.data / upload_id).open("r+b") as f:
                f.truncate(rewound.offset)
            return 204, {}, b""
        forced = state.faults.get("status", {}).get(method)
        if forced:
            return int(forced), {}, f"scripted {forced}\n".encode()
        if method == "OPTIONS":
            out: dict[str, Any] = {
                "Tus-Version": tus.TUS_VERSION,
                "Tus-Extension": ",".join(extensions),
            }
            if state.faults.get("checksums"):
                out["Tus-Checksum-Algorithm"] = ",".join(state.faults["checksums"])
            if state.faults.get("max_size"):
                out["Tus-Max-Size"] = state.faults["max_size"]
            return 204, out, b""
        if headers.get("tus-resumable") != tus.TUS_VERSION:
            return 412, {"Tus-Version": tus.TUS_VERSION}, b""
        if method == "POST" and path.rstrip("/") == "/files":
            return create(headers, body)
        upload_id = path.rstrip("/").rsplit("/", 1)[-1]
        upload = state.uploads.get(upload_id)
        if upload is None:
            return 404, {}, b"no such upload\n"
        if upload.gone:
            return 410, {}, b"upload expired\n"
        if method == "HEAD":
            if state.take("locked"):
                return 423, {}, b""
            return 200, {"Upload-Offset": upload.offset, "Upload-Length": upload.length}, b""
        if method == "DELETE":
            del state.uploads[upload_id]
            return 204, {}, b""
        if method == "PATCH":
            return await patch(upload_id, upload, headers, body)
        return 405, {}, b""

    def create(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        concat = headers.get("upload-concat", "")
        upload_id = uuid.uuid4().hex
        if concat.startswith("final;"):
            parts = [u.rstrip("/").rsplit("/", 1)[-1] for u in concat[6:].split()]
            if any(p not in state.uploads for p in parts):
                return 404, {}, b"a partial upload is missing\n"
            with (state.data / upload_id).open("wb") as out:
                for p in parts:
                    out.write((state.data / p).read_bytes())
            length = sum(state.uploads[p].length for p in parts)
            state.uploads[upload_id] = Upload(
                length, length, metadata=headers.get("upload-metadata", "")
            )
            return 201, {"Location": f"/files/{upload_id}"}, b""
        length = int(headers.get("upload-length", "-1"))
        if length < 0:
            return 400, {}, b"Upload-Length required\n"
        if state.faults.get("max_size") and length > int(state.faults["max_size"]):
            return 413, {}, b"too large\n"
        upload = Upload(
            length, partial=concat == "partial", metadata=headers.get("upload-metadata", "")
        )
        state.uploads[upload_id] = upload
        state.first_upload = state.first_upload or upload_id
        (state.data / upload_id).write_bytes(b"")
        out: dict[str, Any] = {"Location": f"/files/{upload_id}"}
        if body:
            with (state.data / upload_id).open("ab") as f:
                f.write(body)
            upload.offset = len(body)
            out["Upload-Offset"] = upload.offset
        return 201, out, b""

    async def patch(
        upload_id: str, upload: Upload, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], bytes]:
        if state.faults.get("patch_delay"):
            await asyncio.sleep(float(state.faults["patch_delay"]))
        if headers.get("content-type") != tus.OFFSET_CONTENT_TYPE:
            return 415, {}, b""
        if state.take("busy"):
            return 503, {}, b"busy, come back later\n"
        if int(headers.get("upload-offset", "-1")) != upload.offset or state.take("conflict"):
            return 409, {}, b"offset mismatch\n"
        if state.take("corrupt"):
            return tus.CHECKSUM_FAILED, {}, b"checksum mismatch\n"
        if "upload-checksum" in headers:
            algorithm, expected = tus.parse_checksum_header(headers["upload-checksum"])
            if tus.digest(algorithm, body) != expected:
                return tus.CHECKSUM_FAILED, {}, b"checksum mismatch\n"
        elif state.faults.get("checksums"):  # strict: offered checksums must be used
            return 400, {}, b"Upload-Checksum required\n"
        if upload.offset + len(body) > upload.length:
            return 400, {}, b"beyond Upload-Length\n"
        if state.faults.get("half") and len(body) > 1:
            body = body[: len(body) // 2]
        with (state.data / upload_id).open("ab") as f:
            f.write(body)
        upload.offset += len(body)
        upload.patches += 1
        gone_after = state.faults.get("gone_after")
        if gone_after and upload_id == state.first_upload and upload.patches >= int(gone_after):
            upload.gone = True
        return 204, {"Upload-Offset": upload.offset}, b""

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--faults", default="{}")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    state = State(args.data, json.loads(args.faults))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/files/", flush=True)
    config = uvicorn.Config(make_app(state), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
