"""Bounded server memory and quotas: channel eviction, one tail budget, byte-bounded queues."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import serve

from resume.server import ResumeApp, ServerConfig
from resume.store.stream_log import ChannelHead
from resume.stream.channel import MESSAGE_OVERHEAD, Channel, TailBudget, cost
from resume.stream.client import BufferFull, StreamClient
from resume.stream.endpoint import StreamEndpoint
from resume.stream.limits import ByteQueue, TokenBucket
from tests.stream.test_client import options, take
from tests.transfer.test_receiver import raw, request


@dataclass
class Embedded:
    """A /streams endpoint served on 127.0.0.1, its internals in reach."""

    url: str
    endpoint: StreamEndpoint

    def channel(self, name: str = "orders") -> str:
        return f"{self.url}/streams/{name}"


@pytest.fixture
async def embed(tmp_path: Path) -> AsyncIterator[Any]:
    apps: list[tuple[ResumeApp, Any]] = []

    async def start(**endpoint_options: Any) -> Embedded:
        app = ResumeApp(ServerConfig(root=tmp_path / f"srv{len(apps)}", port=0))
        endpoint = StreamEndpoint(app.store, **endpoint_options)
        app.mount_prefix("streams", endpoint)
        server = await serve(app.handler, "127.0.0.1", 0, **app.serve_options()).__aenter__()
        apps.append((app, server))
        return Embedded(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", endpoint)

    yield start
    for app, server in apps:
        server.close()
        await server.wait_closed()
        await app.close()


def test_one_budget_bounds_every_tail_and_trims_the_least_recent_channel_first() -> None:
    """Tails of many channels never add up past the budget; the idle channel loses first."""
    budget = TailBudget(limit=100 * cost("x" * 100))
    quiet = Channel("quiet", ChannelHead(1, 0), budget)
    busy = Channel("busy", ChannelHead(1, 0), budget)
    quiet.remember(1, ["x" * 100] * 60, 0.0)
    busy.remember(1, ["x" * 100] * 30, 0.0)
    assert budget.used == 90 * cost("x" * 100)
    busy.remember(31, ["x" * 100] * 30, 0.0)  # over by 20: quiet's oldest 20 go
    assert budget.used <= budget.limit
    assert len(busy.recent) == 60 and len(quiet.recent) == 40 and quiet.recent[0].seq == 21
    busy.remember(61, ["x" * 100] * 200, 0.0)  # more than the whole budget
    assert budget.used <= budget.limit and not quiet.recent
    assert [m.seq for m in busy.recent] == list(range(161, 261))
    busy.forget_tail()
    assert budget.used == 0
    assert MESSAGE_OVERHEAD > 100  # a tail entry costs more than its text


async def test_what_falls_out_of_the_tail_budget_is_served_from_the_log(embed: Any) -> None:
    """With a tiny budget the tails hold almost nothing, and consumers still get everything."""
    server = await embed(tail_memory=4096)
    async with (
        StreamClient(server.channel("a"), subscribe=False, options=options()) as a,
        StreamClient(server.channel("b"), subscribe=False, options=options()) as b,
        StreamClient(server.channel("a"), start="start", options=options()) as live,
    ):
        for i in range(20):
            await a.send_many([f"a{i}-{j}" for j in range(50)])
            await b.send_many([f"b{i}-{j}" for j in range(50)])
        await a.flush(10)
        await b.flush(10)
        assert server.endpoint.budget.used <= 4096
        got = await take(live, 1000)
    assert got == [f"a{i}-{j}" for i in range(20) for j in range(50)]
    async with StreamClient(server.channel("b"), start="start", options=options()) as late:
        assert await take(late, 1000) == [f"b{i}-{j}" for i in range(20) for j in range(50)]


async def test_idle_channels_are_evicted_when_their_last_connection_leaves(embed: Any) -> None:
    """Hundreds of channel names that only said hello leave no channel object behind."""
    server = await embed()
    for i in range(300):
        ws = await raw(server, f"/streams/name-{i}")  # type: ignore[arg-type]
        welcome = await request(
            ws, {"type": "hello", "client_id": f"c{i}", "subscribe": i % 2 == 0}
        )
        assert welcome["type"] == "welcome"
        await ws.close()
    async with StreamClient(server.channel("kept"), options=options()) as holder:
        await holder.ready(5)
        await asyncio.sleep(0.1)
        assert set(server.endpoint.channels) == {"kept"}
        assert len(server.endpoint.producers) == 1
    for _ in range(100):
        if not server.endpoint.channels:
            break
        await asyncio.sleep(0.02)
    assert server.endpoint.channels == {} and server.endpoint.producers == {}
    assert server.endpoint.budget.used == 0


async def test_a_publish_quota_throttles_its_producer_only(embed: Any) -> None:
    """publish_rate=200/s: 600 messages take at least ~2 s; another producer is not slowed."""
    server = await embed(publish_rate=200)
    async with StreamClient(server.channel(), subscribe=False, options=options()) as slow:
        began = time.monotonic()
        for i in range(12):
            await slow.send_many([i] * 50)
        await slow.flush(30)
        throttled = time.monotonic() - began
        async with StreamClient(
            server.channel("other"), subscribe=False, options=options()
        ) as other:
            began = time.monotonic()
            await other.send_many(list(range(150)))
            await other.flush(10)
            unthrottled = time.monotonic() - began
    assert throttled >= 1.8  # the first 200 are the burst, 400 more at 200/s
    assert unthrottled < 1.0


async def test_pub_frames_read_ahead_are_bounded_in_bytes(embed: Any) -> None:
    """A flood of big pub frames is read at most read_ahead_bytes ahead of the store."""
    limit = 600_000
    server = await embed(publish_bytes=400_000, read_ahead_bytes=limit)
    ws = await raw(server, "/streams/orders")  # type: ignore[arg-type]
    await request(ws, {"type": "hello", "client_id": "flood", "subscribe": False})
    frame = "x" * 200_000
    flood = asyncio.create_task(_flood(ws, frame, 8))
    connection = server.endpoint.producers[("orders", "flood")]
    highest = 0
    deadline = time.monotonic() + 1.5  # the quota stores 2 frames a second meanwhile
    while time.monotonic() < deadline:
        highest = max(highest, connection.pubs.bytes)
        await asyncio.sleep(0.01)
    flood.cancel()
    await asyncio.gather(flood, return_exceptions=True)
    ws.transport.abort()  # the server is not reading: no closing handshake
    assert 2 * 200_000 < highest <= limit  # it read ahead, up to the bound and no further


async def _flood(ws: Any, data: str, frames: int) -> None:
    for seq in range(1, frames + 1):
        await ws.send(json.dumps({"type": "pub", "seq": seq, "data": [data]}))


async def test_client_buffers_are_bounded_in_bytes(embed: Any) -> None:
    """Outbound: bytes, not only messages, fill the buffer. Inbound: the client stops reading
    once what it holds for the application passes max_received_bytes."""
    dead = StreamClient(
        "ws://127.0.0.1:9/streams/x",
        subscribe=False,
        options=options(max_buffered_bytes=1000, overflow="raise"),
    )
    await dead.start()
    await dead.send("x" * 600)
    with pytest.raises(BufferFull, match="1000 bytes"):
        await dead.send("y" * 600)
    assert dead.stats.buffered_bytes == 602
    await dead.close(timeout=0.1)

    server = await embed()
    big = "z" * 300_000  # one per msgs frame
    async with StreamClient(
        server.channel(), start="start", options=options(max_received_bytes=500_000)
    ) as slow:
        await slow.ready(5)
        async with StreamClient(server.channel(), subscribe=False, options=options()) as producer:
            await producer.send_many([big] * 20)
            await producer.flush(20)
        await asyncio.sleep(0.5)
        held = slow._inbound.queued_bytes
        assert 0 < held <= 2 * 300_100  # paused after passing the bound, not 20 messages
        assert len(await take(slow, 20)) == 20


async def test_byte_queue_and_token_bucket() -> None:
    """The two building blocks on their own."""
    queue: ByteQueue[str] = ByteQueue(10)
    await queue.put("a", 6)
    blocked = asyncio.create_task(queue.put("b", 6))
    await asyncio.sleep(0.01)
    assert not blocked.done() and queue.bytes == 6
    assert await queue.get() == "a"
    await blocked
    assert queue.bytes == 6 and await queue.get() == "b"
    await asyncio.wait_for(queue.put("huge", 100), 1)  # alone, a big item still goes in

    now = [0.0]
    bucket = TokenBucket(10, clock=lambda: now[0])
    assert bucket.take(10) == 0.0
    assert bucket.take(5) == pytest.approx(0.5)
    now[0] = 1.5
    assert bucket.take(1) == 0.0 and not bucket.full()
    now[0] = 10.0
    assert bucket.full()
