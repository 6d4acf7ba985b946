"""The httpx boundary (real sockets on 127.0.0.1) and the HTTP retry loop (injected sleep)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from resume.errors import (
    AckTimeout,
    ConnectError,
    ConnectionLost,
    Rejected,
    ServerBusy,
    UsageError,
    Verdict,
    classify,
)
from resume.net.backoff import Backoff
from resume.net.connector import ConnectionEvent
from resume.net.http import HttpClient, RetryLoop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def rude_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A TCP server whose behaviour a test picks: 'close' at once, or 'stall' forever."""
    mode: list[str] = ["close"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if mode[0] == "stall":
            await asyncio.sleep(30)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/files/", mode
    server.close()


async def test_refused_connection_is_a_retryable_connect_error() -> None:
    """Nothing listening: ConnectError, which classify() retries."""
    async with HttpClient() as http:
        with pytest.raises(ConnectError) as caught:
            await http.request("HEAD", f"http://127.0.0.1:{free_port()}/files/x")
    assert classify(caught.value) is Verdict.RETRY
    assert caught.value.__cause__ is not None  # translated with `raise ... from exc`


async def test_a_connection_dropped_before_the_response_is_connection_lost(rude_server) -> None:
    """The server reads the request and hangs up: ConnectionLost (retryable)."""
    url, _ = rude_server
    async with HttpClient() as http:
        with pytest.raises(ConnectionLost):
            await http.request("PATCH", url, content=b"x" * 10)


async def test_no_response_in_time_is_an_ack_timeout(rude_server) -> None:
    """A server that never answers: AckTimeout after the response timeout."""
    url, mode = rude_server
    mode[0] = "stall"
    async with HttpClient(response_timeout=0.3) as http:
        with pytest.raises(AckTimeout):
            await http.request("HEAD", url)


async def test_a_url_httpx_cannot_use_is_a_usage_error() -> None:
    """Not retried: the user must fix it."""
    async with HttpClient() as http:
        with pytest.raises(UsageError):
            await http.request("HEAD", "gopher://127.0.0.1/files/")


async def test_retry_loop_backs_off_on_retryable_errors_and_resets_on_progress() -> None:
    """Retryable errors sleep growing delays; progress resets them; the result comes back."""
    sleeps: list[float] = []
    events: list[ConnectionEvent] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    loop = RetryLoop(
        "http://x/files/",
        backoff=Backoff(base=1.0, factor=2.0, cap=100.0),
        sleep=sleep,
        on_event=events.append,
    )
    loop.rng.seed(1)
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        if calls == 3:
            loop.progressed()
        if calls < 5:
            raise ServerBusy("503", status=503)
        return "done"

    assert await loop.run(step) == "done"
    assert calls == 5 and len(sleeps) == 4
    assert [e.attempt for e in events] == [0, 1, 0, 1]  # progress on the third call reset it
    assert all(e.kind == "retrying" for e in events)
    assert sleeps[1] <= 2.0 and sleeps[3] <= 2.0


async def test_retry_loop_raises_fatal_errors_at_once_and_gives_up_after_max_attempts() -> None:
    """A fatal error is raised without a sleep; retryable ones stop at max_attempts."""
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    async def refused() -> None:
        raise Rejected("401", status=401)

    with pytest.raises(Rejected):
        await RetryLoop("u", sleep=sleep).run(refused)
    assert sleeps == []

    async def busy() -> None:
        raise ServerBusy("503")

    with pytest.raises(ServerBusy):
        await RetryLoop("u", sleep=sleep, max_attempts=3).run(busy)
    assert len(sleeps) == 2
