"""The stream client against a real in-process `resume serve` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from resume.errors import AckTimeout, GapError, HandshakeTimeout, Rejected
from resume.net.backoff import Backoff
from resume.net.connector import ConnectOptions
from resume.protocol.frames import SUBPROTOCOL
from resume.protocol.session import Gap
from resume.store import open_store
from resume.stream.client import (
    BufferFull,
    ClientClosed,
    StreamClient,
    StreamEvent,
    StreamOptions,
)
from resume.stream.raw import RawClient
from tests.chaos.proxy import FaultProxy
from tests.stream.conftest import RunningServer, StartServer

FAST = Backoff(base=0.01, factor=2.0, cap=0.1, min_uptime=0.2)


def options(**overrides: Any) -> StreamOptions:
    values: dict[str, Any] = {"backoff": FAST, "close_timeout": 5.0}
    values.update(overrides)
    return StreamOptions(**values)


def channel(server: RunningServer | str, name: str = "orders") -> str:
    base = server if isinstance(server, str) else server.url
    return f"{base}/streams/{name}"


async def take(client: StreamClient, n: int, timeout: float = 20) -> list[Any]:
    """The data of the next ``n`` messages, each committed once kept (processed)."""
    got: list[Any] = []

    async def run() -> None:
        async for message in client:
            got.append(message.data)
            await client.commit()
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def publish(server: RunningServer, items: list[Any], timeout: float = 10) -> None:
    """Publish ``items`` and wait (at most ``timeout`` s) until the server stored them all."""
    async with StreamClient(channel(server), subscribe=False, options=options()) as producer:
        await producer.send_many(items)
        await producer.flush(timeout)


def logged(server: RunningServer, name: str = "orders") -> list[Any]:
    """Everything the server's durable log holds for channel ``name``, in seq order."""
    with open_store(server.root / ".resume" / "server.db") as store:
        return [json.loads(m.data) for m in store.streams.read(name, 0, 1_000_000)]


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.port, seed=1) as p:
        yield p


async def test_messages_arrive_once_in_order_with_their_seq_and_time(server: RunningServer) -> None:
    """A producer's messages reach a consumer that started at the beginning, in order."""
    async with StreamClient(channel(server), subscribe=False, options=options()) as producer:
        seqs = [await producer.send({"n": i}) for i in range(300)]
        await producer.flush(10)
    assert seqs == list(range(1, 301))
    async with StreamClient(channel(server), start="start", options=options()) as consumer:
        first = await anext(consumer)
        rest = await take(consumer, 299)
    assert first.seq == 1 and first.timestamp is not None and first.data == {"n": 0}
    assert rest == [{"n": i} for i in range(1, 300)]


async def test_new_consumer_at_the_end_sees_only_new_messages(server: RunningServer) -> None:
    """Without a position, the default start is the end of the log."""
    async with StreamClient(channel(server), subscribe=False, options=options()) as producer:
        await producer.send_many(["old"] * 5)
        await producer.flush(10)
        async with StreamClient(channel(server), options=options()) as consumer:
            await asyncio.sleep(0.2)  # let it subscribe
            await producer.send("new")
            assert await take(consumer, 1) == ["new"]


async def test_producer_replays_after_a_cut_and_the_server_stores_each_once(
    server: RunningServer, proxy: FaultProxy
) -> None:
    """Messages in flight when the link is cut are sent again; dedup by seq keeps one copy."""
    events: list[StreamEvent] = []
    url = channel(f"ws://127.0.0.1:{proxy.port}")
    async with StreamClient(
        url, subscribe=False, options=options(), on_event=events.append
    ) as producer:
        await producer.send_many(list(range(100)))
        await producer.flush(10)
        proxy.stall()  # what is written now is in flight, unacknowledged, when the cut comes
        await producer.send_many(list(range(100, 1000)))
        await asyncio.sleep(0.2)
        proxy.cut()
        proxy.unstall()
        await producer.send_many(list(range(1000, 2000)))
        await producer.flush(20)
    assert producer.stats.reconnects >= 1
    assert producer.stats.replayed >= 900
    assert sum(e.count for e in events if e.kind == "replay") >= 900
    assert logged(server) == list(range(2000))


async def test_consumer_resumes_after_a_cut_without_duplicates(
    server: RunningServer, proxy: FaultProxy
) -> None:
    """A consumer cut mid-stream continues after the last message it got, none twice."""
    async with StreamClient(channel(server), subscribe=False, options=options()) as producer:
        await producer.send_many(list(range(1000)))
        await producer.flush(10)
        url = channel(f"ws://127.0.0.1:{proxy.port}")
        async with StreamClient(url, start="start", options=options()) as consumer:
            got = await take(consumer, 400)
            proxy.cut()
            await producer.send_many(list(range(1000, 1500)))
            got += await take(consumer, 1100)
    assert got == list(range(1500))
    assert consumer.stats.reconnects >= 1


