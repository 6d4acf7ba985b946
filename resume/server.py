"""`resume serve`: one WebSocket server that receives uploads and serves streams.

Embed it in your own `websockets` server::

    app = build_app(ServerConfig(root=Path("/srv/data"), token="s3cret"))
    async with serve(app.handler, "127.0.0.1", 8765, **app.serve_options()):
        await asyncio.Future()

Paths: ``/upload`` for resumable uploads, ``/streams/<name>`` for stream channels. The bearer
token, when configured, is checked before the WebSocket upgrade (HTTP 401 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from resume.errors import UsageError
from resume.protocol.frames import CHANNEL_NAME, SUBPROTOCOL, CloseCode
from resume.store import Store, open_store
from resume.stream.endpoint import StreamEndpoint
from resume.transfer.receiver import UploadEndpoint

log = logging.getLogger("resume.server")

STATE_DIR = ".resume"  # under the root: the server's store and partial files


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `resume serve` can be told."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_file_size: int | None = None  # largest upload accepted, bytes; None = no limit
    max_chunk_size: int = 64 * 2**20  # largest chunk a client may send
    expire: float | None = 7 * 86400  # idle partial uploads older than this are removed
    stream_max_message: int = 2**20  # largest stream message
    retention_count: int | None = 1_000_000  # stream messages kept per channel
    retention_age: float | None = 7 * 86400  # seconds a stream message is kept
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0

    @property
    def state_dir(self) -> Path:
        """Where the server keeps its store and partial files."""
        return self.root / STATE_DIR


class Endpoint(Protocol):
    """What serves one kind of path: uploads or stream channels."""

    max_message_size: int

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one connection; ``argument`` is what follows the route prefix."""

    async def close(self) -> None:
        """Finish background work (called once, when the server stops)."""


class ResumeApp:
    """The request check and connection handler; usable inside any `websockets` server."""

    def __init__(self, config: ServerConfig, *, store: Store | None = None) -> None:
        root = config.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"--root {root} is not a directory")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.store = store or open_store(config.state_dir / "server.db", durable=True)
        self.routes: dict[str, Endpoint] = {}
        self.exact: dict[str, Endpoint] = {}

    def mount_prefix(self, prefix: str, endpoint: Endpoint) -> None:
        """Serve ``/<prefix>/<argument>`` with ``endpoint``."""
        self.routes[prefix] = endpoint

    def mount_exact(self, path: str, endpoint: Endpoint) -> None:
        """Serve exactly ``path`` with ``endpoint``."""
        self.exact[path] = endpoint

    def route(self, path: str) -> tuple[Endpoint, str] | None:
        """The endpoint and argument for a request path, or None."""
        path = path.split("?", 1)[0]
        if path in self.exact:
            return self.exact[path], ""
        prefix, _, argument = path.lstrip("/").partition("/")
        endpoint = self.routes.get(prefix)
        if endpoint is None or not CHANNEL_NAME.match(argument):
            return None
        return endpoint, argument

    def max_size(self) -> int:
        """The largest message any endpoint accepts; each endpoint narrows it per connection."""
        sizes = [e.max_message_size for e in (*self.routes.values(), *self.exact.values())]
        return max(sizes, default=2**20)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse before the upgrade: 401 for a bad token, 404 for an unknown path."""
        if self.config.token is not None:
            supplied = request.headers.get("Authorization", "")
            expected = f"Bearer {self.config.token}"
            if not hmac.compare_digest(supplied.encode(), expected.encode()):
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="resume"'
                return response
        if self.route(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint: {request.path}\n")
        return None

    async def handler(self, connection: ServerConnection) -> None:
        """Serve one connection until it ends; errors close only this connection."""
        assert connection.request is not None
        found = self.route(connection.request.path)
        if found is None:  # process_request already refused it; defensive
            await connection.close(CloseCode.POLICY_VIOLATION, "no such endpoint")
            return
        endpoint, argument = found
        # The server accepts the largest message of any endpoint; narrow it for this one.
        connection.protocol.max_message_size = endpoint.max_message_size
        try:
            await endpoint.handle(connection, argument)
        except Exception:
            log.exception("handler for %s failed", connection.request.path)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``websockets.asyncio.server.serve`` that this app needs."""
        return {
            "process_request": self.process_request,
            "subprotocols": [SUBPROTOCOL],
            "select_subprotocol": _select_subprotocol,
            "compression": None,
            "max_size": self.max_size(),
            "max_queue": 64,
            "write_limit": 2**20,
            "ping_interval": self.config.ping_interval,
            "ping_timeout": self.config.ping_timeout,
            "server_header": None,
        }

    async def close(self) -> None:
        """Stop background work of every endpoint and close the store."""
        for endpoint in {*self.routes.values(), *self.exact.values()}:
            await endpoint.close()
        self.store.close()


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Any:
    # Accept clients that offer resume.v1, and raw clients that offer nothing.
    return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None


def build_app(config: ServerConfig) -> ResumeApp:
    """A :class:`ResumeApp` with the upload and stream endpoints mounted."""
    app = ResumeApp(config)
    app.mount_exact(
        "/upload",
        UploadEndpoint(
            app.store,
            config.root,
            max_file_size=config.max_file_size,
            max_chunk_size=config.max_chunk_size,
            expire=config.expire,
        ),
    )
    app.mount_prefix(
        "streams",
        StreamEndpoint(
            app.store,
            max_message_size=config.stream_max_message,
            retention_count=config.retention_count,
            retention_age=config.retention_age,
        ),
    )
    return app


async def run_server(
    config: ServerConfig,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    app_factory: Callable[[ServerConfig], ResumeApp] = build_app,
    after_start: Callable[[Server], Awaitable[None]] | None = None,
) -> None:
    """Serve until ``stop`` is set, then close every connection with 1001 and return."""
    app = app_factory(config)
    stop = stop or asyncio.Event()
    try:
        async with serve(app.handler, config.host, config.port, **app.serve_options()) as server:
            host, port = server.sockets[0].getsockname()[:2]
            url = f"ws://{host}:{port}"
            log.info("listening on %s (root %s)", url, config.root)
            if ready is not None:
                ready(url)
            if after_start is not None:
                await after_start(server)
            await stop.wait()
            server.close(
                close_connections=True, code=CloseCode.GOING_AWAY, reason="server stopping"
            )
            await server.wait_closed()
    finally:
        await app.close()


__all__ = ["Endpoint", "ResumeApp", "ServerConfig", "build_app", "run_server"]
