"""Streams through cuts, stalls, delays, server SIGKILLs and client SIGKILLs: exactly once.

Every test publishes the integers 1..N on one channel and checks the end state two ways: the
server's own log (its store, read directly) holds message i at server seq i exactly once, and
every consumer saw 1..N in order, where the only repeat allowed is the one line a SIGKILLed
``resume tail`` printed but had not yet recorded as taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resume.net.backoff import Backoff
from resume.server import ServerConfig, run_server
from resume.store import open_store
from resume.stream.client import StreamClient, StreamOptions
from tests.chaos.proxy import FaultProxy, ThreadedProxy
from tests.processes import REPO, ServeProcess, resume_cmd, resume_env, run_resume, wait_until

CHANNEL = "orders"
FAST = StreamOptions(
    backoff=Backoff(base=0.02, cap=0.2, min_uptime=0.5), handshake_timeout=5.0, ack_timeout=10.0
)


# -- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def in_process_server(root: Path) -> AsyncIterator[str]:
    """`resume serve` in this event loop on a free port; yields its ws:// URL."""
    root.mkdir(parents=True, exist_ok=True)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(ServerConfig(root=root, port=0), ready=ready.set_result, stop=stop)
    )
    try:
        yield await asyncio.wait_for(asyncio.shield(ready), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def server_db(root: Path) -> Path:
    return root / ".resume" / "server.db"


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def stored_count(db: Path, channel: str = CHANNEL) -> int:
    """The last server seq of ``channel`` (0 before the first message), read while it runs."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(read_only(db)) as conn:
            row = conn.execute(
                "SELECT last_seq FROM stream_channels WHERE channel = ?", (channel,)
            ).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    return row[0] if row else 0


def producer_seq(db: Path, client_id: str, channel: str = CHANNEL) -> int:
    """The highest client seq the server stored for ``client_id``."""
    with contextlib.closing(read_only(db)) as conn:
        row = conn.execute(
            "SELECT last_seq FROM stream_producers WHERE channel = ? AND client_id = ?",
            (channel, client_id),
        ).fetchone()
    return row[0] if row else 0


def assert_log_is_exactly(db: Path, total: int, channel: str = CHANNEL) -> None:
    """The server's log of ``channel`` is message i at seq i for i = 1..total, nothing else."""
    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute(
            "SELECT seq, data FROM stream_messages WHERE channel = ? ORDER BY seq", (channel,)
        ).fetchall()
        head = conn.execute(
            "SELECT first_seq, last_seq FROM stream_channels WHERE channel = ?", (channel,)
        ).fetchone()
    assert head == (1, total)
    assert len(rows) == total, f"{len(rows)} stored for {total} published"
    data = [int(json.loads(text)) for _, text in rows]  # 7 or "7" (`resume send` sends strings)
    assert_exactly_once_in_order(data, total)
    assert [seq for seq, _ in rows] == list(range(1, total + 1))


def assert_exactly_once_in_order(values: list[int], total: int) -> None:
    """``values`` is 1..total; on failure say where it first went wrong, not a 10k-long diff."""
    expected = list(range(1, total + 1))
    if values == expected:
        return
    seen: set[int] = set()
    duplicates = [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    missing = sorted(set(expected) - seen)
    first_bad = next(
        (i for i, (a, b) in enumerate(zip(values, expected, strict=False)) if a != b),
        min(len(values), total),
    )
    pytest.fail(
        f"{len(values)} values for 1..{total}: {len(duplicates)} duplicates "
        f"{duplicates[:10]}, {len(missing)} missing {missing[:10]}, first difference at index "
        f"{first_bad}: {values[max(0, first_bad - 3) : first_bad + 3]}"
    )


class Child:
    """A child process whose stdout lines are collected by a thread as they come."""

    def __init__(self, argv: list[str], *, stdin: int | None = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=resume_env(),
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait(self, timeout: float) -> int:
        """Wait for it to exit by itself; SIGKILL it if it does not."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._drain()
        return code

    def kill(self) -> int:
        """SIGKILL and reap; every line it wrote before dying is in ``lines`` afterwards."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout=15)
        self._drain()
        return code

    def _drain(self) -> None:
        self._out.join(timeout=15)
        self._err.join(timeout=15)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


@contextlib.contextmanager
def reaped(children: list[Child]):
    """Whatever happens, no child outlives the test."""
    try:
        yield children
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.kill()


# -- a. in-process: cuts, stalls and delays in both directions -----------------------------------


async def test_10k_each_way_through_cuts_stalls_and_delays(tmp_path: Path) -> None:
    """A producer and a consumer behind a chaotic proxy each move 10,000 messages exactly once."""
    total = 10_000
    rng = random.Random(20261123)
    root = tmp_path / "srv"
    async with asyncio.timeout(90), in_process_server(root) as url:
        port = int(url.rsplit(":", 1)[1])
        async with FaultProxy(port, seed=rng.randrange(2**32)) as proxy:
            proxy.delay = 0.002  # something is always in flight when a cut lands
            channel_url = f"ws://127.0.0.1:{proxy.port}/streams/{CHANNEL}"
            producer = StreamClient(channel_url, subscribe=False, options=FAST)
            consumer = StreamClient(channel_url, start="start", options=FAST)
            received: list[tuple[int, int]] = []

            async def consume() -> None:
                async for message in consumer:
                    received.append((message.seq, message.data))
                    if len(received) == total:
                        return

            async def produce() -> None:
                # Paced over ~4 s so the chaos overlaps the whole exchange.
                for first in range(1, total + 1, 50):
                    await producer.send_many(range(first, min(total, first + 49) + 1))
                    await asyncio.sleep(0.02)
                await producer.flush(timeout=60)

            await producer.start()
            await consumer.start()
            chaos = asyncio.create_task(
                proxy.chaos(
                    duration=60,
                    rng=random.Random(rng.randrange(2**32)),
                    cut_every=(0.15, 0.6),
                    stall_for=(0.05, 0.4),
                    stall_probability=0.3,
                )
            )
            try:
                await asyncio.gather(produce(), consume())
            finally:
                chaos.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chaos
                await producer.close(timeout=5)
                await consumer.close(timeout=5)
            proxy_stats = proxy.stats

        # A fresh consumer straight to the server replays the log from the start.
        clean = StreamClient(f"{url}/streams/{CHANNEL}", start="start", options=FAST)
        replayed: list[tuple[int, int]] = []
        async with clean:
            async for message in clean:
                replayed.append((message.seq, message.data))
                if len(replayed) == total:
                    break

    assert_log_is_exactly(server_db(root), total)
    assert_exactly_once_in_order([data for _, data in received], total)
    assert [seq for seq, _ in received] == list(range(1, total + 1))
    assert replayed == received
    with open_store(server_db(root)) as store:
        assert store.streams.producer_seq(CHANNEL, producer.client_id) == total
    # The chaos really happened and really hit both directions.
    assert proxy_stats.cuts >= 3, proxy_stats
    assert producer.stats.reconnects >= 1 and consumer.stats.reconnects >= 1
    assert producer.stats.replayed > 0, producer.stats  # unacked messages went again
    assert producer.stats.acked == total and producer.stats.buffered == 0
    assert consumer.stats.received == total and consumer.stats.gaps == 0
    print(
        f"\nproxy: {proxy_stats.connections} connections, {proxy_stats.cuts} cuts; producer "
        f"{producer.stats.reconnects} reconnects, {producer.stats.replayed} replayed; consumer "
        f"{consumer.stats.reconnects} reconnects, {consumer.stats.duplicates} duplicates dropped"
    )


# -- b. the server is SIGKILLed while `resume send` and `resume tail` run ------------------------


@pytest.mark.slow
def test_server_sigkill_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Two server SIGKILLs while `resume send` publishes and `resume tail` follows: each once."""
    total = 6_000
    root = tmp_path / "srv"
    server = ServeProcess(root)
    server.start()
    children: list[Child] = []
    try:
        with reaped(children):
            url = f"{server.url}/streams/{CHANNEL}"
            tail = Child(
                resume_cmd(
                    "-v", "tail", url, "--consumer", "watcher", "--db", str(tmp_path / "tail.db"),
                    "--from-start", "--count", str(total), "--max-retry-delay", "0.3",
                )
            )  # fmt: skip
            children.append(tail)
            send = Child(
                resume_cmd("-v", "send", url, "--max-retry-delay", "0.3"), stdin=subprocess.PIPE
            )
            children.append(send)
            feeder = threading.Thread(target=feed_lines, args=(send.proc, total), daemon=True)
            feeder.start()
            db = server_db(root)
            killed_at: list[int] = []
            for target in (total // 4, total // 2):  # a quarter stored, then half
                wait_until(lambda t=target: stored_count(db) >= t, 60, f"{target} stored")
                assert send.proc.poll() is None and tail.proc.poll() is None  # mid-stream
                server.kill()
                killed_at.append(stored_count(db))
                time.sleep(0.3)  # the clients find the port closed and back off
                server.start()  # same port, same store
                assert stored_count(db) == killed_at[-1]  # every commit survived the kill
            feeder.join(timeout=60)
            assert send.wait(timeout=90) == 0, send.stderr
            assert tail.wait(timeout=90) == 0, tail.stderr
    finally:
        server.terminate()
    assert_log_is_exactly(server_db(root), total)
    assert_exactly_once_in_order([int(line) for line in tail.lines], total)
    # Both clients really lost their connection and came back (logged at -v).
    assert "retrying in" in send.stderr and "retrying in" in tail.stderr
    print(f"\nserver SIGKILLed with {killed_at} of {total} stored; send and tail reconnected")


def feed_lines(proc: subprocess.Popen[str], total: int) -> None:
    """Write 1..total to the child's stdin in paced batches, then close it."""
    assert proc.stdin is not None
    try:
        for first in range(1, total + 1, 100):
            last = min(total, first + 99)
            proc.stdin.write("".join(f"{i}\n" for i in range(first, last + 1)))
            proc.stdin.flush()
            time.sleep(0.08)  # ~5 s in all: the server kills land while lines still come
        proc.stdin.close()
    except (BrokenPipeError, ValueError):
        pass  # the child died; the test reports it


# -- c. the clients are SIGKILLed: a durable producer, then `resume tail` ------------------------


@pytest.mark.slow
def test_producer_and_tail_sigkills_publish_and_print_each_message_once(tmp_path: Path) -> None:
    """A durable producer and a `resume tail`, each SIGKILLed three times: 1..N exactly once."""
    total = 10_000
    rng = random.Random(20261124)
    root = tmp_path / "srv"
    producer_db = tmp_path / "producer.db"
    client_id = "producer-P"
    started = time.monotonic()
    server = ServeProcess(root)
    server.start()
    children: list[Child] = []
    try:
        with reaped(children):
            url = f"{server.url}/streams/{CHANNEL}"
            db = server_db(root)

            # 1. The producer, through a slow link so every kill leaves messages in flight:
            #    killed at three random points, then run to the end.
            with ThreadedProxy(server.port, seed=rng.randrange(2**32)) as proxy:
                proxy.delay = 0.03
                producer_url = f"ws://127.0.0.1:{proxy.port}/streams/{CHANNEL}"
                produce = [
                    sys.executable, "-m", "tests.stream_child", producer_url, str(producer_db),
                    client_id, str(total), "--batch", "50", "--pause", "0.02",
                ]  # fmt: skip
                at_kills: list[tuple[int, int]] = []  # (unconfirmed in the outbox, not stored)
                for kill in range(3):
                    target = stored_count(db) + rng.randint(1_000, 2_500)
                    child = Child(produce)
                    children.append(child)
                    wait_until(
                        lambda t=target, c=child: (
                            stored_count(db) >= t or c.proc.poll() is not None
                        ),
                        60,
                        f"producer kill {kill} at {target}",
                    )
                    assert child.kill() == -9, child.stderr  # it was still running
                    with open_store(producer_db) as store:
                        outbox = store.stream_client.load_outbox(client_id, producer_url)
                    on_server = producer_seq(db, client_id)
                    # Confirmed here means stored there; the server never has more than was sent.
                    assert outbox.acked <= on_server <= outbox.last_seq
                    assert [seq for seq, _ in outbox.pending] == list(
                        range(outbox.acked + 1, outbox.last_seq + 1)
                    )
                    at_kills.append((len(outbox.pending), outbox.last_seq - on_server))
                child = Child(produce)
                children.append(child)
                assert child.wait(timeout=120) == 0, child.stderr
                assert child.lines[-1] == "done"
            assert_log_is_exactly(db, total)
            # The kills hit messages in flight: the restarts had something to re-send or confirm.
            assert any(pending for pending, _ in at_kills), at_kills
            produced_at = time.monotonic()

            # 2. The consumer: `resume tail` killed at three random points, then finished.
            tail_db = tmp_path / "tail.db"
            tail_args = ["tail", url, "--consumer", "C", "--db", str(tail_db), "--from-start"]
            runs: list[list[str]] = []
            printed = 0
            for kill in range(3):
                target = rng.randint(500, 2_000)  # lines this run prints before its kill
                tail = Child(resume_cmd(*tail_args))
                children.append(tail)
                wait_until(
                    lambda t=target, c=tail: len(c.lines) >= t or c.proc.poll() is not None,
                    60,
                    f"tail kill {kill} at line {target}",
                )
                assert tail.kill() == -9, tail.stderr
                runs.append(tail.lines)
                printed = int(tail.lines[-1]) if tail.lines else printed
            with open_store(tail_db) as store:
                cursor = store.stream_client.cursor("C", url)
            assert cursor is not None and cursor in (printed - 1, printed)
            result = run_resume(*tail_args, "--count", str(total - cursor), timeout=120)
            assert result.returncode == 0, result.stderr
            runs.append(result.stdout.splitlines())
    finally:
        server.terminate()

    assert_log_is_exactly(server_db(root), total)
    # Each run starts at the line after the last one the previous run printed, or repeats it.
    last = 0
    for run in runs:
        values = [int(line) for line in run]
        assert values, "a run printed nothing"
        assert values[0] in (last, last + 1), (last, values[:3])
        assert values == list(range(values[0], values[0] + len(values)))
        last = values[-1]
    assert last == total
    joined = [int(line) for run in runs for line in run]
    repeats = len(joined) - total
    assert 0 <= repeats <= 3  # at most the one line printed right before each kill
    assert_exactly_once_in_order(sorted(set(joined)), total)
    print(
        f"\nproducer: (unconfirmed, not stored) at each kill {at_kills}; "
        f"tail: {[len(run) for run in runs]} lines per run, {repeats} repeated after kills; "
        f"{produced_at - started:.1f}s producing, {time.monotonic() - produced_at:.1f}s tailing"
    )