async def test_gap_from_retention_is_reported_then_delivery_goes_on(
    start_server: StartServer,
) -> None:
    """Trimmed messages raise GapError once with their range; later messages still arrive."""
    server = await start_server(retention_count=5)
    await publish(server, list(range(20)))
    # a consumer whose stored position is 3: seqs 4..15 were trimmed meanwhile
    with open_store(server.root.parent / "client.db") as store:
        store.stream_client.set_cursor("late", channel(server), 3)
        async with StreamClient(
            channel(server), consumer="late", store=store, options=options()
        ) as consumer:
            with pytest.raises(GapError) as caught:
                await anext(consumer)
            assert (caught.value.first, caught.value.last) == (4, 15)
            assert await take(consumer, 5) == [15, 16, 17, 18, 19]
        assert consumer.stats.gaps == 1


async def test_on_gap_callback_instead_of_raising(start_server: StartServer) -> None:
    """With on_gap, the range is handed to the callback and iteration does not stop."""
    server = await start_server(retention_count=3)
    await publish(server, list(range(10)))
    gaps: list[Gap] = []
    with open_store(server.root.parent / "client.db") as store:
        store.stream_client.set_cursor("late", channel(server), 0)
        async with StreamClient(
            channel(server), consumer="late", store=store, options=options(), on_gap=gaps.append
        ) as consumer:
            assert await take(consumer, 3) == [7, 8, 9]
    assert gaps == [Gap(1, 7)]


async def test_wrong_token_is_fatal_at_once(start_server: StartServer) -> None:
    """A 401 at the handshake stops the client quickly: no retry storm."""
    server = await start_server(token="right")
    client = StreamClient(channel(server), token="wrong", options=options())
    await client.start()
    with pytest.raises(Rejected, match="401"):
        await asyncio.wait_for(client.wait(), 5)
    with pytest.raises(Rejected):
        await client.send("x")
    assert client.stats.connects == 0
    await client.close()


async def test_right_token_works(start_server: StartServer) -> None:
    """The bearer token is sent on every connect."""
    server = await start_server(token="right")
    async with StreamClient(
        channel(server), token="right", subscribe=False, options=options()
    ) as client:
        await client.send("x")
        await client.flush(5)
    assert logged(server) == ["x"]


async def test_full_buffer_raises_or_waits(tmp_path: Path) -> None:
    """While disconnected, sends buffer up to the limit; then they raise or wait, never drop."""
    dead = "ws://127.0.0.1:9/streams/x"  # nothing listens on the discard port
    raising = StreamClient(dead, subscribe=False, options=options(max_buffered=3, overflow="raise"))
    await raising.start()
    await raising.send_many([1, 2, 3])
    with pytest.raises(BufferFull):
        await raising.send(4)
    assert await raising.close(timeout=0.2) == 3
    waiting = StreamClient(dead, subscribe=False, options=options(max_buffered=2))
    await waiting.start()
    await waiting.send_many([1, 2])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiting.send(3), 0.3)
    assert waiting.stats.buffered == 2
    await waiting.close(timeout=0.2)


async def test_close_waits_for_acks_then_refuses_new_sends(server: RunningServer) -> None:
    """close() returns 0 once everything is stored; send() after it is a clear error."""
    client = StreamClient(channel(server), subscribe=False, options=options())
    await client.start()
    await client.send_many(list(range(100)))
    assert await client.close() == 0
    assert logged(server) == list(range(100))
    with pytest.raises(ClientClosed):
        await client.send("late")


async def test_durable_outbox_is_sent_by_the_next_process(
    server: RunningServer, tmp_path: Path
) -> None:
    """Messages accepted while the server was unreachable are stored and sent by a later run."""
    db = tmp_path / "producer.db"
    with open_store(db) as store:
        offline = StreamClient(
            "ws://127.0.0.1:9/streams/orders",
            key="orders",
            client_id="p1",
            subscribe=False,
            store=store,
            options=options(),
        )
        await offline.start()
        assert await offline.send_many(["a", "b", "c"]) == [1, 2, 3]
        assert await offline.close(timeout=0.2) == 3
    with open_store(db) as store:
        async with StreamClient(
            channel(server),
            key="orders",
            client_id="p1",
            subscribe=False,
            store=store,
            options=options(),
        ) as online:
            assert await online.send("d") == 4  # seqs continue, never reused
            await online.flush(10)
        assert store.stream_client.load_outbox("p1", "orders").pending == []
    assert logged(server) == ["a", "b", "c", "d"]


