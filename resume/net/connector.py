"""Opening WebSocket connections, and the one reconnect loop every client in `resume` uses.

This module is the single boundary where `websockets` and socket exceptions become
:mod:`resume.errors`; retry decisions are made by :func:`resume.errors.classify` only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidProxy,
    InvalidProxyStatus,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
)
from websockets.exceptions import (
    ProtocolError as WsProtocolError,
)
from websockets.uri import parse_uri

from resume import __version__
from resume.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ProtocolError,
    Rejected,
    ResumeError,
    ServerBusy,
    UsageError,
    Verdict,
    classify,
    error_for_close,
    error_for_status,
)
from resume.net.backoff import Backoff
from resume.protocol.frames import SUBPROTOCOL

T = TypeVar("T")
log = logging.getLogger("resume.connect")


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How each connection is opened and kept alive.

    Heartbeats are websockets' ping/pong: a dead link that sends nothing is detected within
    ``ping_interval + ping_timeout + close_timeout`` seconds (after a missed pong, websockets
    sends a close frame and waits ``close_timeout`` for an answer a dead link never gives, so
    that wait is kept short).
    """

    token: str | None = None  # sent as "Authorization: Bearer <token>"
    headers: Mapping[str, str] = field(default_factory=dict)
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 1.0
    max_size: int | None = 2**20  # largest message accepted from the server
    max_queue: int = 32
    write_limit: int = 2**20  # bytes buffered before send() waits for the socket
    subprotocol: str | None = SUBPROTOCOL  # None for servers that do not speak resume.v1
    # TLS for wss:// URLs (resume.tls.client_context); None = the system's default trust store
    ssl: ssl.SSLContext | None = None
    # Opt-in: honour WSS_PROXY, HTTPS_PROXY, HTTP_PROXY... and NO_PROXY from the environment
    use_env_proxy: bool = False


def check_url(url: str) -> None:
    """Raise :class:`UsageError` now if ``url`` is not a ``ws://``/``wss://`` URL (the check
    the first connect would make, so a client can refuse it at construction)."""
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise UsageError(f"not a WebSocket URL: {exc.uri} ({exc.msg})") from None


def translate(exc: BaseException) -> ResumeError | None:
    """Map a websockets/socket exception to the error tree; None if it is not one (a bug)."""
    if isinstance(exc, ResumeError):
        return exc
    if isinstance(exc, InvalidStatus):
        body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
        return error_for_status(exc.response.status_code, body)
    if isinstance(exc, InvalidURI):
        return UsageError(f"not a WebSocket URL: {exc.uri} ({exc.msg})")
    if isinstance(exc, InvalidProxy):
        return UsageError(f"bad proxy setting: {exc}")
    if isinstance(exc, InvalidProxyStatus):
        status = exc.response.status_code
        if status >= 500:
            return ServerBusy(f"proxy unavailable: HTTP {status}", status=status)
        return Rejected(f"proxy refused the connection: HTTP {status}", status=status)
    tls_error = _tls_error(exc)
    if tls_error is not None:
        return tls_error
    if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError | OSError):
        return ConnectError(f"connection closed during the handshake: {exc.__cause__ or exc}")
    if isinstance(exc, InvalidHandshake):
        return ProtocolError(f"WebSocket handshake failed: {exc}")
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is not None:
            return error_for_close(exc.rcvd.code, exc.rcvd.reason)
        if exc.sent is not None:  # we closed: keepalive timeout (1011), oversized message (1009)
            return error_for_close(exc.sent.code, exc.sent.reason)
        return ConnectionLost("connection dropped without a close frame", close_code=1006)
    if isinstance(exc, PayloadTooBig | WsProtocolError):
        return ProtocolError(f"peer broke the WebSocket protocol: {exc}")
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(f"timed out: {exc}" if str(exc) else "timed out")
    if isinstance(exc, EOFError | asyncio.IncompleteReadError):
        return ConnectionLost(f"connection lost: {exc}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve the server's name: {exc.strerror or exc}")
    if isinstance(exc, OSError) and (
        exc.errno in NETWORK_ERRNOS
        or isinstance(exc, ssl.SSLError | ConnectionError)
        # asyncio's connect to several addresses (::1 and 127.0.0.1) failing differently
        or (exc.errno is None and str(exc).startswith("Multiple exceptions"))
    ):
        return ConnectError(f"cannot connect: {exc.strerror or exc}")
    # Any other OSError (a local file, a permission) is not a connection problem: a bug here,
    # re-raised, never retried as "cannot connect".
    return None


