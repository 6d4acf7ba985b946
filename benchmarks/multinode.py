"""Several `resume serve` nodes on one PostgreSQL store, against SQLite, in one run.

    .venv/bin/python benchmarks/multinode.py [--size 256MiB] [--messages 20000] [--runs 3]
        [--leases 1,3] [--json]

Needs PostgreSQL (``$RESUME_TEST_POSTGRES``, default postgresql+psycopg://postgres@127.0.0.1:5432/test:
a scratch database is created per measurement and dropped) and psycopg (``.[postgres]``).
Every server is a real `resume serve` process on 127.0.0.1; clients are whole `resume upload`
processes (uploads) or `StreamClient`s in this process (streams). Reported, medians of --runs:

- upload MB/s of one `resume upload` to one node with the SQLite store, to one node with the
  PostgreSQL store, and through a round-robin balancer to two PostgreSQL nodes;
- stream messages/s of one producer (``send_many`` of 100, acked) with each store;
- two producers into one channel: both through one node, then one on each of two nodes
  (messages/s of both together);
- failover: SIGKILL the node receiving an upload and time until another node records the next
  chunk (for each --leases value); SIGKILL the node serving a producer and time until its
  next message is stored through another node.

The 2-core development machine runs the client, every node and PostgreSQL on the same cores:
ratios from one run mean something, absolute numbers little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from resume.net.backoff import Backoff  # noqa: E402
from resume.stream.client import StreamClient, StreamOptions  # noqa: E402
from tests import pg  # noqa: E402
from tests.chaos.balancer import Balancer  # noqa: E402
from tests.cluster import Cluster, wait_for  # noqa: E402
from tests.processes import ServeProcess, resume_cmd, resume_env  # noqa: E402

MiB = 2**20
FAST = StreamOptions(backoff=Backoff(base=0.02, cap=0.2, min_uptime=0.5))


def parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


@contextmanager
def nodes(work: Path, count: int, db: str | None, *extra: str) -> Iterator[list[ServeProcess]]:
    """``count`` nodes sharing ``work/root``; db None: one node with its SQLite store."""
    root = work / "root"
    args = ("--db", db, *extra) if db else extra
    procs = [ServeProcess(root, *args) for _ in range(count)]
    for index, proc in enumerate(procs):
        proc.log_path = work / f"node{index}.log"
    try:
        for proc in procs:
            proc.start(timeout=60)
        yield procs
    finally:
        for proc in procs:
            proc.kill()


@contextmanager
def store(kind: str) -> Iterator[str | None]:
    """None for SQLite (the node's own file), else a scratch PostgreSQL database's URL."""
    if kind == "sqlite":
        yield None
        return
    with pg.scratch_database("resume_bench") as url:
        yield url


def upload(source: Path, url: str, state: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        resume_cmd("upload", str(source), url, "--db", str(state), "--no-progress"),
        capture_output=True,
        text=True,
        env=resume_env(),
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(done.stderr)
    return elapsed


def bench_upload(source: Path, kind: str, count: int) -> float:
    """Seconds for one whole `resume upload` of ``source`` (count nodes: via a balancer)."""
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp, store(kind) as db:
        work = Path(tmp)
        with nodes(work, count, db) as procs:
            if count == 1:
                return upload(source, procs[0].url, work / "client.db")
            with Balancer([p.port for p in procs]) as balancer:
                return upload(source, balancer.url, work / "client.db")


async def produce(url: str, client_id: str, total: int, batch: int = 100) -> float:
    client = StreamClient(f"{url}/streams/bench", subscribe=False, options=FAST)
    await client.start()
    try:
        while client.session is None or client.session.state.value != "open":  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        for at in range(0, total, batch):
            await client.send_many(
                [{"i": i, "p": client_id} for i in range(at, min(total, at + batch))]
            )
        await client.flush(timeout=600)
        return time.perf_counter() - started
    finally:
        await client.close()


def bench_streams(kind: str, total: int, producers: int, spread: bool) -> float:
    """Messages/s of ``producers`` producers into one channel (spread: one node each)."""
    with tempfile.TemporaryDirectory() as tmp, store(kind) as db:
        count = producers if spread else 1
        with nodes(Path(tmp), count, db) as procs:

            async def run() -> float:
                started = time.perf_counter()
                await asyncio.gather(
                    *(produce(procs[i % count].url, f"p{i}", total) for i in range(producers))
                )
                return time.perf_counter() - started

            return producers * total / asyncio.run(run())


def bench_upload_failover(source: Path, lease: str) -> float:
    """Seconds from SIGKILL of the node receiving an upload to the next chunk on another."""
    size = source.stat().st_size
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp, store("pg") as db:
        assert db is not None
        cluster = Cluster(Path(tmp), db, 2, lease=lease, rate=16 * MiB)
        cluster.start()
        try:
            client = subprocess.Popen(
                resume_cmd(
                    "upload", str(source), cluster.url, "--db", str(Path(tmp) / "c.db"),
                    "--no-progress", "--chunk-size", "256KiB", "--max-retry-delay", "0.3",
                ),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=resume_env(),
            )  # fmt: skip
            owned = wait_for(
                lambda: (
                    (u := cluster.upload(source.name)) and u.offset >= size // 4 and u.owner and u
                ),
                120,
                "a quarter of the upload",
                0.005,
            )
            node = cluster.node_of(owned.owner_pid)
            assert node is not None
            at = cluster.upload(source.name)
            assert at is not None
            node.kill()
            died = time.perf_counter()
            wait_for(
                lambda: (
                    (u := cluster.upload(source.name))
                    and u.offset > at.offset
                    and u.owner != at.owner
                ),
                120,
                "the upload to continue",
                0.002,
            )
            continued = time.perf_counter() - died
            client.wait(timeout=600)
            return continued
        finally:
            cluster.stop()


def bench_stream_failover() -> float:
    """Seconds from SIGKILL of the node serving a producer to its next message stored."""
    with tempfile.TemporaryDirectory() as tmp, store("pg") as db:
        assert db is not None
        cluster = Cluster(Path(tmp), db, 2, lease="2s")
        cluster.start()
        try:

            async def run() -> float:
                client = StreamClient(f"{cluster.url}/streams/bench", subscribe=False, options=FAST)
                await client.start()
                try:
                    sent = 0

                    async def pump() -> None:
                        nonlocal sent
                        while True:
                            await client.send({"i": sent})
                            sent += 1
                            await asyncio.sleep(0.001)

                    task = asyncio.create_task(pump())
                    while client.stats.acked < 200:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    stored = count_stored(cluster)
                    victim = (
                        cluster.nodes[0]
                        if cluster.balancer.routed[cluster.nodes[0].port]
                        else cluster.nodes[1]
                    )  # type: ignore[union-attr]
                    victim.kill()
                    died = time.perf_counter()
                    while count_stored(cluster) <= stored + 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.002)
                    task.cancel()
                    return time.perf_counter() - died
                finally:
                    await client.close()

            return asyncio.run(run())
        finally:
            cluster.stop()


def count_stored(cluster: Cluster) -> int:
    return int(cluster.query("SELECT count(*) FROM stream_messages")[0][0])


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--leases", default="1,3", help="lease lengths (s) for upload failover")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    why = pg.unavailable()
    if why:
        sys.exit(f"needs PostgreSQL: {why}")
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="resume-multinode-"))
    source = work / "data.bin"
    with source.open("wb") as f:
        for _ in range(0, size, 4 * MiB):
            f.write(os.urandom(min(4 * MiB, size - f.tell())))
    results: dict[str, Any] = {"size": size, "messages": args.messages, "runs": args.runs}
    uploads: dict[str, list[float]] = {"sqlite": [], "pg": [], "pg_2_nodes": []}
    streams: dict[str, list[float]] = {
        k: [] for k in ("sqlite", "pg", "pg_2p_1_node", "pg_2p_2_nodes", "sqlite_2p_1_node")
    }
    for run in range(args.runs):  # interleaved: load from other work hits every case alike
        uploads["sqlite"].append(size / bench_upload(source, "sqlite", 1) / 1e6)
        uploads["pg"].append(size / bench_upload(source, "pg", 1) / 1e6)
        uploads["pg_2_nodes"].append(size / bench_upload(source, "pg", 2) / 1e6)
        streams["sqlite"].append(bench_streams("sqlite", args.messages, 1, False))
        streams["pg"].append(bench_streams("pg", args.messages, 1, False))
        streams["sqlite_2p_1_node"].append(bench_streams("sqlite", args.messages, 2, False))
        streams["pg_2p_1_node"].append(bench_streams("pg", args.messages, 2, False))
        streams["pg_2p_2_nodes"].append(bench_streams("pg", args.messages, 2, True))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    failover_source = work / "failover.bin"
    failover_source.write_bytes(os.urandom(48 * MiB))
    failovers = {
        lease: [bench_upload_failover(failover_source, f"{lease}s") for _ in range(args.runs)]
        for lease in args.leases.split(",")
    }
    stream_failover = [bench_stream_failover() for _ in range(args.runs)]
    results["upload_mbps"] = {k: median(v) for k, v in uploads.items()}
    results["stream_msgs_per_s"] = {k: median(v) for k, v in streams.items()}
    results["upload_failover_s"] = {k: median(v) for k, v in failovers.items()}
    results["stream_failover_s"] = median(stream_failover)
    results["samples"] = {
        "uploads": uploads,
        "streams": streams,
        "failover": failovers,
        "stream_failover": stream_failover,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def report(r: dict[str, Any]) -> None:
    up, st = r["upload_mbps"], r["stream_msgs_per_s"]
    print(f"\nupload of {r['size'] / MiB:.0f} MiB, MB/s (median of {r['runs']})")
    print(f"  one node, SQLite store        {up['sqlite']:8.1f}")
    print(
        f"  one node, PostgreSQL store    {up['pg']:8.1f}   ({up['pg'] / up['sqlite']:.2f}x SQLite)"
    )
    print(f"  two PostgreSQL nodes, balancer{up['pg_2_nodes']:8.1f}")
    print(f"\nstream, {r['messages']} messages per producer, msgs/s (median of {r['runs']})")
    print(f"  one producer, SQLite          {st['sqlite']:8.0f}")
    print(
        f"  one producer, PostgreSQL      {st['pg']:8.0f}   ({st['pg'] / st['sqlite']:.2f}x SQLite)"
    )
    print(f"  two producers, one node, SQL. {st['sqlite_2p_1_node']:8.0f}")
    print(f"  two producers, one PG node    {st['pg_2p_1_node']:8.0f}")
    print(
        f"  two producers, two PG nodes   {st['pg_2p_2_nodes']:8.0f}   ({st['pg_2p_2_nodes'] / st['pg_2p_1_node']:.2f}x one node)"
    )
    print("\nfailover (SIGKILL of the node serving the client), seconds until it continues")
    for lease, seconds in r["upload_failover_s"].items():
        print(f"  upload, lease {lease}s            {seconds:8.2f}")
    print(f"  stream producer               {r['stream_failover_s']:8.2f}")


if __name__ == "__main__":
    main()
