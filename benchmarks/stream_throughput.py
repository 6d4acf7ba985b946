"""Small-message throughput of the stream client, against raw websockets, in one run.

    .venv/bin/python benchmarks/stream_throughput.py [--messages 50000] [--runs 3] [--json]

Messages are small JSON objects like {"i": 1, "sym": "ABC", "px": 101.25}. Every server is a
real separate process on 127.0.0.1 with a fresh directory per run; the clients run in this
process (one asyncio loop per measurement). Measured, each as the median of --runs:

- raw:       plain `websockets`, `await ws.send(json.dumps(msg))` per message, fire and forget,
             into a server that json-decodes and counts (benchmarks/raw_stream_ws.py); from the
             first send until the server's one reply says it has all N.
- send:      `StreamClient(url + "/streams/bench", subscribe=False)`, `await client.send(msg)`
             per message, then `await client.flush()`: from the first send until the server has
             acknowledged every message, i.e. stored it in its SQLite log (synchronous=FULL).
- send_many: the same with `await client.send_many(batch)`, batches of --batch (default 100).
- consume:   `StreamClient(url + "/streams/bench", start="start")`, `async for m in client` over
             the N messages already in the log; from `start()` until the Nth message is taken.
- restart:   N messages in the log, a consumer that took N/2 of them, the server SIGKILLed and
             started again on the same port; from the restart (new process spawned) until the
             consumer, reconnecting by itself (backoff base 0.05 s, cap 0.5 s), took the rest.

Both send measurements start once the client's session is open (connect and hello excluded, as
for raw, which connects before its timer too). Ratios are of medians measured in the same run.
"client CPU" and "server CPU" are the CPU seconds each process used over the measurement
(server: all threads, via psutil): they show which side is the bottleneck. The restart
measurement needs N/2 above the server's push window (4096): below it the consumer already
holds every remaining message when the server is killed.
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
sys.path.insert(0, str(REPO))  # run from anywhere: this checkout's `resume`

from resume.net.backoff import Backoff  # noqa: E402
from resume.stream.client import StreamClient, StreamEvent, StreamOptions  # noqa: E402

try:
    import psutil  # the "bench" extra: server CPU time
except ImportError:  # pragma: no cover
    psutil = None

SYMBOLS = ("ABC", "XYZ", "QRS", "MNO", "DEF", "GHI", "JKL", "TUV")
TARGET_RATIO = 0.8  # acked send / raw fire-and-forget


def env() -> dict[str, str]:
    extra = {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    child = {**os.environ, **extra}
    child.pop("RESUME_TOKEN", None)
    child.pop("RESUME_DB", None)
    return child


@dataclass
class Sample:
    seconds: float  # the timed part
    client_cpu: float  # CPU seconds of this process over the whole measurement (with connect)
    server_cpu: float  # CPU seconds of the server process, all threads (nan without psutil)


def make_messages(n: int) -> list[dict[str, Any]]:
    return [
        {"i": i, "sym": SYMBOLS[i % len(SYMBOLS)], "px": 100 + (i % 4000) / 16} for i in range(n)
    ]


class Server:
    """A server process that prints 'listening on ws://HOST:PORT'; restartable on its port."""

    def __init__(self, cmd: Callable[[int], list[str]], log: Path) -> None:
        self.cmd = cmd
        self.log = log
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.cmd(self.port), stdout=subprocess.PIPE, stderr=log, text=True, env=env()
            )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"{self.cmd(self.port)[:4]} did not start: {line!r}\n{self.tail()}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc = None

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) the server used so far."""
        if psutil is None or self.proc is None:
            return float("nan")
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def measure(self, coro: Coroutine[Any, Any, float]) -> Sample:
        """Run one client measurement in a fresh event loop, with both sides' CPU time."""
        client0, server0 = time.process_time(), self.cpu()
        seconds = asyncio.run(coro)
        return Sample(seconds, time.process_time() - client0, self.cpu() - server0)

    def tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""


def resume_server(work: Path) -> Server:
    root = work / "srv"
    return Server(
        lambda port: [PYTHON, "-m", "resume", "serve", "--root", str(root), "--port", str(port)],
        work / "serve.log",
    )


async def wait_open(client: StreamClient, timeout: float = 20) -> None:
    """Until hello/welcome are done (connect and handshake stay out of the timed part)."""
    deadline = time.monotonic() + timeout
    while client.session is None or client.session.state.value != "open":
        if time.monotonic() > deadline:
            raise RuntimeError("the stream client did not connect")
        await asyncio.sleep(0.001)


# -- the measurements --------------------------------------------------------------------------