def _tls_error(exc: BaseException) -> ResumeError | None:
    """A TLS failure (raised directly, or as the cause of a failed handshake), or None.

    A certificate that does not verify, a protocol mismatch (``wss://`` to a plain server) or
    a server that wants a client certificate will fail the same way on every attempt: fatal.
    Only a TLS connection cut mid-handshake (``SSLEOFError``, ``SSLZeroReturnError``) is a
    dropped connection like any other, and retried.
    """
    error: BaseException | None = exc if isinstance(exc, ssl.SSLError) else None
    if isinstance(exc, InvalidHandshake):  # e.g. the server's alert arrived with its answer
        error = exc.__cause__
    if not isinstance(error, ssl.SSLError):
        return None
    # Built by the ssl module these carry ``reason`` / ``verify_message``; by hand they may not.
    reason = getattr(error, "reason", None) or error
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return ConnectError(f"TLS connection cut: {reason}")
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = getattr(error, "verify_message", None) or reason
        return Rejected(
            f"TLS certificate verification failed: {reason} (for a private CA or a "
            "self-signed server give --cacert FILE)"
        )
    return Rejected(f"TLS handshake failed: {reason}")


# errno values that mean the network or the peer, not this machine's files.
NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH",
        "ENETUNREACH", "ENETDOWN", "ENETRESET", "EHOSTDOWN", "EADDRNOTAVAIL", "ENOTCONN",
        "ESHUTDOWN", "EPROTO", "ENOBUFS",
    )
    if hasattr(errno, name)
)  # fmt: skip


