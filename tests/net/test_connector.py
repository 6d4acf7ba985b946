"""The one reconnect loop, against real websockets servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from resume.errors import ConnectError, ConnectionLost, ProtocolError, Rejected, ServerBusy
from resume.net.backoff import Backoff
from resume.net.connector import ConnectionEvent, ConnectOptions, Reconnector


class Recorder:
    """Injected sleep and clock: records every delay, never really waits."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.now = 0.0
        self.events: list[ConnectionEvent] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)

    def clock(self) -> float:
        return self.now


def reconnector(url: str, rec: Recorder, **kwargs: object) -> Reconnector:
    defaults: dict[str, object] = {
        "options": ConnectOptions(open_timeout=5),
        "backoff": Backoff(base=1.0, factor=2.0, cap=1000.0, min_uptime=5.0),
        "on_event": rec.events.append,
        "sleep": rec.sleep,
        "clock": rec.clock,
    }
    defaults.update(kwargs)
    return Reconnector(url, **defaults)  # type: ignore[arg-type]


Handler = Callable[[ServerConnection], object]


@pytest.fixture
async def ws_server() -> AsyncIterator[Callable[..., object]]:
    """Start a websockets server with a given handler / process_request; returns its URL."""
    servers = []

    async def start(handler: Handler, process_request: object = None) -> str:
        server = await serve(handler, "127.0.0.1", 0, process_request=process_request)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_session_result_is_returned(ws_server) -> None:
    """A session that completes ends the loop with its value and no retries."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    url = await ws_server(echo)
    rec = Recorder()

    async def session(ws) -> str:
        await ws.send("ping")
        return await ws.recv()

    assert await reconnector(url, rec).run(session) == "ping"
    assert rec.sleeps == []


async def test_refused_connections_back_off_then_give_up() -> None:
    """Nothing listening: growing jittered delays, then ConnectError after max_attempts."""
    rec = Recorder()
    loop = reconnector("ws://127.0.0.1:9", rec, max_attempts=6)
    with pytest.raises(ConnectError):
        await loop.run(lambda ws: asyncio.sleep(0))
    assert len(rec.sleeps) == 5
    assert all(0 <= d <= 2**n for n, d in enumerate(rec.sleeps))
    assert [e.kind for e in rec.events][-1] == "gave_up"


async def test_accept_then_drop_does_not_hot_loop(ws_server) -> None:
    """A server that accepts and closes at once keeps the delays growing (no reset)."""

    async def drop(ws: ServerConnection) -> None:
        await ws.close(1011, "boom")

    url = await ws_server(drop)
    rec = Recorder()
    loop = reconnector(
        url, rec, max_attempts=8, backoff=Backoff(base=1.0, cap=1000.0, min_uptime=5.0)
    )

    async def session(ws) -> None:
        await ws.recv()

    with pytest.raises(ConnectionLost):
        await loop.run(session)
    ceilings = [e.attempt for e in rec.events if e.kind == "retrying"]
    assert ceilings == list(range(7))  # attempt counter never reset to 0
    assert loop.stats.connects == 8


async def test_backoff_resets_after_a_connection_that_stayed_up(ws_server) -> None:
    """After min_uptime of a healthy connection, the next failure starts from attempt 0."""

    async def drop(ws: ServerConnection) -> None:
        await ws.close(1012, "restart")

    url = await ws_server(drop)
    rec = Recorder()
    loop = reconnector(url, rec, max_attempts=3)
    connections = itertools.count()

    async def session(ws) -> None:
        if next(connections) == 2:
            rec.now += 10.0  # the third connection "stayed up" 10 s
        await ws.recv()

    with pytest.raises(ConnectionLost):
        await loop.run(session)
    assert [e.attempt for e in rec.events if e.kind == "retrying"] == [0, 1, 0, 1]


def status_server(statuses: list[int]) -> Callable[[ServerConnection, Request], Response | None]:
    sequence = iter(statuses)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        status = next(sequence, 101)
        if status == 101:
            return None
        return connection.respond(HTTPStatus(status), "no\n")

    return process_request


async def test_401_is_fatal_at_once(ws_server) -> None:
    """Unauthorized is never retried."""
    url = await ws_server(lambda ws: asyncio.sleep(0), status_server([401]))
    rec = Recorder()
    with pytest.raises(Rejected, match="401"):
        await reconnector(url, rec).run(lambda ws: asyncio.sleep(0))
    assert rec.sleeps == []


async def test_503_is_retried_until_the_server_recovers(ws_server) -> None:
    """Two 503s, then a successful handshake: two sleeps and a result."""

    async def hello(ws: ServerConnection) -> None:
        await ws.send("hi")
        await ws.wait_closed()

    url = await ws_server(hello, status_server([503, 503]))
    rec = Recorder()
    assert await reconnector(url, rec).run(lambda ws: ws.recv()) == "hi"
    assert len(rec.sleeps) == 2
    assert isinstance(rec.events[0].error, ServerBusy)


@pytest.mark.parametrize(
    ("code", "error"), [(1002, ProtocolError), (1008, Rejected), (1003, ProtocolError)]
)
async def test_fatal_close_codes_stop_at_once(ws_server, code: int, error: type) -> None:
    """Protocol error, unsupported data, policy violation: no reconnect."""

    async def close(ws: ServerConnection) -> None:
        await ws.close(code, "you did something wrong")

    url = await ws_server(close)
    rec = Recorder()
    with pytest.raises(error):
        await reconnector(url, rec).run(lambda ws: ws.recv())
    assert rec.sleeps == []


async def test_headers_factory_runs_before_every_attempt(ws_server) -> None:
    """A token refreshed per attempt: the server sees a new value each time."""
    seen: list[str] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("X-Token", ""))
        if len(seen) < 3:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "later\n")
        return None

    async def hello(ws: ServerConnection) -> None:
        await ws.send("ok")
        await ws.wait_closed()

    url = await ws_server(hello, process_request)
    counter = itertools.count()
    rec = Recorder()
    loop = reconnector(url, rec, headers=lambda: {"X-Token": f"t{next(counter)}"})
    assert await loop.run(lambda ws: ws.recv()) == "ok"
    assert seen == ["t0", "t1", "t2"]


async def test_heartbeat_detects_a_silent_peer(ws_server) -> None:
    """A peer that stops answering pings is dropped within ping_interval + ping_timeout."""
    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    # A server that never reads: its transport is paused so pongs never come back.
    server = await ws_serve(handler, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    try:
        rec = Recorder()
        loop = reconnector(
            f"ws://127.0.0.1:{port}",
            rec,
            options=ConnectOptions(ping_interval=0.2, ping_timeout=0.2, close_timeout=0.2),
            max_attempts=1,
        )

        async def session(ws) -> None:
            for conn in server.connections:
                conn.transport.pause_reading()
            await ws.recv()

        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionLost):
            await loop.run(session)
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        for conn in server.connections:
            conn.transport.abort()
        server.close()
        await server.wait_closed()


def test_a_bad_tls_certificate_is_fatal_not_retried() -> None:
    """Certificate verification failures are OSErrors, but retrying cannot fix them."""
    import ssl

    from resume.errors import Verdict, classify
    from resume.net.connector import translate

    error = translate(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert isinstance(error, Rejected) and classify(error) is Verdict.FATAL
