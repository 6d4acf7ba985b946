"""The /streams endpoint against hand-written and hostile clients: the protocol, and no damage."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from resume.stream.client import StreamClient
from resume.stream.endpoint import StreamEndpoint
from tests.stream.conftest import RunningServer, StartServer
from tests.stream.test_client import channel, logged, options, publish, take
from tests.transfer.test_receiver import closed_with, raw, request


def hello(client_id: str = "c1", after: Any = "end", subscribe: bool = True) -> dict[str, Any]:
    return {"type": "hello", "client_id": client_id, "after": after, "subscribe": subscribe}


async def joined(server: RunningServer, **kwargs: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await raw(server, "/streams/orders")
    return ws, await request(ws, hello(**kwargs))


async def test_publish_is_acked_with_the_highest_stored_client_seq(server: RunningServer) -> None:
    """A replayed pub stores only the new messages and acks the whole range."""
    ws, welcome = await joined(server, subscribe=False)
    assert welcome == {"type": "welcome", "acked": 0, "first": 1, "last": 0, "position": 0}
    assert await request(ws, {"type": "pub", "seq": 1, "data": ["a", "b"]}) == {
        "type": "ack",
        "seq": 2,
    }
    assert await request(ws, {"type": "pub", "seq": 2, "data": ["b", "c"]}) == {
        "type": "ack",
        "seq": 3,
    }
    await ws.close()
    ws, welcome = await joined(server, subscribe=False)  # a reconnect learns what was stored
    assert welcome["acked"] == 3 and welcome["last"] == 3
    await ws.close()
    assert logged(server) == ["a", "b", "c"]


async def test_subscriber_gets_the_log_after_its_position_then_live(server: RunningServer) -> None:
    """Replay from 'after', then live messages, in msgs frames with seqs and timestamps."""
    producer, _ = await joined(server, client_id="p", subscribe=False)
    await request(producer, {"type": "pub", "seq": 1, "data": [1, 2, 3]})
    consumer, welcome = await joined(server, client_id="c", after=1)
    assert welcome["position"] == 1
    replay = json.loads(await consumer.recv())
    assert (replay["type"], replay["first"], replay["data"]) == ("msgs", 2, [2, 3])
    assert len(replay["ts"]) == 2
    await request(producer, {"type": "pub", "seq": 4, "data": [4]})
    live = json.loads(await consumer.recv())
    assert (live["first"], live["data"]) == (4, [4])
    await producer.close()
    await consumer.close()


async def test_unacked_window_stops_the_push_until_the_consumer_acks(
    start_server: StartServer,
) -> None:
    """A consumer that does not ack gets at most a window of messages."""
    server = await start_server()
    window = inspect.signature(StreamEndpoint).parameters["window"].default
    await publish(server, list(range(window + 500)))
    consumer, _ = await joined(server, client_id="slow", after="start")
    received = 0
    while received < window:
        received += len(json.loads(await consumer.recv())["data"])
    assert received == window
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consumer.recv(), 0.5)
    await consumer.send(json.dumps({"type": "ack", "seq": window}))
    more = json.loads(await consumer.recv())
    assert more["first"] == window + 1
    await consumer.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\x00binary"], 1003),
        (["{not json"], 1007),
        ([json.dumps({"type": "pub", "seq": 1, "data": ["x"]})], 1002),  # before hello
        ([json.dumps(hello(client_id=""))], 1002),
        ([json.dumps(hello(client_id="x" * 65))], 1002),
        ([json.dumps(hello(after=-1))], 1002),
        ([json.dumps(hello()), json.dumps({"type": "pub", "seq": 0, "data": ["x"]})], 1002),
        ([json.dumps(hello()), json.dumps({"type": "pub", "seq": 1, "data": []})], 1002),
        ([json.dumps(hello()), json.dumps({"type": "pub", "seq": 5, "data": ["hole"]})], 1002),
        ([json.dumps(hello()), json.dumps({"type": "hello"})], 1002),
        ([json.dumps(hello()), json.dumps({"type": "ack", "seq": True})], 1002),
    ],
)
async def test_bad_frames_close_that_connection_only(
    server: RunningServer, frames: list[str | bytes], code: int
) -> None:
    """Each violation gets its close code, stores nothing, and a healthy client goes on."""
    async with (
        StreamClient(channel(server), start="start", options=options()) as healthy,
        StreamClient(channel(server), subscribe=False, options=options()) as producer,
    ):
        bad = await raw(server, "/streams/orders")
        for frame in frames:
            await bad.send(frame)
        assert await closed_with(bad) == code
        await producer.send("still here")
        await producer.flush(5)
        assert await take(healthy, 1) == ["still here"]
    assert logged(server) == ["still here"]


async def test_oversized_message_is_closed_with_1009(start_server: StartServer) -> None:
    """A frame over the stream size limit is refused with 'message too big'."""
    server = await start_server(stream_max_message=1024)
    ws = await raw(server, "/streams/orders", max_size=None)
    await ws.send(json.dumps(hello()))
    await ws.recv()
    await ws.send(json.dumps({"type": "pub", "seq": 1, "data": ["x" * 2000]}))
    assert await closed_with(ws) == 1009
    assert logged(server) == []


async def test_silent_client_is_closed_after_the_hello_timeout(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that never says hello does not hold the server forever."""
    monkeypatch.setattr("resume.stream.endpoint.HELLO_TIMEOUT", 0.2)
    ws = await raw(server, "/streams/orders")
    assert await closed_with(ws) == 1008