async def test_durable_consumer_continues_after_the_last_message_it_took(
    server: RunningServer, tmp_path: Path
) -> None:
    """A consumer's position is saved as it takes messages, so a new process continues there."""
    await publish(server, list(range(10)))
    db = tmp_path / "consumer.db"
    with open_store(db) as store:
        async with StreamClient(
            channel(server), consumer="c", start="start", store=store, options=options()
        ) as consumer:
            assert await take(consumer, 4) == [0, 1, 2, 3]
        assert store.stream_client.cursor("c", channel(server)) == 4
    with open_store(db) as store:
        async with StreamClient(
            channel(server), consumer="c", start="start", store=store, options=options()
        ) as consumer:
            assert await take(consumer, 6) == [4, 5, 6, 7, 8, 9]


async def test_breaking_out_before_processing_does_not_take_the_held_message(
    server: RunningServer, tmp_path: Path
) -> None:
    """A clean exit from `async with` after a break leaves the unprocessed message untaken."""
    await publish(server, ["a", "b", "c"])
    db = tmp_path / "consumer.db"
    with open_store(db) as store:
        async with StreamClient(
            channel(server), consumer="c", start="start", store=store, options=options()
        ) as consumer:
            async for message in consumer:
                if message.data == "b":
                    break  # stopped before processing "b"
        assert store.stream_client.cursor("c", channel(server)) == 1  # "a" was taken
        async with StreamClient(
            channel(server), consumer="c", start="start", store=store, options=options()
        ) as consumer:
            assert await take(consumer, 2) == ["b", "c"]
        assert store.stream_client.cursor("c", channel(server)) == 3


