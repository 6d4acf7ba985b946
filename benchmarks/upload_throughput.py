"""Upload throughput, memory and resume time of `resume`, against baselines, in one run.

    .venv/bin/python benchmarks/upload_throughput.py [--size 1GiB] [--runs 3] [--json]

Every peer is a real separate process on 127.0.0.1, with a fresh server directory per run:

- resume: `resume upload FILE ws://...` to `resume serve` (chunk ledger, xxh3 per chunk and per
  file, group fsync, verify and rename).
- raw:    plain `websockets`, 1 MiB binary messages, one fsync at the end (benchmarks/raw_ws.py).
- tus:    `tuspy` to `tuspyserver` under uvicorn (benchmarks/tus_peer.py), if installed.

Reported: MB/s over the client's wall time (process start to exit, what a user waits: both
clients measured the same way, as whole processes, interleaved in the same run) and the
median of --runs; peak RSS of client and server (from wait4's rusage, exact per process);
resume's client RSS for two file sizes (it must not grow with the file); after SIGKILLing
an upload half way, how long the same command takes to get the next chunk durably stored;
and start-up: the wall time of `resume upload` of a 1 KiB file to a server already
listening, with a state database already at the newest schema (median of --startup-runs),
next to the raw client doing the same.

The package's bytecode is compiled first (``compileall``): an installed wheel has it, and an
environment with PYTHONDONTWRITEBYTECODE would otherwise compile `resume` on every start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
MiB = 2**20


@dataclass
class Run:
    seconds: float
    client_rss: int  # bytes
    server_rss: int  # bytes

    def mbps(self, size: int) -> float:
        return size / self.seconds / 1e6


def parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def run_child(cmd: list[str]) -> tuple[float, int, str]:
    """Run to completion; (wall seconds, peak RSS bytes, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024, out.decode()


class Peer:
    """A server process: started, waited for, stopped with SIGTERM; its peak RSS measured."""

    def __init__(self, cmd: list[str], *, ready_line: bool = True, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env(), text=True
        )
        if ready_line:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if "listening on" not in line:
                self.stop()
                raise RuntimeError(f"{cmd[:4]} did not start: {line!r}")
            self.url = line.split()[-1]
        else:
            self.url = f"http://127.0.0.1:{port}"
            wait_for_port(port)

    def stop(self) -> int:
        """SIGTERM, wait; the server's peak RSS in bytes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, _, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            return 0
        return usage.ru_maxrss * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def resume_bin() -> list[str]:
    return [PYTHON, "-m", "resume"]


def bench_resume(data: Path, work: Path, chunk: str, window: int) -> Run:
    root, db = work / "srv", work / "client.db"
    server = Peer([*resume_bin(), "serve", "--root", str(root), "--port", "0"])
    try:
        seconds, rss, _ = run_child(
            [*resume_bin(), "upload", str(data), server.url, "--db", str(db), "--json",
             "--chunk-size", chunk, "--window", str(window)]
        )  # fmt: skip
    finally:
        server_rss = server.stop()
    assert (root / data.name).stat().st_size == data.stat().st_size
    return Run(seconds, rss, server_rss)


def bench_raw(data: Path, work: Path) -> Run:
    server = Peer([PYTHON, str(HERE / "raw_ws.py"), "server", str(work / "raw")])
    try:
        seconds, rss, _ = run_child(
            [PYTHON, str(HERE / "raw_ws.py"), "client", str(data), server.url]
        )
    finally:
        server_rss = server.stop()
    assert (work / "raw" / "received.bin").stat().st_size == data.stat().st_size
    return Run(seconds, rss, server_rss)


def bench_tus(data: Path, work: Path, chunk_size: int) -> Run:
    port = free_port()
    files = work / "tus"
    files.mkdir()
    server = Peer(
        [PYTHON, str(HERE / "tus_peer.py"), "server", str(files), str(port)],
        ready_line=False,
        port=port,
    )
    try:
        seconds, rss, _ = run_child(
            [
                PYTHON,
                str(HERE / "tus_peer.py"),
                "client",
                str(data),
                f"{server.url}/files/",
                str(chunk_size),
            ]
        )
    finally:
        server_rss = server.stop()
    return Run(seconds, rss, server_rss)


def bench_startup(work: Path, runs: int) -> dict[str, float]:
    """Median wall seconds of a whole `resume upload` of 1 KiB, and of the raw client."""
    small = work / "one-kib.bin"
    small.write_bytes(os.urandom(1024))
    db = work / "startup.db"
    server = Peer([*resume_bin(), "serve", "--root", str(work / "srv"), "--port", "0"])
    raw = Peer([PYTHON, str(HERE / "raw_ws.py"), "server", str(work / "raw")])
    resume_times, raw_times = [], []
    try:  # the first upload creates and migrates the store: not counted
        run_child([*resume_bin(), "upload", str(small), server.url, "--db", str(db), "--name", "w"])
        for i in range(runs):
            resume_times.append(
                run_child(
                    [*resume_bin(), "upload", str(small), server.url, "--db", str(db),
                     "--name", f"s{i}.bin"]
                )[0]
            )  # fmt: skip
            raw_times.append(
                run_child([PYTHON, str(HERE / "raw_ws.py"), "client", str(small), raw.url])[0]
            )
    finally:
        server.stop()
        raw.stop()
    return {
        "resume_upload_1kib_s": statistics.median(resume_times),
        "raw_client_1kib_s": statistics.median(raw_times),
    }


def held_chunks(server_db: Path) -> int:
    if not server_db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{server_db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM received_chunks").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def bench_resume_after_kill(data: Path, work: Path, chunk: str, window: int) -> dict[str, float]:
    """Kill an upload half way; time the re-run to its first newly durable chunk and to done."""
    root, db = work / "srv", work / "client.db"
    server_db = root / ".resume" / "server.db"
    server = Peer([*resume_bin(), "serve", "--root", str(root), "--port", "0"])
    args = [*resume_bin(), "upload", str(data), server.url, "--db", str(db), "--json",
            "--chunk-size", chunk, "--window", str(window)]  # fmt: skip
    total = -(-data.stat().st_size // parse_size(chunk))
    try:
        first = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
        )
        while held_chunks(server_db) < total // 2 and first.poll() is None:
            time.sleep(0.005)
        first.kill()
        first.wait()
        time.sleep(0.3)  # let the server make durable what already arrived
        before = held_chunks(server_db)
        started = time.perf_counter()
        second = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env()
        )
        while held_chunks(server_db) <= before and second.poll() is None:
            time.sleep(0.002)
        first_chunk = time.perf_counter() - started
        out, _ = second.communicate(timeout=600)
        done = time.perf_counter() - started
        summary = json.loads(out)
    finally:
        server.stop()
    return {
        "killed_at_fraction": before / total,
        "time_to_first_durable_chunk_s": first_chunk,
        "resumed_run_wall_s": done,
        "resumed_run_bytes_sent": summary["bytes_sent"],
        "resumed_from": summary["files"][0]["resumed_from"],
    }


def median_run(runs: list[Run], size: int) -> dict[str, float]:
    rates = [r.mbps(size) for r in runs]
    return {
        "mb_per_s_median": statistics.median(rates),
        "mb_per_s_min": min(rates),
        "mb_per_s_max": max(rates),
        "client_rss_mib_median": statistics.median(r.client_rss for r in runs) / MiB,
        "server_rss_mib_median": statistics.median(r.server_rss for r in runs) / MiB,
    }


def make_data(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            f.write(block)
            left -= len(block)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    parser.add_argument("--small-size", default="256MiB", help="second size for the RSS check")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per measurement (median reported)"
    )
    parser.add_argument("--chunk-size", default="4MiB")
    parser.add_argument("--window", type=int, default=16, help="resume's default is 16")
    parser.add_argument("--tus-chunk-size", default="8MiB")
    parser.add_argument("--skip-tus", action="store_true")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--startup-runs", type=int, default=15, help="runs of the start-up check")
    args = parser.parse_args()
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "resume")], check=True)
    size, small = parse_size(args.size), parse_size(args.small_size)

    scratch = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    results: dict[str, object] = {
        "size": size,
        "runs": args.runs,
        "chunk_size": args.chunk_size,
        "window": args.window,
    }
    try:
        startup = scratch / "startup"
        startup.mkdir()
        results["startup"] = bench_startup(startup, args.startup_runs)
        data, small_data = scratch / "data.bin", scratch / "small.bin"
        make_data(data, size)
        make_data(small_data, small)
        runs: dict[str, list[Run]] = {"resume": [], "raw": [], "tus": []}
        tus_error = None
        for i in range(args.runs):  # interleave, so drift on a noisy machine hits all alike
            for name in runs:
                if name == "tus" and (args.skip_tus or tus_error):
                    continue
                work = scratch / f"{name}-{i}"
                work.mkdir()
                try:
                    if name == "resume":
                        runs[name].append(bench_resume(data, work, args.chunk_size, args.window))
                    elif name == "raw":
                        runs[name].append(bench_raw(data, work))
                    else:
                        runs[name].append(bench_tus(data, work, parse_size(args.tus_chunk_size)))
                except (RuntimeError, ImportError) as exc:
                    if name != "tus":
                        raise
                    tus_error = str(exc)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        for name, measured in runs.items():
            if measured:
                results[name] = median_run(measured, size)
        if tus_error:
            results["tus_error"] = tus_error
        r = results["resume"]["mb_per_s_median"]  # type: ignore[index]
        results["ratio_resume_vs_raw"] = r / results["raw"]["mb_per_s_median"]  # type: ignore[index]
        if "tus" in results:
            results["ratio_resume_vs_tus"] = r / results["tus"]["mb_per_s_median"]  # type: ignore[index]

        small_rss = []
        for i in range(args.runs):
            work = scratch / f"small-{i}"
            work.mkdir()
            small_rss.append(
                bench_resume(small_data, work, args.chunk_size, args.window).client_rss
            )
            shutil.rmtree(work, ignore_errors=True)
        results["client_rss_mib_small_file"] = statistics.median(small_rss) / MiB

        kills = []
        for i in range(args.runs):
            work = scratch / f"kill-{i}"
            work.mkdir()
            kills.append(bench_resume_after_kill(data, work, args.chunk_size, args.window))
            shutil.rmtree(work, ignore_errors=True)
        results["resume_after_kill"] = {
            key: statistics.median(k[key] for k in kills) for key in kills[0]
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, size, small)


def report(results: dict, size: int, small: int) -> None:  # type: ignore[type-arg]
    print(f"upload of {size / MiB:.0f} MiB on loopback, median of {results['runs']} runs "
          f"(resume: chunks {results['chunk_size']}, window {results['window']})")  # fmt: skip
    print(
        f"{'peer':8} {'MB/s median':>12} {'min':>8} {'max':>8} {'client RSS':>11} {'server RSS':>11}"
    )
    for name in ("resume", "raw", "tus"):
        if name in results:
            m = results[name]
            print(
                f"{name:8} {m['mb_per_s_median']:12.1f} {m['mb_per_s_min']:8.1f} {m['mb_per_s_max']:8.1f} "
                f"{m['client_rss_mib_median']:9.1f}Mi {m['server_rss_mib_median']:9.1f}Mi"
            )
    if "tus_error" in results:
        print(f"tus      not measured: {results['tus_error']}")
    print(f"resume / raw: {results['ratio_resume_vs_raw']:.2f}x (whole processes, same run)")
    if "ratio_resume_vs_tus" in results:
        print(f"resume / tus: {results['ratio_resume_vs_tus']:.2f}x")
    print(
        f"resume client peak RSS: {results['client_rss_mib_small_file']:.1f} MiB for "
        f"{small / MiB:.0f} MiB, {results['resume']['client_rss_mib_median']:.1f} MiB for {size / MiB:.0f} MiB"
    )
    st = results["startup"]
    print(
        f"start-up: `resume upload` of 1 KiB to a listening server {st['resume_upload_1kib_s']:.3f}s "
        f"(raw client: {st['raw_client_1kib_s']:.3f}s), median"
    )
    k = results["resume_after_kill"]
    print(
        f"after SIGKILL at {k['killed_at_fraction']:.0%}: first new chunk durable on the server "
        f"{k['time_to_first_durable_chunk_s']:.2f}s after the re-run started; re-run took "
        f"{k['resumed_run_wall_s']:.2f}s and sent {k['resumed_run_bytes_sent'] / MiB:.0f} MiB "
        f"(server already held {k['resumed_from'] / MiB:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