async def raw_send(url: str, messages: list[dict[str, Any]]) -> float:
    async with connect(url, compression=None, proxy=None, max_size=2**20) as ws:
        started = time.perf_counter()
        for message in messages:
            await ws.send(json.dumps(message))
        reply = await ws.recv()
        elapsed = time.perf_counter() - started
    assert reply == str(len(messages)), reply
    return elapsed


async def acked_send(url: str, messages: list[dict[str, Any]], batch: int) -> float:
    """``batch`` 0: one ``send()`` per message; else ``send_many()`` of that many."""
    client = StreamClient(url + "/streams/bench", subscribe=False)
    await client.start()
    try:
        await wait_open(client)
        started = time.perf_counter()
        if batch:
            for at in range(0, len(messages), batch):
                await client.send_many(messages[at : at + batch])
        else:
            for message in messages:
                await client.send(message)
        await client.flush(timeout=300)
        elapsed = time.perf_counter() - started
        assert client.stats.acked == len(messages), client.stats
    finally:
        await client.close()
    return elapsed


async def consume(url: str, n: int) -> float:
    client = StreamClient(url + "/streams/bench", start="start")
    started = time.perf_counter()
    await client.start()
    taken = 0
    try:
        async for message in client:
            taken += 1
            if taken == n:
                elapsed = time.perf_counter() - started
                assert message.seq == n and message.data["i"] == n - 1, message
                break
        else:
            raise RuntimeError(f"consumer ended after {taken} of {n}")
    finally:
        await client.close()
    return elapsed


async def restart_replay(server: Server, messages: list[dict[str, Any]]) -> dict[str, float]:
    """Kill the server under a consumer that took half; time restart -> consumer has all."""
    n = len(messages)
    producer = StreamClient(server.url + "/streams/bench", subscribe=False)
    async with producer:
        for at in range(0, n, 500):
            await producer.send_many(messages[at : at + 500])
        await producer.flush(timeout=300)

    reconnected: list[float] = []

    def on_event(event: StreamEvent) -> None:
        if event.kind == "connected":
            reconnected.append(time.perf_counter())

    consumer = StreamClient(
        server.url + "/streams/bench",
        start="start",
        options=StreamOptions(backoff=Backoff(base=0.05, cap=0.5, min_uptime=1.0)),
        on_event=on_event,
    )
    go_on = asyncio.Event()
    halfway = asyncio.Event()

    async def take_all() -> float:
        taken = 0
        async for message in consumer:
            taken += 1
            assert message.seq == taken, (message.seq, taken)
            if taken == n // 2:
                halfway.set()
                await go_on.wait()
            if taken == n:
                return time.perf_counter()
        raise RuntimeError(f"consumer ended after {taken} of {n}")

    await consumer.start()
    try:
        task = asyncio.create_task(take_all())
        await halfway.wait()
        await asyncio.sleep(0.1)  # let the server fill its window: the client holds a backlog
        delivered = consumer.session.position or 0  # type: ignore[union-attr]
        server.kill()
        started = time.perf_counter()
        go_on.set()  # the consumer works through its local backlog while the server is down
        await asyncio.to_thread(server.start)
        listening = time.perf_counter()
        done = await asyncio.wait_for(task, 120)
        if delivered < n:  # else the client had everything buffered before the kill
            assert consumer.stats.reconnects >= 1, consumer.stats
    finally:
        await consumer.close()
    return {
        "restart_to_listening_s": listening - started,
        "restart_to_reconnected_s": (
            reconnected[-1] - started if reconnected[-1] > started else float("nan")
        ),
        "restart_to_all_taken_s": done - started,
        "replayed_after_restart": n - delivered,
        "local_backlog": delivered - n // 2,
    }


# -- one run of each -------------------------------------------------------------------------


def run_raw(work: Path, messages: list[dict[str, Any]]) -> Sample:
    server = Server(
        lambda _port: [PYTHON, str(HERE / "raw_stream_ws.py"), str(len(messages))],
        work / "raw.log",
    )
    server.start()
    try:
        return server.measure(raw_send(server.url, messages))
    finally:
        server.stop()


def run_send_and_consume(work: Path, messages: list[dict[str, Any]]) -> tuple[Sample, Sample]:
    server = resume_server(work)
    server.start()
    try:
        sent = server.measure(acked_send(server.url, messages, 0))
        consumed = server.measure(consume(server.url, len(messages)))
    finally:
        server.stop()
    return sent, consumed


def run_send_many(work: Path, messages: list[dict[str, Any]], batch: int) -> Sample:
    server = resume_server(work)
    server.start()
    try:
        return server.measure(acked_send(server.url, messages, batch))
    finally:
        server.stop()