async def test_server_restart_replays_to_a_consumer(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A consumer connected across a server restart misses nothing and sees nothing twice."""
    server = await start_server()
    url = channel(server)
    async with StreamClient(url, start="start", options=options()) as consumer:
        async with StreamClient(url, subscribe=False, options=options()) as producer:
            await producer.send_many(list(range(50)))
            await producer.flush(10)
        assert await take(consumer, 20) == list(range(20))
        await server.shutdown()
        server = await start_server(port=server.port)
        async with StreamClient(url, subscribe=False, options=options()) as producer:
            await producer.send_many(list(range(50, 60)))
            await producer.flush(10)
        assert await take(consumer, 40) == list(range(20, 60))
    assert consumer.stats.reconnects >= 1 and consumer.stats.duplicates == 0


async def silent_server(handler: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as s:
        yield f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}/streams/x"


async def test_no_welcome_is_a_handshake_timeout_and_retried() -> None:
    """A server that accepts but never answers hello is retried, then given up on."""
    connects = 0

    async def mute(ws: ServerConnection) -> None:
        nonlocal connects
        connects += 1
        await ws.wait_closed()

    async for url in silent_server(mute):
        client = StreamClient(
            url, options=options(handshake_timeout=0.2, max_attempts=3), subscribe=False
        )
        await client.start()
        with pytest.raises(HandshakeTimeout):
            await asyncio.wait_for(client.wait(), 10)
        await client.close()
    assert connects == 3


async def test_no_ack_is_an_ack_timeout() -> None:
    """A server that welcomes but never acknowledges data is detected, not waited on forever."""

    async def no_acks(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(
            json.dumps({"type": "welcome", "acked": 0, "first": 1, "last": 0, "position": 0})
        )
        await ws.wait_closed()

    async for url in silent_server(no_acks):
        client = StreamClient(
            url,
            options=options(
                ack_timeout=0.3, max_attempts=2, backoff=Backoff(base=0.01, min_uptime=5)
            ),
            subscribe=False,
        )
        await client.start()
        await client.send("x")
        with pytest.raises(AckTimeout):
            await asyncio.wait_for(client.wait(), 10)
        await client.close(timeout=0.1)


async def test_message_too_large_is_refused_before_it_is_buffered(server: RunningServer) -> None:
    """A message over the size limit is a clear error at send(), not a dropped connection."""
    from resume.errors import UsageError

    async with StreamClient(
        channel(server), subscribe=False, options=options(max_message_bytes=100)
    ) as client:
        with pytest.raises(UsageError, match="larger than"):
            await client.send("x" * 200)
        with pytest.raises(UsageError, match="JSON"):
            await client.send({1, 2})
        assert client.stats.buffered == 0


async def test_raw_client_reconnects_and_resubscribes() -> None:
    """The raw client runs on_connect after every connect and keeps receiving after a drop."""
    connections = 0

    async def feed(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        assert await ws.recv() == "subscribe"
        await ws.send(f"tick {connections}")
        if connections == 1:
            await ws.close(1011, "bye")  # retryable
        else:
            await ws.wait_closed()

    async def subscribe(ws: Any) -> None:
        await ws.send("subscribe")

    async with serve(feed, "127.0.0.1", 0) as s:
        url = f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}"
        async with RawClient(url, on_connect=subscribe, backoff=FAST) as raw:
            got = [await asyncio.wait_for(anext(raw), 5) for _ in range(2)]
    assert got == ["tick 1", "tick 2"] and connections == 2


async def test_raw_client_buffers_while_down_and_delivers_after(tmp_path: Path) -> None:
    """Messages sent before the server is up are written once it is."""
    received: list[str] = []
    done = asyncio.Event()

    async def sink(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(str(message))
            if len(received) == 3:
                done.set()

    async with serve(sink, "127.0.0.1", 0) as s:
        port = s.sockets[0].getsockname()[1]
    raw = RawClient(
        f"ws://127.0.0.1:{port}", backoff=FAST, options=ConnectOptions(subprotocol=None)
    )
    await raw.__aenter__()
    for word in ("a", "b", "c"):
        await raw.send(word)
    await asyncio.sleep(0.1)
    async with serve(sink, "127.0.0.1", port):
        await asyncio.wait_for(done.wait(), 5)
        await raw.close()
    assert received == ["a", "b", "c"]


async def test_consumer_ahead_of_a_reset_server_is_a_clear_error(
    server: RunningServer, tmp_path: Path
) -> None:
    """A stored position beyond the server's log (its state was reset) stops with StreamReset."""
    from resume.errors import StreamReset

    await publish(server, [1, 2, 3], timeout=5)
    with open_store(tmp_path / "c.db") as store:
        store.stream_client.set_cursor("c", channel(server), 500)
        client = StreamClient(channel(server), consumer="c", store=store, options=options())
        await client.start()
        with pytest.raises(StreamReset, match="reset"):
            await asyncio.wait_for(client.wait(), 5)
        await client.close()


async def test_batches_of_multibyte_text_stay_under_the_server_frame_limit(
    server: RunningServer,
) -> None:
    """Frame budgets count encoded bytes, so non-ASCII batches are not refused as too big."""
    text = "€" * 1000  # 3000 bytes in UTF-8
    async with StreamClient(
        channel(server), subscribe=False, options=options(max_attempts=2)
    ) as producer:
        await producer.send_many([text] * 600)
        await producer.flush(10)
    assert logged(server) == [text] * 600


def test_a_stable_client_id_needs_a_store() -> None:
    """Without a stored seq counter a restart would reuse seqs the server drops: refused."""
    from resume.errors import UsageError

    with pytest.raises(UsageError, match="reuse seqs"):
        StreamClient("ws://127.0.0.1:9/streams/x", client_id="svc-1")


async def test_events_are_logged_as_structured_records(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A gap is a WARNING record whose fields name the stream, the event and the range."""
    server = await start_server(retention_count=2)
    await publish(server, list(range(6)))
    caplog.set_level("INFO", logger="resume.stream")
    with open_store(server.root.parent / "client.db") as store:
        store.stream_client.set_cursor("late", channel(server), 0)
        async with StreamClient(
            channel(server), consumer="late", store=store, options=options(), on_gap=lambda g: None
        ) as consumer:
            assert await take(consumer, 2) == [4, 5]
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "gap"]
    assert record.levelname == "WARNING" and "not recovered" in record.getMessage()
    assert (record.stream, record.first, record.last) == (channel(server), 1, 4)  # type: ignore[attr-defined]


async def test_a_silent_dead_link_is_detected_by_heartbeats_and_recovered(
    server: RunningServer, proxy: FaultProxy
) -> None:
    """A link that stops moving bytes is dropped within the heartbeat bound, then healed."""
    events: list[StreamEvent] = []
    heartbeat = ConnectOptions(
        ping_interval=0.2, ping_timeout=0.2, close_timeout=0.3, open_timeout=2.0, max_size=2**22
    )
    url = channel(f"ws://127.0.0.1:{proxy.port}")
    async with (
        StreamClient(
            url, start="start", options=options(connect=heartbeat), on_event=events.append
        ) as consumer,
        StreamClient(channel(server), subscribe=False, options=options()) as producer,
    ):
        await producer.send("before")
        assert await take(consumer, 1) == ["before"]
        proxy.stall()
        stalled_at = asyncio.get_running_loop().time()
        while not any(e.kind == "disconnected" for e in events):
            assert asyncio.get_running_loop().time() - stalled_at < 3, "dead link not detected"
            await asyncio.sleep(0.05)
        detected = asyncio.get_running_loop().time() - stalled_at
        proxy.cut()
        proxy.unstall()
        await producer.send("after")
        assert await take(consumer, 1) == ["after"]
    assert detected < 1.5
    assert consumer.stats.reconnects >= 1
