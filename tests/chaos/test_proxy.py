"""The fault-injecting proxy itself: each fault does what the chaos tests rely on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator

import pytest

from tests.chaos.proxy import FaultProxy, ThreadedProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server on 127.0.0.1."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await reader.read(-1)
    await sender
    writer.close()
    return received


async def test_forwards_bytes_unchanged_both_ways(echo_port: int) -> None:
    """20 MiB go up and come back down identical, and are counted."""
    payload = os.urandom(20 * 2**20)
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(20):
        back = await roundtrip(proxy.port, payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


async def test_cut_resets_live_connections_and_new_ones_work(echo_port: int) -> None:
    """cut() kills what is open; the next connection is fine."""
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        assert proxy.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()
        assert await roundtrip(proxy.port, b"again") == b"again"


async def test_stall_holds_data_and_unstall_delivers_it_in_order(echo_port: int) -> None:
    """Nothing moves while stalled; everything arrives, in order, afterwards."""
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall()
        writer.write(b"abc")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readexactly(3)
        writer.write(b"def")
        proxy.unstall()
        assert await reader.readexactly(6) == b"abcdef"
        writer.close()


async def test_refuse_resets_new_connections(echo_port: int) -> None:
    """While refusing, connections die at once; afterwards they work again."""
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        proxy.refuse(True)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"x")
            await reader.readexactly(1)
        writer.close()
        proxy.refuse(False)
        assert await roundtrip(proxy.port, b"ok") == b"ok"


async def test_corrupt_once_flips_exactly_one_byte_at_the_position(echo_port: int) -> None:
    """One byte, at the requested offset, XOR 0xFF; nothing else changes."""
    payload = bytes(100_000)
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        proxy.corrupt_once(after_bytes=12_345, direction="up")
        back = await roundtrip(proxy.port, payload)
    diff = [i for i, (a, b) in enumerate(zip(payload, back, strict=True)) if a != b]
    assert diff == [12_345] and back[12_345] == 0xFF
    assert proxy.stats.corrupted == 1


async def test_delay_adds_latency(echo_port: int) -> None:
    """A round trip takes at least twice the configured one-way delay."""
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        proxy.delay = 0.1
        started = time.monotonic()
        assert await roundtrip(proxy.port, b"x") == b"x"
        assert time.monotonic() - started >= 0.2


async def test_set_upstream_switches_new_connections(echo_port: int) -> None:
    """A restarted server on another port is reachable through the same proxy port."""

    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.read(100)).upper())
        writer.close()

    other = await asyncio.start_server(shout, "127.0.0.1", 0)
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(10):
        proxy.set_upstream(other.sockets[0].getsockname()[1])
        assert await roundtrip(proxy.port, b"hi") == b"HI"
    other.close()


async def test_chaos_cuts_and_leaves_the_proxy_usable(echo_port: int) -> None:
    """Two seconds of chaos cut at least once; the proxy still forwards afterwards."""
    async with FaultProxy(echo_port) as proxy, asyncio.timeout(20):
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.chaos(duration=2.0, rng=random.Random(3), stall_probability=0.0)
        assert proxy.stats.cuts >= 1
        writer.close()
        assert await roundtrip(proxy.port, b"still here") == b"still here"


def test_threaded_proxy_from_synchronous_code() -> None:
    """Blocking sockets through a ThreadedProxy; cut and shutdown from this thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with ThreadedProxy(port, seed=1) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        server_side, _ = listener.accept()
        client.sendall(b"ping")
        assert server_side.recv(4) == b"ping"
        assert proxy.cut() == 1
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        client.close()
        server_side.close()
    listener.close()
