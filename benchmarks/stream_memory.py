"""Server memory under stream load: big channel tails, and many channel names.

    .venv/bin/python benchmarks/stream_memory.py [--runs 3] [--channels 64] [--per-channel 4MiB]
                                                 [--names 20000] [--server-code DIR]
                                                 [--server-args "--tail-memory 16MiB"] [--json]

A real `resume serve` process on 127.0.0.1 with a fresh root per run; its resident set size
(VmRSS from /proc, Linux) is read at each step:

- baseline:  started, one channel published to and read once (code paths warm);
- tails:     --channels producers stay connected, each has published --per-channel bytes of
             4 KiB messages to its own channel (every message stored, acked, in the tail);
- released:  those producers disconnected (idle channels are evicted, their tails freed);
- names:     then --names connections, each to a new channel name, said hello, got welcome
             and left (64 at a time).

Medians over --runs. ``--server-code DIR`` runs the server from another checkout (e.g. an
older commit unpacked with ``git archive``) while the clients stay this checkout's, to compare
before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run from anywhere: this checkout's `resume`

from resume.cli.format import parse_size  # noqa: E402
from resume.stream.client import StreamClient  # noqa: E402

MESSAGE = 4096  # bytes per message (its JSON text)
STEPS = ("baseline", "tails", "released", "names")


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, root: Path, code: Path, extra: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
        env.pop("RESUME_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resume", "serve", "--root", str(root), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=code,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split()[-1]

    def rss(self) -> int:
        return rss(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def settle(server: Server) -> int:
    """RSS once it stops moving (the server finished what it was doing)."""
    await asyncio.sleep(0.5)
    return server.rss()


async def fill(url: str, per_channel: int) -> StreamClient:
    """A producer that published ``per_channel`` bytes and stays connected."""
    producer = StreamClient(url, subscribe=False)
    await producer.start()
    body = "x" * (MESSAGE - 2)  # a JSON string of MESSAGE bytes
    for _ in range(0, per_channel // MESSAGE, 64):
        await producer.send_many([body] * 64)
    await producer.flush(300)
    return producer


async def hello_only(base: str, names: range) -> None:
    for i in names:
        async with connect(f"{base}/streams/name-{i}", subprotocols=["resume.v1"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "hello", "client_id": f"c{i}", "after": "end"}))
            await ws.recv()


async def one_run(args: argparse.Namespace, code: Path) -> dict[str, int]:
    root = Path(tempfile.mkdtemp(prefix="resume-mem-"))
    server = Server(root / "srv", code, args.server_args.split())
    sizes: dict[str, int] = {}
    try:
        warm = await fill(f"{server.url}/streams/warm", 64 * MESSAGE)
        async with StreamClient(f"{server.url}/streams/warm", start="start") as reader:
            async for message in reader:
                if message.seq == 64:
                    break
        await warm.close()
        sizes["baseline"] = await settle(server)

        producers: list[StreamClient] = []
        for first in range(0, args.channels, 8):  # 8 producers at a time
            batch = range(first, min(args.channels, first + 8))
            producers += await asyncio.gather(
                *(fill(f"{server.url}/streams/tail-{i}", args.per_channel) for i in batch)
            )
        sizes["tails"] = await settle(server)
        for producer in producers:
            await producer.close()
        sizes["released"] = await settle(server)

        workers = 64
        await asyncio.gather(
            *(hello_only(server.url, range(w, args.names, workers)) for w in range(workers))
        )
        sizes["names"] = await settle(server)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return sizes


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--per-channel", default="4MiB")
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--server-code", type=Path, default=REPO)
    parser.add_argument("--server-args", default="", help="more `resume serve` options")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.per_channel = parse_size(args.per_channel)
    runs: list[dict[str, int]] = []
    for run in range(args.runs):
        began = time.monotonic()
        runs.append(asyncio.run(one_run(args, args.server_code.resolve())))
        print(f"run {run + 1}: {runs[-1]} ({time.monotonic() - began:.0f}s)", file=sys.stderr)
    medians = {step: statistics.median(r[step] for r in runs) for step in STEPS}
    if args.json:
        print(json.dumps({"medians": medians, "runs": runs}))
        return 0
    print(
        f"server RSS, median of {args.runs} runs "
        f"({args.channels} channels x {mib(args.per_channel)}, {args.names} names)"
    )
    print("| step | RSS | vs baseline |")
    print("| --- | --- | --- |")
    for step in STEPS:
        grown = medians[step] - medians["baseline"]
        print(f"| {step} | {mib(medians[step])} | {'+' if grown >= 0 else ''}{mib(grown)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
