"""The plain HTTP answers of `resume serve`: health, readiness, metrics and live status.

Transport-neutral on purpose: :meth:`OpsRoutes.answer` maps (method, path, headers) to an
:class:`HttpReply` (status, headers, body) and knows nothing of the server it runs in. The
`websockets` server calls it from ``process_request``; an ASGI app can call it the same way.

- ``GET /healthz``: liveness. 200 whenever the process answers at all.
- ``GET /readyz``: readiness. 200 when the store answers a query and the root's file system
  has at least ``min_free_space`` bytes free; 503 with the failing check otherwise (and while
  the server is stopping). JSON body either way.
- ``GET /metrics``: the Prometheus text format (see :mod:`resume.metrics`).
- ``GET /status``: what is live right now (connections per endpoint and channel, who owns
  each partial upload), as JSON; ``resume server-status`` reads it.

``/healthz`` and ``/readyz`` are public so that load balancers and orchestrators can probe
without credentials; ``/metrics`` and ``/status`` sit behind the same authentication as the
WebSocket endpoints (the caller decides, with :meth:`OpsRoutes.is_public`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from resume.metrics import CONTENT_TYPE, ServerMetrics

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
PROTECTED_PATHS = frozenset({"/metrics", "/status"})
READY_TIMEOUT = 2.0  # a store that takes longer than this to answer is not ready
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """An HTTP response, independent of the server that sends it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def json(cls, status: int, document: Any) -> HttpReply:
        body = (json.dumps(document, indent=2) + "\n").encode()
        return cls(status, (("Content-Type", JSON), ("Cache-Control", "no-store")), body)

    @classmethod
    def text(cls, status: int, text: str, content_type: str = TEXT) -> HttpReply:
        return cls(
            status, (("Content-Type", content_type), ("Cache-Control", "no-store")), text.encode()
        )


def ping_store(engine: Engine) -> None:
    """One query on the store, outside any transaction (so it never waits for the writer)."""
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT version_num FROM alembic_version")
        cursor.fetchall()
        cursor.close()
    finally:
        connection.close()


class OpsRoutes:
    """Answers ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``."""

    def __init__(
        self,
        *,
        metrics: ServerMetrics,
        check_store: Callable[[], None],
        disk_path: Path,
        min_free_space: int,
        live_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.metrics = metrics
        self.check_store = check_store
        self.disk_path = disk_path
        self.min_free_space = min_free_space
        self.live_status = live_status
        self.stopping = False  # set when the server begins to stop: not ready any more

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` (query string allowed) is one of these routes."""
        return path.split("?", 1)[0] in PUBLIC_PATHS | PROTECTED_PATHS

    @staticmethod
    def is_public(path: str) -> bool:
        """Whether ``path`` is answered without authentication."""
        return path.split("?", 1)[0] in PUBLIC_PATHS

    async def answer(self, method: str, path: str, headers: Mapping[str, str]) -> HttpReply:
        """The reply to one request for a path :meth:`owns` (``headers`` are unused so far)."""
        if method not in ("GET", "HEAD"):
            reply = HttpReply.text(HTTPStatus.METHOD_NOT_ALLOWED, "use GET\n")
            return HttpReply(reply.status, (*reply.headers, ("Allow", "GET, HEAD")), reply.body)
        route = path.split("?", 1)[0]
        if route == "/healthz":
            reply = HttpReply.text(HTTPStatus.OK, "ok\n")
        elif route == "/readyz":
            reply = await self.readiness()
        elif route == "/metrics":
            reply = HttpReply.text(HTTPStatus.OK, self.metrics.render().decode(), CONTENT_TYPE)
        else:
            reply = HttpReply.json(HTTPStatus.OK, self.live_status())
        if method == "HEAD":
            return HttpReply(reply.status, reply.headers, b"")
        return reply

    async def readiness(self) -> HttpReply:
        """200 if the store answers and there is disk space; else 503 naming what failed."""
        checks: dict[str, Any] = {}
        ready = not self.stopping
        if self.stopping:
            checks["server"] = "stopping"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.check_store), READY_TIMEOUT)
            checks["store"] = "ok"
        except TimeoutError:
            checks["store"] = f"no answer within {READY_TIMEOUT:g}s"
            ready = False
        except Exception as exc:  # any failure of the store means "not ready", said plainly
            checks["store"] = f"error: {exc}"
            ready = False
        try:
            free = shutil.disk_usage(self.disk_path).free
        except OSError as exc:
            checks["disk"] = f"error: {exc.strerror}"
            ready = False
        else:
            enough = free >= self.min_free_space
            checks["disk"] = "ok" if enough else "low"
            checks["disk_free_bytes"] = free
            checks["min_free_bytes"] = self.min_free_space
            ready = ready and enough
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return HttpReply.json(status, {"ready": ready, "checks": checks})


__all__ = ["HttpReply", "OpsRoutes", "ping_store"]
