"""Cancelled durable sends: the outbox, the seq counter and the session always agree."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from resume.store import Store, open_store
from resume.stream.client import StreamClient
from tests.stream.conftest import RunningServer, StartServer
from tests.stream.test_client import channel, logged, options

DEAD = "ws://127.0.0.1:9/streams/orders"  # nothing listens on the discard port


def assert_consistent(client: StreamClient, store: Store) -> None:
    """The store's counter is the session's; the outbox holds every unconfirmed seq, no more."""
    session = client.session
    assert session is not None
    outbox = store.stream_client.load_outbox(client.client_id, client.key)
    assert outbox.last_seq == session.last_seq
    stored = [seq for seq, _ in outbox.pending]
    assert stored == list(range(outbox.last_seq - len(stored) + 1, outbox.last_seq + 1))
    assert len(stored) >= session.unacked  # confirmations reach the store after the session


async def test_a_send_cancelled_at_every_await_point_is_sent_once_or_never(
    server: RunningServer, tmp_path: Path
) -> None:
    """Cancel send() after 0, 1, 2, ... loop steps until one completes: each message is either
    accepted (then stored once, in order) or not (never sent), and sending goes on."""
    expected: list[str] = []
    outcomes: list[tuple[bool, bool]] = []  # (was cancelled, was accepted)
    with open_store(tmp_path / "p.db") as store:
        async with StreamClient(
            channel(server), client_id="p", store=store, subscribe=False, options=options()
        ) as client:
            await client.ready(5)
            for steps in range(10_000):
                before = client.stats.sent
                task = asyncio.create_task(client.send(f"m{steps}"))
                for _ in range(steps):
                    await asyncio.sleep(0)
                finished = task.done()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                accepted = client.stats.sent - before == 1
                outcomes.append((task.cancelled(), accepted))
                if accepted:
                    expected.append(f"m{steps}")
                assert_consistent(client, store)
                if finished:
                    break
            assert await client.send("after") == client.session.last_seq  # type: ignore[union-attr]
            expected.append("after")
            await client.flush(10)
        assert_consistent(client, store)
    assert (True, False) in outcomes  # cancelled before the outbox write: never sent
    assert (True, True) in outcomes  # cancelled during the write: accepted, sent
    assert outcomes[-1] == (False, True)
    assert logged(server) == expected


async def test_cancelled_while_waiting_for_room_or_for_another_send_is_never_sent(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Sends waiting on a full buffer, or behind one that does, accept nothing when cancelled."""
    db = tmp_path / "p.db"
    with open_store(db) as store:
        client = StreamClient(
            DEAD, key="orders", client_id="p", store=store, subscribe=False,
            options=options(max_buffered=1),
        )  # fmt: skip
        await client.start()
        assert await client.send("a") == 1
        waiting = asyncio.create_task(client.send("b"))  # the buffer is full: waits for room
        queued = asyncio.create_task(client.send("c"))  # waits for the send before it
        await asyncio.sleep(0.1)
        assert not waiting.done() and not queued.done()
        queued.cancel()
        waiting.cancel()
        await asyncio.gather(waiting, queued, return_exceptions=True)
        assert_consistent(client, store)
        assert client.session is not None and client.session.last_seq == 1
        await client.close(timeout=0.2)
    server = await start_server()
    with open_store(db) as store:
        async with StreamClient(
            channel(server), key="orders", client_id="p", store=store, subscribe=False,
            options=options(),
        ) as client:  # fmt: skip
            assert await client.send("d") == 2
            await client.flush(10)
    assert logged(server) == ["a", "d"]


async def test_cancelled_during_a_blocked_outbox_write_is_accepted_and_sent_later(
    server: RunningServer, tmp_path: Path
) -> None:
    """The write waits on a database lock when the cancel comes: it completes, the message
    is accepted (sent), and only then does send() raise CancelledError."""
    db = tmp_path / "p.db"
    with open_store(db) as store:
        async with StreamClient(
            channel(server), key="orders", client_id="p", store=store, subscribe=False,
            options=options(),
        ) as client:  # fmt: skip
            await client.ready(5)
            with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                task = asyncio.create_task(client.send("held up"))
                await asyncio.sleep(0.3)
                task.cancel()
                await asyncio.sleep(0.3)
                assert not task.done()  # the commit cannot be called back: send() waits for it
                other.execute("COMMIT")
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
            assert client.stats.sent == 1
            assert await client.send("next") == 2
            await client.flush(10)
            assert_consistent(client, store)
    assert logged(server) == ["held up", "next"]
