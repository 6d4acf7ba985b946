"""One-off requests to the upload endpoint that are not uploads."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection

from resume.errors import ProtocolError
from resume.net.backoff import Backoff
from resume.net.connector import ConnectOptions, Reconnector
from resume.protocol import frames
from resume.transfer.plan import upload_url

CANCEL_GIVE_UP_AFTER = 15.0


async def cancel_on_server(url: str, file_id: str, options: ConnectOptions) -> None:
    """Ask the server at ``url`` to drop the partial data of ``file_id``.

    Retries like any connection for a short while, then raises the last error.
    """
    _, endpoint = upload_url(url)

    async def session(ws: ClientConnection) -> None:
        await ws.send(frames.encode({"type": "cancel", "file_id": file_id}))
        async with asyncio.timeout(options.open_timeout):
            while True:
                reply = frames.decode(await ws.recv())
                if reply["type"] == "cancelled" and reply.get("file_id") == file_id:
                    return
                if reply["type"] == "error":
                    raise ProtocolError(f"server refused to cancel: {reply.get('message')}")

    connector = Reconnector(
        endpoint,
        options=options,
        backoff=Backoff(base=0.2, cap=2.0),
        give_up_after=CANCEL_GIVE_UP_AFTER,
    )
    await connector.run(session)