async def open_connection(
    url: str, options: ConnectOptions, extra_headers: Mapping[str, str] | None = None
) -> ClientConnection:
    """Open one WebSocket connection; failures raise :mod:`resume.errors` exceptions."""
    headers = dict(options.headers)
    headers.update(extra_headers or {})
    if options.token:
        headers["Authorization"] = f"Bearer {options.token}"
    # ssl only for wss:// (websockets refuses it with ws://); typed loosely for **.
    tls: dict[str, Any] = (
        {"ssl": options.ssl} if options.ssl is not None and url.startswith("wss:") else {}
    )
    try:
        return await connect(
            url,
            subprotocols=[options.subprotocol] if options.subprotocol else None,  # type: ignore[list-item]
            additional_headers=headers,
            user_agent_header=f"resume/{__version__}",
            compression=None,  # chunks are incompressible; small messages gain little
            proxy=True if options.use_env_proxy else None,
            **tls,
            open_timeout=options.open_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            max_queue=options.max_queue,
            write_limit=options.write_limit,
        )
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Something the reconnect loop did, for callbacks, logs and tests."""

    kind: Literal["connected", "disconnected", "retrying", "gave_up"]
    attempt: int  # consecutive failures so far (0 on a first success)
    url: str
    error: ResumeError | None = None
    delay: float | None = None


@dataclass(slots=True)
class ConnectorStats:
    """Counters of a reconnect loop."""

    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections after the first
    failures: int = 0  # failed attempts and dropped connections


HeadersFactory = Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]]
UrlFactory = Callable[[], str | Awaitable[str]]


class Reconnector:
    """Keep running a session over a WebSocket connection until it completes.

    ``run(session)`` opens a connection and awaits ``session(connection)``. If opening fails or
    the session raises a retryable error, it waits a :class:`Backoff` delay and tries again;
    a fatal error is raised at once. The session's return value is returned.

    ``url`` and ``headers`` may be factories called before every attempt (to refresh a token).
    ``sleep``, ``rng`` and ``clock`` are injectable so tests never really wait.

    With ``app_handshake=True`` a connection counts as up (for the backoff reset) only from
    the session's call to :meth:`established`, so a server that accepts the WebSocket but never
    completes the application's own handshake keeps the delays growing.
    """

    def __init__(
        self,
        url: str | UrlFactory,
        *,
        options: ConnectOptions | None = None,
        backoff: Backoff | None = None,
        headers: HeadersFactory | None = None,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        app_handshake: bool = False,
    ) -> None:
        self.url = url
        self.app_handshake = app_handshake
        self._up_since: float | None = None
        self.options = options or ConnectOptions()
        self.backoff = backoff or Backoff()
        self.headers = headers
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self.on_event = on_event
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self.stats = ConnectorStats()
        self._attempt = 0
        self._failing_since: float | None = None
        self._last_error: ResumeError | None = None

    async def run(self, session: Callable[[ClientConnection], Awaitable[T]]) -> T:
        """Run ``session`` over a connection, reconnecting on retryable errors."""
        while True:
            began = self.clock()
            url = await _resolve(self.url)
            options = self._attempt_options(began)
            try:
                extra = await _resolve(self.headers) if self.headers else None
                connection = await open_connection(url, options, extra)
            except ResumeError as error:
                cut_short = options.open_timeout < self.options.open_timeout
                if isinstance(error, ConnectTimeout) and cut_short and self._last_error:
                    # Our own give_up_after deadline ended this attempt, not the server: say
                    # what the attempts before it found (e.g. "refused").
                    error = self._last_error
                await self._after_failure(url, error, began=began)
                continue
            self._up_since = None if self.app_handshake else self.clock()
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            self._emit(ConnectionEvent("connected", self._attempt, url))
            try:
                result = await session(connection)
            except Exception as exc:
                lost = translate(exc)
                if lost is None:
                    await _abort(connection)
                    raise
                self._emit(ConnectionEvent("disconnected", self._attempt, url, lost))
                up_since = self._up_since
                if up_since is not None and self.clock() - up_since >= self.backoff.min_uptime:
                    self._attempt = 0  # it was a real connection: start the delays over
                    self._failing_since = None
                    self._last_error = None
                await _abort(connection)
                await self._after_failure(url, lost, cause=exc)
                continue
            except BaseException:
                await _abort(connection)
                raise
            await connection.close()
            self._attempt = 0
            self._failing_since = None
            self._last_error = None
            return result

    def established(self) -> None:
        """The session completed its own handshake: the connection counts as up from now."""
        self._up_since = self.clock()

    def _attempt_options(self, began: float) -> ConnectOptions:
        """The options of one attempt: its open timeout ends with ``give_up_after``."""
        if self.give_up_after is None:
            return self.options
        start = began if self._failing_since is None else self._failing_since
        left = max(0.001, start + self.give_up_after - began)
        if left >= self.options.open_timeout:
            return self.options
        return dataclasses.replace(self.options, open_timeout=left)

    async def _after_failure(
        self,
        url: str,
        error: ResumeError,
        cause: BaseException | None = None,
        *,
        began: float | None = None,
    ) -> None:
        """Raise if ``error`` is fatal or a limit is reached; otherwise sleep the next delay.

        ``give_up_after`` counts from the start of the first failed attempt (``began``), so
        the time spent in open attempts is included.
        """
        self.stats.failures += 1
        self._last_error = error
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now if began is None else began
        out_of_attempts = self.max_attempts is not None and self._attempt + 1 >= self.max_attempts
        left = (
            None if self.give_up_after is None else self._failing_since + self.give_up_after - now
        )
        out_of_time = left is not None and left <= 0
        if classify(error) is Verdict.FATAL or out_of_attempts or out_of_time:
            self._emit(ConnectionEvent("gave_up", self._attempt, url, error))
            if cause is not None and cause is not error:
                raise error from cause
            raise error
        delay = self.backoff.delay(self._attempt, self.rng)
        if left is not None:
            delay = min(delay, left)  # then one last attempt, with what time is left
        self._emit(ConnectionEvent("retrying", self._attempt, url, error, delay))
        log.info("%s: %s; retrying in %.2fs (attempt %d)", url, error, delay, self._attempt + 1)
        self._attempt += 1
        await self.sleep(delay)

    def _emit(self, event: ConnectionEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


async def _resolve(value: object) -> Any:
    """A plain value, or the result of calling a (sync or async) factory."""
    result = value() if callable(value) else value
    if isinstance(result, Awaitable):
        result = await result
    return result


async def _abort(connection: ClientConnection) -> None:
    """Drop a connection without the closing handshake (cancelled or crashing)."""
    transport = connection.transport
    if transport is not None:
        transport.abort()
