"""`resume serve`: one WebSocket server that receives uploads and serves streams.

Embed it in your own `websockets` server::

    app = build_app(ServerConfig(root=Path("/srv/data"), token="s3cret"))
    async with serve(app.handler, "127.0.0.1", 8765, **app.serve_options()):
        await asyncio.Future()

Paths: ``/upload`` for resumable uploads, ``/streams/<name>`` for stream channels (WebSocket),
``/files`` for uploads over HTTP (tus 1.0 and the IETF draft, :mod:`resume.transfer.tus_endpoint`). The bearer
token (plain, or a scoped JWT: :mod:`resume.auth`), when configured, is checked before the
WebSocket upgrade (HTTP 401 otherwise; 403 for a path the token does not allow, when the
endpoint has an ``authorize(principal, argument)`` method). Plain HTTP GETs of ``/healthz``,
``/readyz`` (no token needed), ``/metrics`` and ``/status`` are answered by
:class:`resume.ops.OpsRoutes`. With ``certfile`` the server speaks TLS (``wss://``); with
``client_ca`` it also requires client certificates.

Safety at start: a server on a non-loopback address needs a token or client certificates
(or ``allow_anonymous``); the root is locked so a second server on it refuses to start.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from resume import tls
from resume.asgi import HttpRequest, Receive, Scope, Send, respond
from resume.auth import EVERYONE, Authenticator, Principal, Unauthorized
from resume.direct_body import BodyReader, body_reader
from resume.errors import UsageError
from resume.listener import Listener, WebSocketHandoff
from resume.logs import peer
from resume.metrics import ServerMetrics
from resume.ops import HttpReply, OpsRoutes, ping_store
from resume.protocol.frames import CHANNEL_NAME, SUBPROTOCOL, CloseCode
from resume.protocol.tus_server import Settings as TusSettings
from resume.rootlock import RootLock
from resume.store import Store, open_store
from resume.store.jobs import RoundGate
from resume.stream.endpoint import StreamEndpoint
from resume.transfer.leases import node_name
from resume.transfer.receiver import UploadEndpoint, UploadLimits
from resume.transfer.tus_endpoint import TusEndpoint

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
    max_connections: int = 1024  # more at once get HTTP 503 (clients retry later)
    upload_limits: UploadLimits = field(default_factory=UploadLimits)
    # scoped tokens (resume.auth): JWTs signed with this secret, or verified with this PEM key
    jwt_secret: str | None = None
    jwt_public_key: Path | None = None
    # stream memory and quotas (resume.stream.endpoint)
    tail_memory: int = 64 * 2**20  # all channels' in-memory tails together, bytes
    publish_rate: float | None = None  # messages per second per producer (None: no limit)
    publish_bytes: float | None = None  # bytes per second per producer (None: no limit)
    certfile: Path | None = None  # TLS: certificate chain (PEM); None = plain ws://
    keyfile: Path | None = None  # TLS: its private key, unless it is in certfile
    client_ca: Path | None = None  # TLS: require client certificates signed by these CAs
    allow_anonymous: bool = False  # serve a non-loopback address without any authentication
    min_free_space: int = 256 * 2**20  # /readyz fails below this many free bytes on the root
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to use /files ("*": any)
    # The store: a SQLAlchemy URL or a path; None = <root>/.resume/server.db (SQLite, one
    # node). On PostgreSQL several nodes share it and the root (docs/operations.md).
    db: str | None = None
    lease: float = 10.0  # several nodes: seconds an upload or producer lease lasts unrenewed

    @property
    def state_dir(self) -> Path:
        """Where the server keeps its store and partial files."""
        return self.root / STATE_DIR

    @property
    def store_url(self) -> str:
        """The store's URL: ``db``, else the SQLite file under the root."""
        from resume.store import resolve_url

        return resolve_url(self.db or self.state_dir / "server.db")

    @property
    def shared(self) -> bool:
        """Whether the store may be shared by several nodes (any database but SQLite)."""
        from resume.store.engine import sqlite_path

        return self.db is not None and sqlite_path(self.store_url) is None


