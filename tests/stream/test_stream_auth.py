"""Scoped tokens on streams: channel permissions, namespaced client ids, expiry mid-connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from resume.errors import Rejected
from resume.store import open_store
from resume.stream.client import StreamClient
from tests.stream.conftest import StartServer
from tests.stream.test_client import channel, logged, options, take
from tests.test_auth import SECRET, mint

ORDERS = mint(sub="shop", publish=["orders.*"], subscribe=["orders.*"])


async def test_orders_token_publishes_and_reads_orders_and_is_refused_elsewhere_at_once(
    start_server: StartServer,
) -> None:
    """orders.* works on orders.eu; payments is refused with 403, fatal, in under a second."""
    server = await start_server(jwt_secret=SECRET)
    async with StreamClient(
        channel(server, "orders.eu"), token=ORDERS, subscribe=False, options=options()
    ) as producer:
        await producer.send_many(["o1", "o2"])
        await producer.flush(10)
    async with StreamClient(
        channel(server, "orders.eu"), token=ORDERS, start="start", options=options()
    ) as consumer:
        assert await take(consumer, 2) == ["o1", "o2"]

    for subscribe in (False, True):
        began = time.monotonic()
        refused = StreamClient(
            channel(server, "payments"), token=ORDERS, subscribe=subscribe, options=options()
        )
        await refused.start()
        with pytest.raises(Rejected, match=r"HTTP 403.*does not allow channel 'payments'"):
            await refused.ready(timeout=5)
        assert time.monotonic() - began < 1.0
        assert refused.stats.connects == 0  # refused before the upgrade, never retried
        await refused.close()
    assert logged(server, "payments") == []


async def test_reading_without_subscribe_rights_is_a_policy_close(
    start_server: StartServer,
) -> None:
    """A publish-only token may produce, but a hello that subscribes is closed with 1008."""
    server = await start_server(jwt_secret=SECRET)
    writer = mint(sub="feed", publish=["ticks"])
    async with StreamClient(
        channel(server, "ticks"), token=writer, subscribe=False, options=options()
    ) as producer:
        await producer.send("t1")
        await producer.flush(10)
    reader = StreamClient(channel(server, "ticks"), token=writer, options=options())
    await reader.start()
    with pytest.raises(Rejected, match=r"policy violation.*does not allow reading 'ticks'"):
        await reader.ready(timeout=5)
    await reader.close()
    reading_only = mint(sub="viewer", subscribe=["ticks"])
    producer = StreamClient(
        channel(server, "ticks"), token=reading_only, subscribe=False, options=options()
    )
    await producer.start()
    with pytest.raises(Rejected, match="does not allow publishing to 'ticks'"):
        await producer.ready(timeout=5)
    await producer.close()
    assert logged(server, "ticks") == ["t1"]


async def test_client_ids_are_namespaced_by_sub(start_server: StartServer, tmp_path: Path) -> None:
    """Two principals using the same client id are two producers: neither drops the other."""
    server = await start_server(jwt_secret=SECRET)
    for sub, lines in (("alice", ["a1", "a2", "a3"]), ("bob", ["b1", "b2"])):
        token = mint(sub=sub, publish=["orders"])
        with open_store(tmp_path / f"{sub}.db") as store:
            async with StreamClient(
                channel(server),
                token=token,
                client_id="shop-1",
                store=store,
                subscribe=False,
                options=options(),
            ) as producer:
                await producer.send_many(lines)
                await producer.flush(10)
    assert logged(server) == ["a1", "a2", "a3", "b1", "b2"]
    with open_store(server.root / ".resume" / "server.db") as store:
        assert store.streams.producer_seq("orders", "alice/shop-1") == 3
        assert store.streams.producer_seq("orders", "bob/shop-1") == 2


async def test_a_token_expiring_mid_connection_ends_it_and_a_fresh_one_continues(
    start_server: StartServer,
) -> None:
    """At exp the server closes (4401); with a token factory the client reconnects and goes on,
    with a fixed token it stops with 'token expired'."""
    server = await start_server(jwt_secret=SECRET)
    minted: list[str] = []

    def fresh() -> dict[str, str]:
        minted.append(mint(sub="reader", subscribe=["orders"], expires_in=2))
        return {"Authorization": f"Bearer {minted[-1]}"}

    publisher = mint(sub="writer", publish=["orders"])
    expiring = mint(sub="reader", subscribe=["orders"], expires_in=2)
    fixed = StreamClient(channel(server), token=expiring, options=options())
    async with (
        StreamClient(channel(server), headers=fresh, options=options()) as refreshed,
        StreamClient(
            channel(server), token=publisher, subscribe=False, options=options()
        ) as producer,
    ):
        await fixed.start()
        await refreshed.ready(5)
        await fixed.ready(5)
        await asyncio.sleep(3.2)  # both tokens expired meanwhile
        await producer.send("after expiry")
        assert await take(refreshed, 1) == ["after expiry"]
        assert refreshed.stats.reconnects >= 1 and len(minted) >= 2
        with pytest.raises(Rejected, match="token expired"):
            await asyncio.wait_for(fixed.wait(), 10)
    await fixed.close()