def run_restart(work: Path, messages: list[dict[str, Any]]) -> dict[str, float]:
    server = resume_server(work)
    server.start()
    try:
        return asyncio.run(restart_replay(server, messages))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000, help="N (default 50000)")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per measurement (median reported)"
    )
    parser.add_argument("--batch", type=int, default=100, help="send_many batch size")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    n = args.messages
    messages = make_messages(n)
    size = statistics.mean(len(json.dumps(m)) for m in messages)

    names = ["raw", "send", "send_many", "restart"]
    if args.skip_restart:
        names.remove("restart")
    samples: dict[str, list[Sample]] = {"raw": [], "send": [], "send_many": [], "consume": []}
    restarts: list[dict[str, float]] = []
    scratch = Path(tempfile.mkdtemp(prefix="resume-stream-bench-"))
    try:
        for i in range(args.runs):  # interleave, so drift on a noisy machine hits all alike
            for name in names:
                work = scratch / f"{name}-{i}"
                work.mkdir()
                try:
                    if name == "raw":
                        samples["raw"].append(run_raw(work, messages))
                    elif name == "send":
                        sent, consumed = run_send_and_consume(work, messages)
                        samples["send"].append(sent)
                        samples["consume"].append(consumed)
                    elif name == "send_many":
                        samples["send_many"].append(run_send_many(work, messages, args.batch))
                    else:
                        restarts.append(run_restart(work, messages))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    results: dict[str, Any] = {
        "messages": n,
        "runs": args.runs,
        "batch": args.batch,
        "mean_message_bytes": size,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    for name, measured in samples.items():
        rates = [n / s.seconds for s in measured]
        results[name] = {
            "msgs_per_s_median": statistics.median(rates),
            "msgs_per_s_min": min(rates),
            "msgs_per_s_max": max(rates),
            "seconds_median": statistics.median(s.seconds for s in measured),
            "client_cpu_s_median": statistics.median(s.client_cpu for s in measured),
            "server_cpu_s_median": statistics.median(s.server_cpu for s in measured),
        }
    raw = results["raw"]["msgs_per_s_median"]
    results["ratio_send_vs_raw"] = results["send"]["msgs_per_s_median"] / raw
    results["ratio_send_many_vs_raw"] = results["send_many"]["msgs_per_s_median"] / raw
    if restarts:
        results["restart"] = {
            key: statistics.median(r[key] for r in restarts) for key in restarts[0]
        }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def report(results: dict[str, Any]) -> None:
    n = results["messages"]
    print(
        f"{n} JSON messages of ~{results['mean_message_bytes']:.0f} bytes on loopback, "
        f"median of {results['runs']} runs (Python {results['python']}, {results['cpus']} CPUs)"
    )
    labels = {
        "raw": "raw websockets, fire and forget",
        "send": "StreamClient send() + flush, acked",
        "send_many": f"StreamClient send_many({results['batch']}) + flush",
        "consume": "StreamClient consume from log",
    }
    print(
        f"{'measurement':38} {'msgs/s median':>14} {'min':>9} {'max':>9} {'seconds':>8} "
        f"{'client CPU':>10} {'server CPU':>10}"
    )
    for name, label in labels.items():
        m = results[name]
        print(
            f"{label:38} {m['msgs_per_s_median']:14,.0f} {m['msgs_per_s_min']:9,.0f} "
            f"{m['msgs_per_s_max']:9,.0f} {m['seconds_median']:8.2f} "
            f"{m['client_cpu_s_median']:9.2f}s {m['server_cpu_s_median']:9.2f}s"
        )
    ratio = results["ratio_send_vs_raw"]
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"acked send() / raw:        {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    print(f"acked send_many() / raw:   {results['ratio_send_many_vs_raw']:.2f}x")
    if "restart" in results:
        r = results["restart"]
        rest = n - n // 2
        reconnected = r["restart_to_reconnected_s"]
        reconnected_text = "n/a" if reconnected != reconnected else f"{reconnected:.2f}s"  # nan
        print(
            f"server SIGKILLed with the consumer at {n // 2} of {n}: from restart, listening "
            f"after {r['restart_to_listening_s']:.2f}s, consumer reconnected after "
            f"{reconnected_text}, had all {n} after "
            f"{r['restart_to_all_taken_s']:.2f}s ({rest / r['restart_to_all_taken_s']:,.0f} "
            f"msgs/s for the last {rest}; {r['replayed_after_restart']:.0f} came from the "
            f"restarted server, {r['local_backlog']:.0f} were already buffered in the client)"
        )
        if r["replayed_after_restart"] == 0:
            print("  (N too small to measure a replay: use --messages 10000 or more)")


if __name__ == "__main__":
    main()