class Endpoint(Protocol):
    """What serves one kind of path: uploads or stream channels."""

    max_message_size: int

    async def handle(self, connection: ServerConnection, argument: str) -> None:
        """Serve one connection; ``argument`` is what follows the route prefix."""

    async def close(self) -> None:
        """Finish background work (called once, when the server stops)."""


class HttpEndpoint(Protocol):
    """What serves plain HTTP requests under one path prefix (the tus endpoint)."""

    async def serve_http(
        self, request: HttpRequest, principal: Principal, body: BodyReader, send: Send
    ) -> None:
        """Answer one request whose path starts with the endpoint's prefix."""

    async def close(self) -> None:
        """Finish background work (called once, when the server stops)."""


class ResumeApp:
    """The request check and connection handler; usable inside any `websockets` server, and
    an ASGI app for the plain HTTP routes (:meth:`http`).

    With its own SQLite store (no ``store`` given) the app locks the root: a second app on the
    same root raises :class:`~resume.errors.StoreLocked`. Call :meth:`close` to let go.
    """

    def __init__(self, config: ServerConfig, *, store: Store | None = None) -> None:
        root = config.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"--root {root} is not a directory")
        # Built first: a bad certificate or key fails before anything is created or locked.
        self.auth = Authenticator.from_files(
            token=config.token, jwt_secret=config.jwt_secret, jwt_public_key=config.jwt_public_key
        )
        self.ssl_context = (
            tls.server_context(config.certfile, config.keyfile, client_ca=config.client_ca)
            if config.certfile is not None
            else None
        )
        if config.certfile is None and (config.keyfile or config.client_ca):
            raise UsageError("--keyfile and --client-ca need --certfile")
        created = not root.exists()
        self.lock: RootLock | None = None
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            if store is None and not config.shared:  # nodes sharing a store share the root
                self.lock = RootLock(config.state_dir)
                self.lock.acquire()
        except OSError as exc:
            raise UsageError(f"cannot use --root {root}: {exc.strerror}: {exc.filename}") from exc
        if created:
            log.warning("root %s did not exist: created it", root, extra={"root": str(root)})
        try:
            self.store = store or open_store(config.store_url, durable=True)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        self.config = config
        self.routes: dict[str, Endpoint] = {}
        self.exact: dict[str, Endpoint] = {}
        self.http_routes: dict[str, HttpEndpoint] = {}
        self.active = 0  # connections being served
        self.metrics = ServerMetrics()
        self.metrics.watch_disk(root)
        self.live: dict[ServerConnection, LiveConnection] = {}
        self.ops = OpsRoutes(
            metrics=self.metrics,
            check_store=lambda: ping_store(self.store.engine),
            disk_path=root,
            min_free_space=config.min_free_space,
            live_status=self.live_status,
        )

    def mount_prefix(self, prefix: str, endpoint: Endpoint) -> None:
        """Serve ``/<prefix>/<argument>`` with ``endpoint``."""
        self.routes[prefix] = endpoint

    def mount_exact(self, path: str, endpoint: Endpoint) -> None:
        """Serve exactly ``path`` with ``endpoint``."""
        self.exact[path] = endpoint

    def mount_http(self, prefix: str, endpoint: HttpEndpoint) -> None:
        """Serve plain HTTP requests for ``/<prefix>`` and ``/<prefix>/...`` with ``endpoint``."""
        self.http_routes[prefix] = endpoint

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

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse before the upgrade: 400 for a malformed request, 401 for a bad token, 403 for
        a missing client certificate or a path the token does not allow (``resume.auth``), 404
        for an unknown path, 503 when the server is at its connection limit.

        Health probes are answered before the token check, metrics and status after it.
        """
        if OpsRoutes.is_public(request.path):
            return await self.answer_http(request)
        if len(request.headers.get_all("Authorization")) > 1:
            return connection.respond(
                HTTPStatus.BAD_REQUEST, "more than one Authorization header\n"
            )
        if self.config.client_ca is not None and not tls.has_client_certificate(
            connection.transport
        ):
            self.refused_auth(peer(connection), "GET", request.path, "no client certificate")
            return connection.respond(HTTPStatus.FORBIDDEN, "a client certificate is required\n")
        refused = self.auth.process_request(connection, request)
        if refused is not None:
            why = refused.body.decode(errors="replace").strip()
            self.refused_auth(peer(connection), "GET", request.path, why)
            return refused
        if OpsRoutes.owns(request.path):
            return await self.answer_http(request)
        found = self.route(request.path)
        if found is None:
            log.info(
                "refused %s GET %s: no such endpoint",
                peer(connection),
                request.path,
                extra={"peer": peer(connection), "path": request.path},
            )
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint: {request.path}\n")
        refused = self.auth.authorize(connection, *found)
        if refused is not None:
            return refused
        if self.active >= self.config.max_connections:
            response = connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; try again later\n"
            )
            response.headers["Retry-After"] = "5"
            return response
        return None

    def refused_auth(self, who: str, method: str, path: str, why: str) -> None:
        """Log and count a refused authentication (``why`` never contains the credential)."""
        self.metrics.auth_refused.inc()
        log.info(
            "refused %s %s %s: %s",
            who,
            method,
            path,
            why,
            extra={"peer": who, "path": path, "event": "auth_refused"},
        )

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app for plain HTTP: health and metrics routes, then the HTTP endpoints.

        The same checks as before a WebSocket upgrade: 400 for two ``Authorization`` headers,
        403 without a required client certificate, 401 for a refused token, 404 for an unknown
        path (426 for a WebSocket path asked without the upgrade).
        """
        if scope["type"] != "http":
            return  # lifespan and websocket scopes never reach here (uvicorn hands them off)
        request = HttpRequest.from_scope(scope)
        if OpsRoutes.is_public(request.path):
            await _send_reply(send, await self.ops.answer(request.method, request.path, {}))
            return
        if len(request.all("authorization")) > 1:
            await respond(send, 400, _TEXT, b"more than one Authorization header\n")
            return
        if self.config.client_ca is not None and not request.client_certificate:
            self.refused_auth(request.client, request.method, request.path, "no client certificate")
            await respond(send, 403, _TEXT, b"a client certificate is required\n")
            return
        endpoint, _, _ = request.path.lstrip("/").partition("/")
        http_endpoint = self.http_routes.get(endpoint)
        if request.method == "OPTIONS" and http_endpoint is not None:
            principal = None  # tus: OPTIONS tells capabilities and CORS, with no credentials
        else:
            try:
                principal = self.auth.authenticate(request.header("authorization"))
            except Unauthorized as exc:
                self.refused_auth(request.client, request.method, request.path, str(exc))
                await respond(
                    send,
                    401,
                    [*_TEXT, ("WWW-Authenticate", 'Bearer realm="resume"')],
                    f"{exc}\n".encode(),
                )
                return
        if OpsRoutes.owns(request.path):
            await _send_reply(send, await self.ops.answer(request.method, request.path, {}))
        elif http_endpoint is not None:
            body = body_reader(scope, receive)
            await http_endpoint.serve_http(request, principal or EVERYONE, body, send)
        elif self.route(request.path) is not None:
            await respond(
                send,
                426,
                [*_TEXT, ("Upgrade", "websocket")],
                b"this path is a WebSocket endpoint: upgrade the connection\n",
            )
        else:
            await respond(send, 404, _TEXT, f"no such endpoint: {request.path}\n".encode())

    async def answer_http(self, request: Request) -> Response:
        """A plain HTTP answer from :class:`OpsRoutes`, as a `websockets` response."""
        reply = await self.ops.answer("GET", request.path, request.headers)
        return _response(reply)

    def live_status(self) -> dict[str, Any]:
        """What ``GET /status`` shows: open connections, and who is sending each upload."""
        now = time.time()
        connections: dict[str, int] = {}
        channels: dict[str, list[dict[str, Any]]] = {}
        for live in self.live.values():
            connections[live.endpoint] = connections.get(live.endpoint, 0) + 1
            if live.endpoint == "streams":
                channels.setdefault(live.argument, []).append(
                    {"peer": live.peer, "connected_s": round(now - live.since, 3)}
                )
        uploads = []
        for endpoint in self.exact.values():
            for file_id, upload in getattr(endpoint, "uploads", {}).items():
                owner = getattr(getattr(upload, "owner", None), "ws", None)
                reception = getattr(upload, "reception", None)
                uploads.append(
                    {
                        "file_id": file_id,
                        "name": getattr(reception, "name", None),
                        "owner": peer(owner) if owner is not None else None,
                    }
                )
        return {"connections": connections, "channels": channels, "uploads": uploads}

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
        path = connection.request.path
        label = self.metrics.endpoint_label(path) or "upload"
        live = LiveConnection(label, argument, peer(connection), time.time())
        self.live[connection] = live
        self.metrics.connections.labels(label).inc()
        self.metrics.connections_open.labels(label).inc()
        self.active += 1
        try:
            await endpoint.handle(connection, argument)
        except Exception:
            log.exception("handler for %s failed", path, extra={"peer": live.peer})
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.active -= 1
            del self.live[connection]
            self.metrics.connections_open.labels(label).dec()
            _log_connection(connection, live, path)

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``websockets.asyncio.server.serve`` that this app needs."""
        return {
            "ssl": self.ssl_context,
            "process_request": self.process_request,
            "subprotocols": [SUBPROTOCOL],
            "select_subprotocol": _select_subprotocol,
            "compression": None,
            "max_size": self.max_size(),
            "max_queue": 16,  # frames; /upload narrows it further to a byte budget
            "write_limit": 2**20,
            "ping_interval": self.config.ping_interval,
            "ping_timeout": self.config.ping_timeout,
            "server_header": None,
        }

    async def close(self) -> None:
        """Stop background work of every endpoint, close the store and unlock the root."""
        try:
            for http_endpoint in self.http_routes.values():  # they use the upload endpoint
                await http_endpoint.close()
            for endpoint in {*self.routes.values(), *self.exact.values()}:
                await endpoint.close()
            self.store.close()
        finally:
            if self.lock is not None:
                self.lock.release()


@dataclass(frozen=True, slots=True)
class LiveConnection:
    """An open WebSocket connection, for ``/status`` and the line logged when it ends."""

    endpoint: str  # the metrics label: upload or streams
    argument: str  # the channel name for streams
    peer: str
    since: float  # Unix time it opened


def _log_connection(connection: ServerConnection, live: LiveConnection, path: str) -> None:
    """The one INFO line of a connection: who, where, how it ended, how long it lasted."""
    code = connection.close_code  # None: the server closes it (1000) right after this
    reason = connection.close_reason or ""
    duration = time.time() - live.since
    log.info(
        "connection %s %s closed %s%s after %.1fs",
        live.peer,
        path,
        code if code is not None else 1000,
        f" ({reason})" if reason else "",
        duration,
        extra={
            "event": "connection",
            "peer": live.peer,
            "path": path,
            "close_code": code if code is not None else 1000,
            "duration_s": round(duration, 3),
        },
    )


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


async def _send_reply(send: Send, reply: HttpReply) -> None:
    await respond(send, reply.status, reply.headers, reply.body)


def _response(reply: HttpReply) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
    )
    status = HTTPStatus(reply.status)
    return Response(status.value, status.phrase, headers, reply.body)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (names other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "", a host name or an interface name: assume reachable from outside


def check_exposure(config: ServerConfig) -> None:
    """Refuse an unauthenticated server on a non-loopback address; warn about plain text."""
    if is_loopback(config.host):
        return
    where = config.host or "every interface"
    authenticated = any((config.token, config.jwt_secret, config.jwt_public_key, config.client_ca))
    if not authenticated:
        if not config.allow_anonymous:
            raise UsageError(
                f"refusing to listen on {where} without authentication: anyone who can reach "
                f"it could write into {config.root}. Give --token (or $RESUME_TOKEN), "
                "--jwt-secret / --jwt-public-key, require client certificates with --client-ca, "
                "or pass --allow-anonymous"
            )
        log.warning("listening on %s with no authentication (--allow-anonymous)", where)
    if config.certfile is None:
        log.warning(
            "listening on %s without TLS: the token and the data travel in clear; use "
            "--certfile/--keyfile, or a TLS-terminating proxy in front (docs/operations.md)",
            where,
        )


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Any:
    # Accept clients that offer resume.v1, and raw clients that offer nothing.
    return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None


def build_app(config: ServerConfig) -> ResumeApp:
    """A :class:`ResumeApp` with the upload and stream endpoints mounted."""
    app = ResumeApp(config)
    shared = config.shared or app.store.engine.dialect.name == "postgresql"
    node = node_name()
    gate = RoundGate(app.store.engine, node) if shared else None
    uploads = UploadEndpoint(
        app.store,
        config.root,
        max_file_size=config.max_file_size,
        max_chunk_size=config.max_chunk_size,
        expire=config.expire,
        limits=config.upload_limits,
        lease=config.lease if shared else None,
        gate=gate,
    )
    uploads.node_id = node
    uploads.metrics = app.metrics
    app.metrics.watch_uploads(lambda: sum(u.owner is not None for u in uploads.uploads.values()))
    app.mount_exact("/upload", uploads)
    app.mount_http(
        "files",
        TusEndpoint(
            uploads,
            settings=TusSettings(
                max_size=config.max_file_size,
                expire=config.expire,
                cors_origins=config.cors_origins,
            ),
        ),
    )
    streams = StreamEndpoint(
        app.store,
        max_message_size=config.stream_max_message,
        retention_count=config.retention_count,
        retention_age=config.retention_age,
        tail_memory=config.tail_memory,
        publish_rate=config.publish_rate,
        publish_bytes=config.publish_bytes,
        shared=shared,
        lease=config.lease,
        listen_url=app.store.url if app.store.engine.dialect.name == "postgresql" else None,
        gate=gate,
    )
    streams.metrics = app.metrics
    app.mount_prefix("streams", streams)
    return app


async def run_server(
    config: ServerConfig,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    app_factory: Callable[[ServerConfig], ResumeApp] = build_app,
    after_start: Callable[[Listener], Awaitable[None]] | None = None,
) -> None:
    """Serve until ``stop`` is set, then close every connection with 1001 and return.

    HTTP and WebSocket share the port (:mod:`resume.listener`). Raises :class:`UsageError` for
    a non-loopback address without authentication (see :func:`check_exposure`) and
    :class:`~resume.errors.StoreLocked` if another server holds the root.
    """
    check_exposure(config)
    app = app_factory(config)
    stop = stop or asyncio.Event()
    options = app.serve_options()
    listener = Listener(
        app.http,
        WebSocketHandoff(
            app.handler,
            process_request=app.process_request,
            select_subprotocol=options["select_subprotocol"],
            subprotocols=options["subprotocols"],
            max_size=options["max_size"],
            max_queue=options["max_queue"],
            write_limit=options["write_limit"],
            ping_interval=options["ping_interval"],
            ping_timeout=options["ping_timeout"],
        ),
        host=config.host,
        port=config.port,
        ssl_context=app.ssl_context,
    )
    try:
        try:
            host, port = await listener.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from exc
        scheme = "wss" if app.ssl_context is not None else "ws"
        url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        try:
            if app.lock is not None:
                fingerprint = tls.certificate_sha256(config.certfile) if config.certfile else None
                app.lock.describe(url=url, cert_sha256=fingerprint)
            log.info("listening on %s (root %s)", url, config.root, extra={"url": url})
            if ready is not None:
                ready(url)
            if after_start is not None:
                await after_start(listener)
            await stop.wait()
            app.ops.stopping = True
        finally:
            await listener.stop(code=CloseCode.GOING_AWAY, reason="server stopping")
    finally:
        await app.close()


__all__ = [
    "Endpoint",
    "HttpEndpoint",
    "ResumeApp",
    "ServerConfig",
    "build_app",
    "check_exposure",
    "is_loopback",
    "run_server",
]
