"""Proxies from the environment: used only when asked (--use-env-proxy), through HTTP CONNECT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from resume.net.connector import ConnectOptions, open_connection
from resume.store import open_store
from tests.processes import resume_cmd, resume_env
from tests.transfer.conftest import RunningServer, server, start_server

__all__ = ["server", "start_server"]  # fixtures, used by name


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records where it was asked to go."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.write_eof()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ConnectProxy]:
    """The proxy, named in HTTP_PROXY / HTTPS_PROXY; NO_PROXY cleared."""
    recorder = ConnectProxy()
    recorder.server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    for name in (
        "no_proxy",
        "NO_PROXY",
        "wss_proxy",
        "WSS_PROXY",
        "ws_proxy",
        "WS_PROXY",
        "socks_proxy",
        "SOCKS_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, recorder.url)
    yield recorder
    recorder.server.close()


async def test_environment_proxy_is_ignored_unless_asked(
    server: RunningServer, proxy: ConnectProxy
) -> None:
    """HTTP(S)_PROXY set, no opt-in: the connection goes straight to the server."""
    ws = await open_connection(server.url + "/streams/x", ConnectOptions())
    await ws.close()
    assert proxy.targets == []


async def test_send_goes_through_the_environment_proxy_when_asked(
    server: RunningServer, proxy: ConnectProxy
) -> None:
    """`resume send --use-env-proxy` tunnels through the proxy and the lines arrive."""
    process = await asyncio.create_subprocess_exec(
        *resume_cmd("send", server.url + "/streams/orders", "--use-env-proxy"),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=resume_env(),
    )
    _, err = await asyncio.wait_for(process.communicate(b"a\nb\n"), 60)
    assert process.returncode == 0, err.decode()
    assert proxy.targets == [f"127.0.0.1:{server.port}"]
    with open_store(server.root / ".resume" / "server.db", readonly=True) as store:
        assert [m.data for m in store.streams.read("orders", 0, 10)] == ['"a"', '"b"']


async def test_no_proxy_is_honoured(
    server: RunningServer, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the opt-in, a host listed in NO_PROXY is still reached directly."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    ws = await open_connection(server.url + "/streams/x", ConnectOptions(use_env_proxy=True))
    await ws.close()
    assert proxy.targets == []
