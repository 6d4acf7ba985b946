"""Upload leases when several server nodes share one store (PostgreSQL).

The node that owns an upload holds a lease in the store (:mod:`resume.store.received`):

- :func:`wait_for_lease`: before a node loads a file another node holds, it waits for that
  lease to be released (the other node's connection ended) or to lapse (the node died, or has
  not heard from its client for a lease period), at most ``lease`` seconds and a little more;
  then the client is told to come back later (close 1013, which it retries).
- :class:`LeaseKeeper`: every third of a lease, renews the leases of the files this node owns
  while their client is sending (a chunk in the last lease period) or they are being verified
  and published. A renewal that finds the file taken over (its epoch is no longer ours) fences
  the local owner at once. Chunk commits renew the lease too, in their own transaction.

With one node (SQLite) nothing here runs: ``UploadEndpoint.lease`` is None.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from resume.errors import Fenced, ProtocolError, StoreError
from resume.protocol.frames import CloseCode

if TYPE_CHECKING:
    from resume.store.received import ReceivedRepository
    from resume.transfer.receiver import UploadEndpoint

log = logging.getLogger("resume.receiver")

DEFAULT_LEASE = 10.0  # seconds; `resume serve --lease`
POLL = 0.25  # seconds between looks at a lease another node holds


def node_name() -> str:
    """This server process's name in the store: host, pid and a random part (<= 64 chars)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseBusy(ProtocolError):
    """Another node kept its lease on the file: the client should come back later (1013)."""


async def wait_for_lease(repo: ReceivedRepository, file_id: str, node: str, lease: float) -> None:
    """Return once no other node holds a live lease on ``file_id``; raise LeaseBusy after
    waiting a lease period and a little more (that node still hears from a client)."""
    deadline = time.monotonic() + lease + 2.0
    announced = False
    while True:
        held = await asyncio.to_thread(repo.foreign_lease, file_id, node)
        if held is None:
            return
        if not announced:
            log.info(
                "upload %s is held by node %s for %.1fs more: waiting for it to lapse",
                file_id,
                held.holder,
                held.remaining,
                extra={"file_id": file_id},
            )
            announced = True
        if time.monotonic() >= deadline:
            raise LeaseBusy(
                f"file {file_id} is being received by another server node; try again",
                close_code=CloseCode.TRY_AGAIN_LATER,
            )
        await asyncio.sleep(min(POLL, max(0.01, held.remaining + 0.01)))


class LeaseKeeper:
    """Renews the leases of the uploads this node owns, every third of ``lease``."""

    def __init__(self, endpoint: UploadEndpoint, lease: float) -> None:
        self.endpoint = endpoint
        self.lease = lease
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        """Start renewing (needs a running event loop); idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        """Stop renewing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.renew_round()
            except StoreError as exc:
                log.warning("cannot renew upload leases: %s", exc)

    async def renew_round(self) -> int:
        """Renew every lease still wanted; returns how many were renewed."""
        now = time.monotonic()
        renewed = 0
        for upload in list(self.endpoint.uploads.values()):
            if upload.owner is None or upload.fence < 0:
                continue
            busy = not upload.settled.is_set()  # verifying or publishing
            if not busy and now - upload.active_at > self.lease:
                continue  # its client went quiet: let the lease lapse so it can go elsewhere
            try:
                await asyncio.to_thread(
                    self.endpoint.repo.renew, upload.file_id, upload.fence, self.lease
                )
                renewed += 1
            except Fenced as exc:
                await upload.lost_elsewhere(exc)
        return renewed
