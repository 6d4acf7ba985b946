"""tus and WebSocket uploads to `resume serve` and to @tus/server, and through a delay line.

    .venv/bin/python benchmarks/tus_interop.py [--size 256MiB] [--runs 5] [--chunk-size 4MiB]
        [--delays 25,100] [--delay-size 128MiB] [--delay-runs 3] [--json]

Every peer is a real process on 127.0.0.1, a fresh server (and directory) per run, started
and listening before the client's clock starts. The client is timed as a whole process
(start to exit, what a user waits), and every pair is run once per round, the rounds
alternating the pairs so that drift on a noisy machine hits all alike; medians are reported.

Clients:
- resume upload (HTTP): `resume upload FILE http://.../files/` (tus; chunk ledger in SQLite).
- resume upload (WS):   `resume upload FILE ws://...` (only to `resume serve`).
- tus-js-client:        `node tus_upload.mjs FILE URL --chunk-size N` (same PATCH size).
- tus-js-client, 1 PATCH: tus-js-client's default, the whole file in one request.

Servers: `resume serve` (tus at /files/ and WebSocket on one port) and @tus/server with
@tus/file-store under node (installed from tests/interop/node/package-lock.json into a cache,
see tests/interop/peers.py). Needs node and npm.

With --delays, the pairs in DELAY_PAIRS are also run through benchmarks/delay_proxy.py at
each round-trip time, and at 0 ms through the same proxy (the baseline for the ratios).

To compare other servers or clients, add entries to SERVERS or CLIENTS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.interop.peers import (  # noqa: E402  (the repository root is on the path only now)
    ListeningProcess,
    node_packages,
    node_problem,
    node_tus_server,
    tus_js_command,
)

MiB = 2**20


def parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def timed(cmd: list[str]) -> float:
    """Run a client to completion; its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


@dataclass
class Endpoints:
    tus: str  # http://HOST:PORT/files/
    ws: str | None  # ws://HOST:PORT, where the server speaks resume's WebSocket protocol


# -- clients: (file, endpoints, work dir, chunk size) -> seconds; None: not for this server ---


def client_store(work: Path) -> Path:
    """resume's state database, made once at the newest schema (as a user's is after the first
    run: creating it, Alembic and all, is a one-time cost, not counted)."""
    db = work / "client-store.db"
    if not db.exists():
        code = "import sys; from resume.store import open_store; open_store(sys.argv[1]).close()"
        subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    return db


def resume_http(data: Path, ep: Endpoints, work: Path, chunk: int) -> float | None:
    db = client_store(work)
    cmd = [sys.executable, "-m", "resume", "upload", str(data), ep.tus, "--db", str(db)]
    return timed([*cmd, "--no-progress", "--chunk-size", str(chunk)])


def resume_ws(data: Path, ep: Endpoints, work: Path, chunk: int) -> float | None:
    if ep.ws is None:
        return None
    db = client_store(work)
    cmd = [
        sys.executable,
        "-m",
        "resume",
        "upload",
        str(data),
        ep.ws,
        "--db",
        str(db),
        "--via",
        "ws",
    ]
    return timed([*cmd, "--no-progress", "--chunk-size", str(chunk)])


def tus_js_client(data: Path, ep: Endpoints, work: Path, chunk: int) -> float | None:
    return timed(tus_js_command(PACKAGES, data, ep.tus, chunk_size=chunk))


def tus_js_client_one_patch(data: Path, ep: Endpoints, work: Path, chunk: int) -> float | None:
    return timed(tus_js_command(PACKAGES, data, ep.tus))


CLIENTS: dict[str, Callable[[Path, Endpoints, Path, int], float | None]] = {
    "resume upload (HTTP)": resume_http,
    "resume upload (WS)": resume_ws,
    "tus-js-client": tus_js_client,
    "tus-js-client, 1 PATCH": tus_js_client_one_patch,
}


# -- servers: (files dir, log) -> a ListeningProcess not started yet; its URL -> endpoints -----


@dataclass
class Server:
    make: Callable[[Path, Path], ListeningProcess]
    endpoints: Callable[[str], Endpoints]


