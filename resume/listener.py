"""One port for HTTP and WebSocket: uvicorn parses HTTP, `websockets` speaks WebSocket.

`resume serve` answers plain HTTP (the tus endpoint ``/files``, the health and metrics routes)
and WebSocket (``/upload``, ``/streams/<name>``) on the same port. uvicorn owns the listening
socket, TLS and the HTTP/1.1 parsing (h11 or httptools) and hands HTTP requests to an ASGI app.
When a request asks for a WebSocket upgrade, uvicorn hands the connection to its "WebSocket
protocol class"; ours is :class:`WebSocketHandoff`, which gives the raw connection to a
`websockets` :class:`~websockets.asyncio.server.ServerConnection`, exactly what
``websockets.asyncio.server.serve`` would have created. So every WebSocket endpoint keeps the
`websockets` API (``recv``/``send``/``close``, per-connection frame limits, the opening
handshake with ``process_request``) and nothing is parsed by hand.

::

    listener = Listener(asgi_app, ws_handler, host="127.0.0.1", port=0, **ws_options)
    url = await listener.start()
    ...
    await listener.stop(code=1001, reason="server stopping")
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from websockets.asyncio.server import Server, ServerConnection
from websockets.protocol import State
from websockets.server import ServerProtocol

from resume.asgi import CLIENT_CERTIFICATE, Receive, Scope, Send
from resume.direct_body import BODY_READER, BodyReader
from resume.tls import has_client_certificate

log = logging.getLogger("resume.server")

WebSocketHandler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Any], Awaitable[Any]]


class _Connections(Server):
    """The `websockets` server object that WebSocket connections report to.

    It never listens itself (uvicorn does): it only runs each connection's handler task and
    knows which connections are open, so that stopping can close them with 1001.
    """

    def __init__(self, handler: Callable[[ServerConnection], Awaitable[None]]) -> None:
        super().__init__(_never_listen, handler, logging.getLogger("websockets.server"))
        self.serving = True

    def is_serving(self) -> bool:
        return self.serving


async def _never_listen() -> asyncio.Server:  # pragma: no cover - never called
    raise RuntimeError("uvicorn owns the listening socket")


class _HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with two scope extensions: whether the TLS peer presented a
    certificate (ASGI scopes carry no TLS details; ``--client-ca`` needs to know), and a
    :class:`~resume.direct_body.BodyReader` that reads the request body straight into the
    app's buffers."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        app = self.app
        certificate = has_client_certificate(transport)

        async def with_extensions(scope: Scope, receive: Receive, send: Send) -> None:
            extensions = scope.setdefault("extensions", {})
            if certificate:
                extensions[CLIENT_CERTIFICATE] = True
            if scope["type"] == "http":
                extensions[BODY_READER] = BodyReader(receive, self)
            await app(scope, receive, send)  # type: ignore[arg-type]

        self.app = with_extensions  # type: ignore[assignment]


class WebSocketHandoff:
    """Builds the `websockets` connection for one upgrade request that uvicorn hands over.

    uvicorn calls the instance like a protocol class (``cls(config=, server_state=,
    app_state=)``), then ``connection_made(transport)`` and ``data_received(request head)`` on
    what it returns: a :class:`ServerConnection`, which runs the opening handshake (with
    ``process_request``) and then the handler, like ``websockets.asyncio.server.serve``.
    """

    def __init__(
        self,
        handler: WebSocketHandler,
        *,
        process_request: ProcessRequest | None = None,
        select_subprotocol: Callable[[ServerConnection, Any], Any] | None = None,
        subprotocols: list[Any] | None = None,
        max_size: int | None = 2**20,
        max_queue: int | None = 16,
        write_limit: int = 2**15,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float | None = 10.0,
        open_timeout: float | None = 10.0,
    ) -> None:
        self.handler = handler
        self.process_request = process_request
        self.select_subprotocol = select_subprotocol
        self.subprotocols = subprotocols
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.open_timeout = open_timeout
        self.server: _Connections | None = None  # made inside the running loop

    def connections(self) -> _Connections:
        if self.server is None:
            self.server = _Connections(self._run)
        return self.server

    def __call__(self, **uvicorn_state: Any) -> ServerConnection:
        server = self.connections()
        select = None
        if self.select_subprotocol is not None:
            chooser = self.select_subprotocol

            def select(protocol: ServerProtocol, offered: Any) -> Any:
                return chooser(connection, offered)

        protocol = ServerProtocol(
            subprotocols=self.subprotocols,
            select_subprotocol=select,
            max_size=self.max_size,
        )
        connection = ServerConnection(
            protocol,
            server,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
        )
        return connection

    async def _run(self, connection: ServerConnection) -> None:
        """One connection's life: the opening handshake, then the handler (as `serve` does)."""
        server = self.connections()
        try:
            async with asyncio.timeout(self.open_timeout):
                await connection.handshake(self.process_request, None, None)
            if connection.protocol.state is not State.OPEN:
                connection.transport.abort()
                return
            server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                async with connection:
                    await self.handler(connection)
            except Exception:
                log.error("connection handler failed", exc_info=True)
            finally:
                server.all_connections.discard(connection)
        except Exception:
            connection.transport.abort()  # a handshake that timed out or failed: no leak
        finally:
            server.handler_tasks.discard(asyncio.current_task())  # type: ignore[arg-type]


class Listener:
    """Serves an ASGI app for HTTP and a `websockets` handler for upgrades on one socket."""

    def __init__(
        self,
        http_app: Callable[..., Awaitable[None]],
        websockets: WebSocketHandoff,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        keep_alive: float = 20.0,
    ) -> None:
        self.websockets = websockets
        self.ssl_context = ssl_context
        context = ssl_context
        self.config = uvicorn.Config(
            http_app,
            host=host,
            port=port,
            http=_HttpProtocol,
            ws=websockets,  # type: ignore[arg-type]  # called like a protocol class
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=int(keep_alive),
            timeout_graceful_shutdown=5,
            ssl_context_factory=(lambda _config, _default: context) if context else None,
        )
        self.server = uvicorn.Server(self.config)
        self.socket: socket.socket | None = None
        self._ticker: asyncio.Future[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    async def start(self) -> tuple[str, int]:
        """Bind and listen; returns the bound ``(host, port)``."""
        self.config.load()
        self.websockets.connections()
        self.socket = self.config.bind_socket()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.socket])
        # uvicorn's ticker: keeps the Date header current (and would stop on should_exit).
        self._ticker = asyncio.ensure_future(self.server.main_loop())
        host, port = self.socket.getsockname()[:2]
        return host, port

    async def stop(self, *, code: int = 1001, reason: str = "") -> None:
        """Stop listening, close every WebSocket with ``code``, finish HTTP requests in flight."""
        server = self.websockets.connections()
        server.serving = False
        closing = [
            asyncio.ensure_future(c.close(code, reason)) for c in list(server.all_connections)
        ]
        self.server.should_exit = True
        if self._ticker is not None:
            await self._ticker
        await self.server.shutdown(sockets=[self.socket] if self.socket else None)
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        if server.handler_tasks:
            await asyncio.wait(list(server.handler_tasks), timeout=10)


__all__ = ["Listener", "WebSocketHandoff"]
