"""A raw client for the /upload wire protocol: hostile and racing peers in tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
import xxhash
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from resume.protocol.frames import SUBPROTOCOL
from resume.protocol.upload import HEADER_SIZE, Begin, ChunkHeader


async def raw(url: str, path: str = "/upload", **kwargs: Any) -> ClientConnection:
    """A WebSocket to the server that speaks the protocol by hand."""
    return await connect(
        url + path, subprotocols=[SUBPROTOCOL], compression=None, proxy=None, **kwargs
    )


async def request(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a control message and return the next message from the server."""
    await ws.send(json.dumps(message))
    return json.loads(await ws.recv())


async def closed_with(ws: ClientConnection) -> int:
    """Wait for the server to close; the close code it sent."""
    with pytest.raises(ConnectionClosed) as excinfo:
        for _ in range(10):
            await ws.recv()
    assert excinfo.value.rcvd is not None
    return excinfo.value.rcvd.code


def chunk_frame(
    file_id: str, index: int, offset: int, payload: bytes, checksum: str | None = None
) -> bytes:
    """A binary chunk frame, with the right checksum unless one is given."""
    frame = bytearray(HEADER_SIZE + len(payload))
    frame[HEADER_SIZE:] = payload
    ChunkHeader(file_id, index, offset, checksum or xxhash.xxh3_64_hexdigest(payload)).pack(
        into=frame
    )
    return bytes(frame)


async def send_whole(
    ws: ClientConnection, file_id: str, name: str, data: bytes, chunk: int, **begin: Any
) -> dict[str, Any]:
    """Begin, send every chunk, wait for their acks, finish; the server's last answer."""
    reply = await request(ws, {**Begin(file_id, name, len(data), chunk).to_json(), **begin})
    if reply.get("type") != "state" or reply.get("state") != "receiving":
        return reply
    held = {index for index, _ in reply["held"]}
    pending = set()
    for index, offset in enumerate(range(0, len(data), chunk)):
        if index not in held:
            await ws.send(chunk_frame(file_id, index, offset, data[offset : offset + chunk]))
            pending.add(index)
    while pending:
        message = json.loads(await ws.recv())
        if message["type"] != "ack":
            return message
        pending -= {index for index, _ in message["chunks"]}
    return await request(
        ws, {"type": "finish", "file_id": file_id, "checksum": xxhash.xxh3_128_hexdigest(data)}
    )
