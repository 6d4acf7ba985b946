"""`resume upload` over HTTP (tus) against tus-js-client, both to @tus/server, in one run.

    .venv/bin/python benchmarks/tus_interop.py [--size 256MiB] [--runs 5] [--chunk-size 4MiB] [--json]

Every peer is a real process on 127.0.0.1 with a fresh server directory per run:

- resume:            `resume upload FILE http://.../files/` (chunk ledger in SQLite, one PATCH
                     per chunk, each recorded PREPARED before and COMMITTED after).
- tus-js-client:     `node tus_upload.mjs FILE URL --chunk-size N` (same PATCH size, no state).
- tus-js-client, 1 PATCH: tus-js-client's default, the whole file in one request.

The server for all of them is @tus/server with @tus/file-store under node (installed from
tests/interop/node/package-lock.json into a cache, see tests/interop/peers.py). MB/s is over
the client's wall time (process start to exit) and the median of --runs. Needs node and npm.

To compare other servers or clients, add a function to SERVERS or CLIENTS: each takes the
file and an endpoint and returns seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    result = subprocess.run(cmd, capture_output=True, text=True, env=None, cwd=REPO)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


# -- clients: (file, endpoint, work dir, chunk size) -> seconds -------------------------------


def resume_client(data: Path, endpoint: str, work: Path, chunk: int) -> float:
    db = work / f"client-{time.monotonic_ns()}.db"
    cmd = [sys.executable, "-m", "resume", "upload", str(data), endpoint, "--db", str(db)]
    return timed([*cmd, "--no-progress", "--chunk-size", str(chunk)])


def tus_js_client(data: Path, endpoint: str, work: Path, chunk: int) -> float:
    return timed(tus_js_command(PACKAGES, data, endpoint, chunk_size=chunk))


def tus_js_client_one_patch(data: Path, endpoint: str, work: Path, chunk: int) -> float:
    return timed(tus_js_command(PACKAGES, data, endpoint))


CLIENTS: dict[str, Callable[[Path, str, Path, int], float]] = {
    "resume upload (HTTP)": resume_client,
    "tus-js-client": tus_js_client,
    "tus-js-client, 1 PATCH": tus_js_client_one_patch,
}

# -- servers: (files dir, log) -> a ListeningProcess not started yet --------------------------

SERVERS: dict[str, Callable[[Path, Path], ListeningProcess]] = {
    "@tus/server": lambda files, log: node_tus_server(PACKAGES, files, log),
}

PACKAGES = Path()


def bench(data: Path, work: Path, runs: int, chunk: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per run for every (server, client) pair, interleaved so drift hits all alike."""
    seconds: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CLIENTS} for s in SERVERS}
    for run in range(runs):
        for server_name, make_server in SERVERS.items():
            for client_name, client in CLIENTS.items():
                files = work / f"files-{run}-{len(seconds[server_name][client_name])}"
                with make_server(files, work / "server.log") as server:
                    took = client(data, server.url, work, chunk)
                shutil.rmtree(files, ignore_errors=True)
                seconds[server_name][client_name].append(took)
                print(
                    f"  run {run + 1}: {client_name} -> {server_name}: {took:.2f}s",
                    file=sys.stderr,
                    flush=True,
                )
    return seconds


def main() -> None:
    global PACKAGES
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256MiB", help="file size (default 256MiB)")
    parser.add_argument("--runs", type=int, default=5, help="runs per pair; medians (default 5)")
    parser.add_argument("--chunk-size", default="4MiB", help="bytes per PATCH (default 4MiB)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    problem = node_problem()
    if problem:
        sys.exit(f"cannot run: {problem}")
    PACKAGES = node_packages()
    size, chunk = parse_size(args.size), parse_size(args.chunk_size)
    with tempfile.TemporaryDirectory(prefix="resume-bench-tus-") as tmp:
        work = Path(tmp)
        data = work / "data.bin"
        with data.open("wb") as f:
            block = bytes(range(256)) * (MiB // 256)
            for i in range(size // MiB):  # distinct blocks, so nothing dedups or compresses
                f.write(block[i % 251 :] + block[: i % 251])
            f.write(b"\x5a" * (size % MiB))
        seconds = bench(data, work, args.runs, chunk)
    results = {
        server: {
            client: {
                "median_s": statistics.median(times),
                "mb_per_s": size / statistics.median(times) / 1e6,
                "runs_s": [round(t, 3) for t in times],
            }
            for client, times in clients.items()
        }
        for server, clients in seconds.items()
    }
    if args.json:
        print(json.dumps({"size": size, "chunk_size": chunk, "results": results}, indent=2))
        return
    print(f"\n{size / MiB:.0f} MiB, {chunk / MiB:g} MiB per PATCH, median of {args.runs} runs\n")
    print(f"{'client':<26} {'server':<14} {'MB/s':>8} {'vs tus-js-client':>17}")
    for server, clients in results.items():
        baseline = clients["tus-js-client"]["mb_per_s"]
        for client, numbers in clients.items():
            ratio = numbers["mb_per_s"] / baseline
            print(f"{client:<26} {server:<14} {numbers['mb_per_s']:>8.1f} {ratio:>16.2f}x")


if __name__ == "__main__":
    main()
