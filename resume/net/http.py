"""HTTP requests (h11 for plain ``http://``, httpx for the rest), and the retry loop of HTTP
clients.

This module is the single boundary where httpx exceptions become :mod:`resume.errors`
(:func:`translate`); what a status code means is the caller's protocol's business. httpx is
imported only when a request needs it (TLS or a proxy): it is ~90 ms of a start-up. The retry
loop uses the same :class:`~resume.net.backoff.Backoff`, :func:`~resume.errors.classify` and
:class:`~resume.net.connector.ConnectionEvent` as the WebSocket reconnect loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from resume import __version__
from resume.errors import (
    AckTimeout,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ProtocolError,
    Rejected,
    ResumeError,
    Timeout,
    UsageError,
    Verdict,
    classify,
)
from resume.net.backoff import Backoff
from resume.net.bulk import BulkSender, FileBody
from resume.net.connector import ConnectionEvent
from resume.net.response import Headers, Response

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
PIECE = 2**20  # bytes handed to httpx at a time
log = logging.getLogger("resume.http")


def translate(exc: BaseException) -> ResumeError | None:
    """Map an httpx exception to the error tree; None if it is not one we know (a bug)."""
    import httpx

    if isinstance(exc, ResumeError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(f"timed out connecting: {exc}" if str(exc) else "timed out")
    if isinstance(exc, httpx.ReadTimeout):
        return AckTimeout("the server sent no response in time")
    if isinstance(exc, httpx.TimeoutException):  # write or pool timeout
        return Timeout(f"timed out: {exc}" if str(exc) else "timed out")
    if isinstance(exc, httpx.ConnectError):
        certificate = _cause(exc, ssl.SSLCertVerificationError)
        if certificate is not None:
            reason = getattr(certificate, "verify_message", None) or certificate
            return Rejected(f"TLS certificate verification failed: {reason}")
        return ConnectError(f"cannot connect: {exc}" if str(exc) else "cannot connect")
    if isinstance(exc, httpx.ProxyError):
        return ConnectError(f"proxy failed: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ConnectionLost(f"connection lost: {exc}" if str(exc) else "connection lost")
    if isinstance(exc, httpx.CloseError):
        return ConnectionLost(f"connection closed badly: {exc}")
    if isinstance(exc, httpx.LocalProtocolError):
        return ProtocolError(f"invalid HTTP request: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return UsageError(f"not a usable HTTP URL: {exc}")
    return None


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class HttpClient:
    """An HTTP client whose failures are :mod:`resume.errors` exceptions.

    Statuses are returned, not raised: a 409 or a 404 means different things to different
    protocols. Use as ``async with HttpClient(...) as http``. Plain ``http://`` without a proxy
    goes over h11 connections of our own (:mod:`resume.net.bulk`: file bodies with sendfile);
    the rest over httpx.

    ``verify``: an :class:`ssl.SSLContext` for ``https://`` (``--cacert``, ``--cert``), or True
    for the system's trust store. ``use_env_proxy``: take the proxy from ``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (opt-in, as for WebSocket connections;
    httpx then also reads ``SSL_CERT_FILE``); otherwise the environment is ignored.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        response_timeout: float = 60.0,
        connections: int = 4,
        verify: bool | ssl.SSLContext = True,
        use_env_proxy: bool = False,
    ) -> None:
        self._headers = {"User-Agent": f"resume/{__version__}", **(headers or {})}
        self._timeouts = (connect_timeout, response_timeout)
        self._connections = connections
        self._verify = verify
        self._use_env_proxy = use_env_proxy
        self._httpx: httpx.AsyncClient | None = None  # made on the first request that needs it
        self._plain = BulkSender(connect_timeout, response_timeout)
        # When the body of the last send_file was all handed over: the time from then to the
        # response is what a client waits per request (a round trip and the server's fsync).
        self.body_sent = 0.0

    def _plain_http(self, url: str) -> bool:
        """Whether ``url`` is plain ``http://`` with no proxy in the way (no TLS anywhere)."""
        return not self._use_env_proxy and url[:7].lower() == "http://"

    def sends_from_file(self, url: str) -> bool:
        """Whether :meth:`send_file` to ``url`` sends the body from the file (then its
        ``views`` may be left out); else they are the body."""
        return self._plain_http(url)

    def _client(self) -> httpx.AsyncClient:
        if self._httpx is None:
            import httpx

            connect, response = self._timeouts
            self._httpx = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(
                    connect=connect, read=response, write=response, pool=response
                ),
                limits=httpx.Limits(
                    max_connections=self._connections,
                    max_keepalive_connections=self._connections,
                ),
                follow_redirects=False,
                trust_env=self._use_env_proxy,  # the environment only when asked
                verify=self._verify,
            )
        return self._httpx

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        """Send one request and read the whole response (``content``: the body, or, not to
        plain ``http://``, its pieces as they are produced, with the ``Content-Length`` given
        in ``headers``)."""
        if self._plain_http(url) and not isinstance(content, AsyncIterator):
            return await self._plain.request(
                method, url, {**self._headers, **(headers or {})}, content
            )
        import httpx

        try:
            answer = await self._client().request(method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from exc
        return Response(answer.status_code, Headers(answer.headers.multi_items()), answer.content)

    async def send_file(
        self, method: str, url: str, headers: Mapping[str, str], body: FileBody
    ) -> Response:
        """Send a request whose body is a range of a file. Plain ``http://`` without a proxy:
        the kernel sends it from the file (:mod:`resume.net.bulk`); otherwise httpx sends the
        body's views."""
        if self._plain_http(url):
            response = await self._plain.request(method, url, {**self._headers, **headers}, body)
            self.body_sent = self._plain.body_sent
            return response
        return await self.request(method, url, headers=headers, content=self._pieces(body.views))

    async def _pieces(self, views: Sequence[memoryview]) -> AsyncIterator[bytes]:
        """A body made of buffers, in pieces (no copy is made here); notes when the last
        piece was taken."""
        for view in views:
            for start in range(0, len(view), PIECE):
                yield view[start : start + PIECE]  # type: ignore[misc]  # h11 takes any buffer
        self.body_sent = time.monotonic()

    async def aclose(self) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()
        await self._plain.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RetryLoop:
    """Run a step until it succeeds; back off and run it again after a retryable error.

    ``run(step)`` awaits ``step()``; a :class:`ResumeError` that :func:`classify` calls
    retryable is followed by a full-jitter delay and another call, a fatal one is raised. The
    attempt counter resets when the step calls :meth:`progressed` (a request moved data), so a
    server that answers every request with 503 keeps the delays growing.

    ``sleep``, ``rng`` and ``clock`` are injectable so tests never really wait.
    """

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self.on_event = on_event
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self.attempt = 0  # consecutive failures since the last progress
        self.failures = 0  # all failures of this loop
        self._failing_since: float | None = None

    async def run(self, step: Callable[[], Awaitable[T]]) -> T:
        """Await ``step()`` until it returns; raise its fatal error or the last retryable one."""
        while True:
            try:
                return await step()
            except ResumeError as error:
                await self._after_failure(error)

    def progressed(self) -> None:
        """The step made real progress: start the delays over."""
        self.attempt = 0
        self._failing_since = None

    async def _after_failure(self, error: ResumeError) -> None:
        self.failures += 1
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        out_of_attempts = self.max_attempts is not None and self.attempt + 1 >= self.max_attempts
        out_of_time = (
            self.give_up_after is not None and now - self._failing_since >= self.give_up_after
        )
        if classify(error) is Verdict.FATAL or out_of_attempts or out_of_time:
            self._emit(ConnectionEvent("gave_up", self.attempt, self.url, error))
            raise error
        delay = self.backoff.delay(self.attempt, self.rng)
        self._emit(ConnectionEvent("retrying", self.attempt, self.url, error, delay))
        log.info("%s: %s; retrying in %.2fs (attempt %d)", self.url, error, delay, self.attempt + 1)
        self.attempt += 1
        await self.sleep(delay)

    def _emit(self, event: ConnectionEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