def resume_serve(files: Path, log: Path) -> ListeningProcess:
    cmd = [sys.executable, "-m", "resume", "serve", "--root", str(files), "--port", "0"]
    return ListeningProcess(cmd, log)


SERVERS: dict[str, Server] = {
    "resume serve": Server(
        resume_serve,
        lambda url: Endpoints(url.replace("ws://", "http://", 1).rstrip("/") + "/files/", url),
    ),
    "@tus/server": Server(
        lambda files, log: node_tus_server(PACKAGES, files, log),
        lambda url: Endpoints(url, None),
    ),
}

# (client, server) pairs run through the delay line
DELAY_PAIRS = [
    ("resume upload (HTTP)", "resume serve"),
    ("resume upload (WS)", "resume serve"),
    ("tus-js-client", "resume serve"),
    ("tus-js-client", "@tus/server"),
]

PACKAGES = Path()


@contextmanager
def delay_line(port: int, rtt_ms: float) -> Iterator[int]:
    """benchmarks/delay_proxy.py in front of ``port``; yields the proxy's port."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "delay_proxy.py"), str(port), str(rtt_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("listening on "):
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        yield int(line.split(":")[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def via(ep: Endpoints, port: int, proxy_port: int) -> Endpoints:
    def swap(url: str) -> str:
        return url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy_port}", 1)

    return Endpoints(swap(ep.tus), swap(ep.ws) if ep.ws else None)


def run_pair(
    data: Path, work: Path, chunk: int, client_name: str, server_name: str, rtt: float | None
) -> float | None:
    """One upload on a fresh server; ``rtt`` None: direct, else through the delay line."""
    server = SERVERS[server_name]
    files = work / f"files-{time.monotonic_ns()}"
    try:
        with server.make(files, work / "server.log") as proc:
            ep = server.endpoints(proc.url)
            if rtt is None:
                return CLIENTS[client_name](data, ep, work, chunk)
            with delay_line(proc.port, rtt) as proxy_port:
                return CLIENTS[client_name](data, via(ep, proc.port, proxy_port), work, chunk)
    finally:
        shutil.rmtree(files, ignore_errors=True)


def bench(
    data: Path, work: Path, runs: int, chunk: int, pairs: list[tuple[str, str, float | None]]
) -> dict[tuple[str, str, float | None], list[float]]:
    """Seconds per run for every (client, server, rtt), alternated so drift hits all alike;
    each round starts one pair later than the last, so no pair always goes first."""
    seconds: dict[tuple[str, str, float | None], list[float]] = {}
    for run in range(runs):
        shift = run % len(pairs)
        for pair in pairs[shift:] + pairs[:shift]:
            took = run_pair(data, work, chunk, *pair)
            if took is None:
                continue
            seconds.setdefault(pair, []).append(took)
            where = "" if pair[2] is None else f" via {pair[2]:g} ms RTT"
            print(
                f"  run {run + 1}: {pair[0]} -> {pair[1]}{where}: {took:.2f}s",
                file=sys.stderr,
                flush=True,
            )
    return seconds


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        block = bytes(range(256)) * (MiB // 256)
        for i in range(size // MiB):  # distinct blocks, so nothing dedups or compresses
            f.write(block[i % 251 :] + block[: i % 251])
        f.write(b"\x5a" * (size % MiB))


def summarize(
    seconds: dict[tuple[str, str, float | None], list[float]], size: int
) -> list[dict[str, object]]:
    rows = []
    for (client, server, rtt), times in seconds.items():
        rows.append(
            {
                "client": client,
                "server": server,
                "rtt_ms": rtt,
                "median_s": statistics.median(times),
                "mb_per_s": size / statistics.median(times) / 1e6,
                "runs_s": [round(t, 3) for t in times],
            }
        )
    return rows


def rate(rows: list[dict[str, object]], client: str, server: str, rtt: float | None) -> float:
    for row in rows:
        if (row["client"], row["server"], row["rtt_ms"]) == (client, server, rtt):
            return float(row["mb_per_s"])  # type: ignore[arg-type]
    return float("nan")


def main() -> None:
    global PACKAGES
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256MiB", help="file size (default 256MiB)")
    parser.add_argument("--runs", type=int, default=5, help="runs per pair; medians (default 5)")
    parser.add_argument("--chunk-size", default="4MiB", help="bytes per PATCH (default 4MiB)")
    parser.add_argument(
        "--delays", default="", help="round-trip times in ms for the delay line, e.g. 25,100"
    )
    parser.add_argument("--delay-size", default="128MiB", help="file size through the delay line")
    parser.add_argument("--delay-runs", type=int, default=3, help="runs per delayed pair")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    problem = node_problem()
    if problem:
        sys.exit(f"cannot run: {problem}")
    PACKAGES = node_packages()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "resume")], check=True)
    size, chunk = parse_size(args.size), parse_size(args.chunk_size)
    delay_size = parse_size(args.delay_size)
    delays = [float(d) for d in args.delays.split(",") if d]
    direct = [(c, s, None) for s in SERVERS for c in CLIENTS if c != "resume upload (WS)"]
    direct.insert(1, ("resume upload (WS)", "resume serve", None))
    with tempfile.TemporaryDirectory(prefix="resume-bench-tus-") as tmp:
        work = Path(tmp)
        data = work / "data.bin"
        make_file(data, size)
        rows = summarize(bench(data, work, args.runs, chunk, direct), size)
        delayed: list[dict[str, object]] = []
        if delays:
            small = work / "delay.bin"
            make_file(small, delay_size)
            pairs = [(c, s, rtt) for rtt in [0.0, *delays] for c, s in DELAY_PAIRS]
            delayed = summarize(bench(small, work, args.delay_runs, chunk, pairs), delay_size)
    if args.json:
        out = {"size": size, "chunk_size": chunk, "results": rows, "delay_size": delay_size}
        print(json.dumps({**out, "delayed": delayed}, indent=2))
        return
    print(f"\n{size / MiB:.0f} MiB, {chunk / MiB:g} MiB per PATCH, median of {args.runs} runs")
    print("(whole client processes, fresh listening server per run, pairs alternated)\n")
    print(f"{'client':<24} {'server':<14} {'MB/s':>8} {'min..max s':>14}")
    for row in rows:
        runs = row["runs_s"]
        spread = f"{min(runs):.2f}..{max(runs):.2f}"  # type: ignore[type-var]
        print(f"{row['client']:<24} {row['server']:<14} {row['mb_per_s']:>8.1f} {spread:>14}")
    http = rate(rows, "resume upload (HTTP)", "resume serve", None)
    ws = rate(rows, "resume upload (WS)", "resume serve", None)
    js_resume = rate(rows, "tus-js-client", "resume serve", None)
    js_tus = rate(rows, "tus-js-client", "@tus/server", None)
    print(f"\nresume upload to resume serve, HTTP / WS: {http / ws:.2f}x (target >= 0.8x)")
    print(f"tus-js-client to resume serve / to @tus/server: {js_resume / js_tus:.2f}x")
    one_resume = rate(rows, "tus-js-client, 1 PATCH", "resume serve", None)
    one_tus = rate(rows, "tus-js-client, 1 PATCH", "@tus/server", None)
    print(f"tus-js-client 1 PATCH, resume serve / @tus/server: {one_resume / one_tus:.2f}x")
    if delayed:
        print(
            f"\nthrough benchmarks/delay_proxy.py, {delay_size / MiB:.0f} MiB, "
            f"median of {args.delay_runs} runs; ratio to the same pair at 0 ms through the proxy"
        )
        print(f"{'client':<24} {'server':<14} {'RTT ms':>7} {'MB/s':>8} {'vs 0 ms':>8}")
        for row in delayed:
            base = rate(delayed, row["client"], row["server"], 0.0)  # type: ignore[arg-type]
            print(
                f"{row['client']:<24} {row['server']:<14} {row['rtt_ms']:>7g} "
                f"{row['mb_per_s']:>8.1f} {float(row['mb_per_s']) / base:>7.2f}x"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