@pytest.mark.parametrize("path", ["/streams/", "/streams/../x", "/streams/a/b", "/streams/.x"])
async def test_bad_channel_names_are_404(server: RunningServer, path: str) -> None:
    """Only plain channel names are routed."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as caught:
        await raw(server, path)
    assert caught.value.response.status_code == 404


def test_the_in_memory_tail_stays_within_its_count_and_byte_bounds() -> None:
    """Big or many messages never grow a channel's cache past its limits, and it stays contiguous."""
    from resume.store.stream_log import ChannelHead
    from resume.stream.channel import MESSAGE_OVERHEAD, RECENT_BYTES, Channel

    channel = Channel("c", ChannelHead(1, 0), recent=100)
    channel.remember(1, ["x"] * 150, 0.0)
    assert len(channel.recent) == 100 and channel.recent[0].seq == 51
    assert channel.cached_after(49, 10) is None  # seq 50 was evicted: read from the log
    assert [m.seq for m in channel.cached_after(60, 3) or []] == [61, 62, 63]
    big = "y" * (RECENT_BYTES // 4 - MESSAGE_OVERHEAD)
    channel.remember(151, [big] * 10, 0.0)
    assert channel.recent_bytes <= RECENT_BYTES
    assert [m.seq for m in channel.recent] == list(range(157, 161))
    channel.remember(500, ["z"], 0.0)  # not a continuation: the cache restarts there
    assert [m.seq for m in channel.recent] == [500]


async def test_one_live_connection_per_producer_instance(server: RunningServer) -> None:
    """A second connection of the same instance fences the first (4410, nothing more stored);
    a connection of another instance is refused (4409) while the first holds the id."""
    old = await raw(server, "/streams/orders")
    await request(old, {**hello(client_id="p", subscribe=False), "instance": "X"})
    assert await request(old, {"type": "pub", "seq": 1, "data": ["one"]}) == {
        "type": "ack",
        "seq": 1,
    }
    intruder = await raw(server, "/streams/orders")
    await intruder.send(json.dumps({**hello(client_id="p", subscribe=False), "instance": "Y"}))
    assert await closed_with(intruder) == 4409
    new = await raw(server, "/streams/orders")
    welcome = await request(new, {**hello(client_id="p", subscribe=False), "instance": "X"})
    assert welcome["acked"] == 1
    await old.send(json.dumps({"type": "pub", "seq": 2, "data": ["stale"]}))
    assert await closed_with(old) == 4410
    assert await request(new, {"type": "pub", "seq": 2, "data": ["two"]}) == {
        "type": "ack",
        "seq": 2,
    }
    await new.close()
    assert logged(server) == ["one", "two"]
