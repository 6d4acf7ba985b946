"""Several real `resume serve` nodes on one PostgreSQL store and one root, behind a balancer.

Nodes are SIGKILLed (and restarted on their port) while files are uploaded and while two
producers publish through different nodes; every run ends by comparing the received files
byte for byte and by reading the channel's log from the store: server seqs 1..N without a gap,
each producer's messages exactly once and in its order, and a consumer that saw exactly the
log. Each test prints what it measured (how long a client took to continue after its node
died). Bounded: a few tens of MiB and a few thousand messages; the long version is the
``soak`` test (``pytest --soak``).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.chaos.test_stream_chaos import Child, reaped
from tests.cluster import Cluster, running, wait_for
from tests.processes import resume_cmd

pytestmark = pytest.mark.slow
MiB = 2**20
CHANNEL = "orders"


def make_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def start_upload(cluster: Cluster, source: Path, state: Path, transport: str = "ws") -> Child:
    url = cluster.url if transport == "ws" else cluster.url.replace("ws://", "http://") + "/files/"
    return Child(
        resume_cmd(
            "-v", "upload", str(source), url, "--db", str(state), "--chunk-size", "256KiB",
            "--window", "4", "--no-progress", "--max-retry-delay", "0.3", "--via", transport,
        )
    )  # fmt: skip


def kill_owner_at(cluster: Cluster, name: str, fraction: float, size: int) -> float:
    """SIGKILL the node receiving ``name`` once ``fraction`` of it is durable; restart it
    on its port; return how long until another node recorded the next chunk (seconds)."""

    def reached() -> object:
        upload = cluster.upload(name)
        assert upload is None or upload.state != "completed", f"{name} finished before the kill"
        ready = upload and upload.offset >= fraction * size and upload.owner
        return ready and cluster.node_of(upload.owner_pid) is not None and upload  # type: ignore[union-attr]

    try:
        progress = wait_for(reached, 60, f"{fraction:.0%} of {name} stored")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {cluster.uploads()}\n{cluster.logs()}") from None
    node = cluster.node_of(progress.owner_pid)
    assert node is not None, (progress, cluster.logs())
    node.kill()
    died = time.monotonic()
    at_kill = cluster.upload(name)
    assert at_kill is not None and at_kill.state == "receiving", at_kill
    wait_for(
        lambda: (
            (u := cluster.upload(name))
            and (u.state == "completed" or (u.offset > at_kill.offset and u.owner != at_kill.owner))
        ),
        60,
        f"{name} to continue on another node",
        interval=0.005,
    )
    continued = time.monotonic() - died
    node.start()  # back on its port: the cluster is whole again
    return continued


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_uploads_continue_on_another_node_when_theirs_is_killed(
    tmp_path: Path, pg_url: str, transport: str
) -> None:
    """Two uploads through a balancer over three nodes; the node receiving each is SIGKILLed
    mid-file (twice in all): both clients continue elsewhere and the files arrive intact. Over
    WebSocket (/upload) and over HTTP (tus, /files) alike."""
    size = 32 * MiB
    sources = [make_file(tmp_path / f"{n}.bin", size) for n in ("a", "b")]
    children: list[Child] = []
    with running(tmp_path, pg_url, 3, lease="2s", rate=8 * MiB) as cluster, reaped(children):
        for source in sources:
            children.append(
                start_upload(cluster, source, tmp_path / f"{source.stem}.db", transport)
            )
        with ThreadPoolExecutor(2) as pool:  # each node death is watched on its own
            waits = list(
                pool.map(
                    lambda plan: kill_owner_at(cluster, *plan, size),
                    [("a.bin", 0.3), ("b.bin", 0.6)],
                )
            )
        for child in children:
            assert child.wait(timeout=120) == 0, child.stderr + cluster.logs()
        uploads = cluster.uploads()
    for source in sources:
        assert (cluster.root / source.name).read_bytes() == source.read_bytes()
    assert [(u.name, u.state) for u in uploads] == [("a.bin", "completed"), ("b.bin", "completed")]
    assert not list((cluster.root / ".resume").glob("**/*.part"))
    assert all("retrying in" in child.stderr for child in children)
    print(f"\nclient continued on another node {', '.join(f'{w:.2f}s' for w in waits)} after its "
          "node was SIGKILLed (lease 2s)")  # fmt: skip


def test_a_paused_node_is_fenced_when_it_wakes(tmp_path: Path, pg_url: str) -> None:
    """The node receiving a file is frozen (SIGSTOP) and its client's connection cut; another
    node takes over once the lease lapses; the frozen node, woken, records nothing more."""
    size = 24 * MiB
    source = make_file(tmp_path / "p.bin", size)
    children: list[Child] = []
    with running(tmp_path, pg_url, 2, lease="2s", rate=8 * MiB) as cluster, reaped(children):
        assert cluster.balancer is not None
        children.append(start_upload(cluster, source, tmp_path / "p.db"))
        owned = wait_for(
            lambda: (u := cluster.upload("p.bin")) and u.offset >= size // 4 and u.owner and u,
            60,
            "a quarter stored",
        )
        frozen = cluster.node_of(owned.owner_pid)
        assert frozen is not None
        cluster.pause(frozen)
        cluster.balancer.ports.remove(frozen.port)  # its health check fails
        cluster.balancer.cut(frozen.port)  # and the client's connection to it drops
        taken = wait_for(
            lambda: (u := cluster.upload("p.bin")) and u.epoch > owned.epoch and u,
            30,
            "another node to take the file over",
        )
        assert taken.owner != owned.owner
        cluster.resume(frozen)  # wakes with chunks in flight and an old epoch
        assert children[0].wait(timeout=120) == 0, children[0].stderr + cluster.logs()
        final = cluster.upload("p.bin")
    assert (cluster.root / "p.bin").read_bytes() == source.read_bytes()
    assert final is not None and final.state == "completed"


# -- streams ------------------------------------------------------------------------------------


def stream_log(cluster: Cluster) -> list[tuple[int, str, int, str]]:
    return [
        (int(seq), producer, int(pseq), data)
        for seq, producer, pseq, data in cluster.query(
            "SELECT seq, producer, producer_seq, data FROM stream_messages WHERE channel = %s "
            "ORDER BY seq",
            (CHANNEL,),
        )
    ]


def assert_exactly_once_per_producer(
    log: list[tuple[int, str, int, str]], producers: dict[str, int]
) -> None:
    assert [row[0] for row in log] == list(range(1, len(log) + 1)), "server seqs have a gap"
    for producer, total in producers.items():
        mine = [(pseq, int(data)) for _, p, pseq, data in log if p == producer]
        assert mine == [(i, i) for i in range(1, total + 1)], f"{producer}: not 1..{total} once"


def run_two_producers(tmp_path: Path, cluster: Cluster, total: int, kills: int) -> float:
    """Two producers and a consumer through the balancer while ``kills`` nodes are SIGKILLed
    in turn (each restarted); returns the elapsed seconds of publishing."""
    url = f"{cluster.url}/streams/{CHANNEL}"
    children: list[Child] = []
    with reaped(children):
        tail = Child(
            resume_cmd(
                "tail", url, "--consumer", "watcher", "--db", str(tmp_path / "tail.db"),
                "--from-start", "--count", str(2 * total), "--max-retry-delay", "0.3",
            )
        )  # fmt: skip
        children.append(tail)
        started = time.monotonic()
        for name in ("p1", "p2"):
            children.append(
                Child(
                    [
                        sys.executable, "-m", "tests.stream_child", url,
                        str(tmp_path / f"{name}.db"), name, str(total), "--batch", "20",
                        "--pause", "0.002",
                    ]
                )
            )  # fmt: skip
        for index in range(kills):
            target = (index + 1) * 2 * total // (kills + 2)
            wait_for(lambda t=target: len(stream_log(cluster)) >= t, 120, f"{target} stored", 0.05)
            node = cluster.nodes[index % len(cluster.nodes)]
            node.kill()
            time.sleep(0.3)
            node.start()
        for producer in children[1:]:
            assert producer.wait(timeout=180) == 0, producer.stderr + "".join(producer.lines)
        elapsed = time.monotonic() - started
        assert tail.wait(timeout=120) == 0, tail.stderr + cluster.logs()
    log = stream_log(cluster)
    assert_exactly_once_per_producer(log, {"p1": total, "p2": total})
    assert [int(line) for line in tail.lines] == [int(data) for *_, data in log]
    return elapsed


def test_two_producers_on_two_nodes_while_nodes_die(tmp_path: Path, pg_url: str) -> None:
    """Two producers publishing through different nodes and a consumer on a third; two nodes
    are SIGKILLed mid-stream: the log holds each producer's messages once, in its order, with
    gap-free server seqs, and the consumer printed exactly the log."""
    with running(tmp_path, pg_url, 3, lease="2s") as cluster:
        elapsed = run_two_producers(tmp_path, cluster, 2_000, kills=2)
        assert cluster.balancer is not None
        assert sum(cluster.balancer.routed.values()) > 3  # clients really reconnected
    print(f"\n2 x 2000 messages through 3 nodes with 2 SIGKILLs in {elapsed:.1f}s")


@pytest.mark.soak
def test_soak_uploads_and_streams_through_many_kills(tmp_path: Path, pg_url: str) -> None:
    """The long version: 20k messages per producer with six node kills, then two 200 MiB
    uploads whose nodes are killed four times."""
    with running(tmp_path / "s", pg_url, 3, lease="2s") as cluster:
        elapsed = run_two_producers(tmp_path, cluster, 20_000, kills=6)
    size = 200 * MiB
    sources = [make_file(tmp_path / f"{n}.bin", size) for n in ("a", "b")]
    children: list[Child] = []
    with running(tmp_path / "u", pg_url, 3, lease="2s", rate=8 * MiB) as cluster, reaped(children):
        for source in sources:
            children.append(start_upload(cluster, source, tmp_path / f"{source.stem}.db"))
        waits = [
            kill_owner_at(cluster, name, fraction, size)
            for name, fraction in (("a.bin", 0.2), ("b.bin", 0.4), ("a.bin", 0.6), ("b.bin", 0.8))
        ]
        for child in children:
            assert child.wait(timeout=600) == 0, child.stderr + cluster.logs()
    for source in sources:
        assert (cluster.root / source.name).read_bytes() == source.read_bytes()
    print(f"\nsoak: 2 x 20000 messages in {elapsed:.1f}s; uploads continued after {waits}")


# -- in-process: wake-ups across nodes, and where the store comes from ---------------------------


async def _live_delivery(tmp_path: Path, pg_url: str, *, listen: bool) -> float:
    """Seconds from a publish on node A to its delivery to a consumer on node B."""
    import asyncio
    import contextlib

    from resume.server import ServerConfig, build_app, run_server
    from resume.stream.client import StreamClient

    stops: list[asyncio.Event] = []
    tasks = []
    urls: list[str] = []
    for _ in range(2):
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        def factory(config: ServerConfig):  # type: ignore[no-untyped-def]
            app = build_app(config)
            if not listen:  # as if every notification were lost: the head poll must deliver
                link = app.routes["streams"].cluster  # type: ignore[attr-defined]
                link.listener = None
            return app

        config = ServerConfig(root=tmp_path / "root", port=0, db=pg_url, lease=2.0)
        tasks.append(
            asyncio.create_task(
                run_server(config, ready=ready.set_result, stop=stop, app_factory=factory)
            )
        )
        stops.append(stop)
        urls.append(await asyncio.wait_for(ready, 30))
    consumer = StreamClient(f"{urls[1]}/streams/live", start="start")
    producer = StreamClient(f"{urls[0]}/streams/live", subscribe=False)
    try:
        await consumer.start()
        await producer.start()
        await producer.send({"n": 0})  # the channel exists on both nodes from here on
        await asyncio.wait_for(consumer.receive(), 10)
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        await producer.send({"n": 1})
        message = await asyncio.wait_for(consumer.receive(), 10)
        assert message.data == {"n": 1}
        return time.monotonic() - sent
    finally:
        for client in (producer, consumer):
            with contextlib.suppress(Exception):
                await client.close()
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)


async def test_a_consumer_on_another_node_gets_messages_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    """Published on node A, delivered live to a consumer on node B: LISTEN/NOTIFY wakes B at
    the commit (well under the 2 s head poll)."""
    delay = await _live_delivery(tmp_path, pg_url, listen=True)
    assert delay < 1.0, delay
    print(f"\ndelivered across nodes {delay * 1000:.0f} ms after the publish")


async def test_a_lost_notification_only_delays(tmp_path: Path, pg_url: str) -> None:
    """Without any notification (as if every one were lost) node B still delivers, from its
    head poll: the log in the database is the truth."""
    delay = await _live_delivery(tmp_path, pg_url, listen=False)
    assert delay < 4.0, delay


def test_serve_takes_its_store_from_the_environment(tmp_path: Path, pg_url: str) -> None:
    """`$RESUME_SERVER_DB` puts the server's store on PostgreSQL: no SQLite file, no root lock."""
    from resume.store import migrate
    from tests.processes import ServeProcess

    root = tmp_path / "root"
    with (
        ServeProcess(root, env={"RESUME_SERVER_DB": pg_url}),
        ServeProcess(root, env={"RESUME_SERVER_DB": pg_url}),
    ):
        cluster = Cluster(tmp_path, pg_url, 0)
        head = migrate.head_revision()
        assert cluster.query("SELECT version_num FROM alembic_version") == [(head,)]
    assert not (root / ".resume" / "server.db").exists()
    assert not (root / ".resume" / "server.lock").exists()
