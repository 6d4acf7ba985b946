"""Upload throughput, CPU, memory and resume time of `resume`, against baselines, in one run.

    .venv/bin/python benchmarks/upload_throughput.py [--sizes 512MiB,4GiB] [--runs 5] [--json]

Every peer is a real separate process on 127.0.0.1, with a fresh server directory per run
(the server is started and listening before the client's clock starts). The resume client's
state database is made once, before the rounds, at the newest schema (as a user's is after
the first run):

- resume:      `resume upload FILE ws://...` to `resume serve` (chunk ledger, xxh3 per chunk
               and per file, group fsync, verify and rename).
- resume-http: `resume upload FILE http://.../files/` to the same server's tus endpoint.
- raw:         plain `websockets`, 1 MiB binary messages, one fsync at the end
               (benchmarks/raw_ws.py).
- dd:          `dd if=FILE of=OUT bs=1M conv=fsync` into the same file system: what the disk
               takes, with no network and no server.
- tus:         `tuspy` to `tuspyserver` under uvicorn (benchmarks/tus_peer.py), if installed
               and not --skip-tus.

Reported, per size: MB/s over the client's wall time (process start to exit, what a user
waits: every client measured the same way, as whole processes) and the median of --runs,
the peers alternated within each round and the round's first peer rotated; ratios to raw and
to dd from the medians; CPU seconds per GiB of client (wait4's rusage) and server (psutil's
cpu_times of the server process just before and after the client ran); peak RSS of client
and server (from wait4's rusage, exact per process). A size whose files do not fit on the
disk (df) is skipped with a message. Then, for the first size: resume's client RSS for a
second, small file (it must not grow with the file); after SIGKILLing
an upload half way, how long the same command takes to get the next chunk durably stored;
and start-up: the wall time of `resume upload` of a 1 KiB file (over WebSocket and over
HTTP) to a server already listening, with a state database already at the newest schema
(median of --startup-runs), next to the raw client doing the same.

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
    client_cpu: float = 0.0  # seconds, user + system
    server_cpu: float = 0.0

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
    elapsed, rss, out, _ = run_child_cpu(cmd)
    return elapsed, rss, out


# wait4's ru_maxrss of a child is at least this process's RSS when it spawned the child
# (Linux keeps the pre-exec high-water mark, and subprocess uses vfork), so a child's own peak
# comes from GNU time, which forks it from a process of about 1 MiB.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_child_cpu(cmd: list[str]) -> tuple[float, int, str, float]:
    """Run to completion; (wall seconds, peak RSS bytes, stdout, CPU seconds)."""
    rss_file = None
    if GNU_TIME:
        fd, rss_file = tempfile.mkstemp(prefix="resume-bench-rss-")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # the client's (GNU time reaped it: included)
    rss = usage.ru_maxrss * 1024
    if rss_file:
        rss = int(Path(rss_file).read_text().split()[-1]) * 1024
        os.unlink(rss_file)
    return elapsed, rss, out.decode(), cpu


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

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) the server has used so far."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def timed_client(self, cmd: list[str]) -> tuple[float, int, float, float]:
        """Run a client against this server; (wall s, client RSS, client CPU, server CPU)."""
        before = self.cpu()
        seconds, rss, _, client_cpu = run_child_cpu(cmd)
        return seconds, rss, client_cpu, self.cpu() - before

    def stop(self) -> int:
        """SIGTERM, wait; the server's peak RSS in bytes (VmHWM of its own address space:
        wait4's ru_maxrss would include this process's RSS at the spawn)."""
        peak = 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, _, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            return peak
        return peak or usage.ru_maxrss * 1024


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


def client_store(scratch: Path) -> Path:
    """The client's state database, made once and at the newest schema: as a user's is after
    the first run (creating it, Alembic and all, is a one-time cost not counted here; the
    start-up check below measures the same way)."""
    db = scratch / "client-store.db"
    if not db.exists():
        code = "import sys; from resume.store import open_store; open_store(sys.argv[1]).close()"
        subprocess.run([PYTHON, "-c", code, str(db)], check=True, env=env())
    return db


def bench_resume(data: Path, work: Path, chunk: str, window: int, http: bool = False) -> Run:
    """`resume upload` over WebSocket (or over HTTP, tus) to a listening `resume serve`."""
    root, db = work / "srv", client_store(work.parent)
    server = Peer([*resume_bin(), "serve", "--root", str(root), "--port", "0"])
    url = server.url.replace("ws://", "http://", 1) + "/files/" if http else server.url
    try:
        seconds, rss, client_cpu, server_cpu = server.timed_client(
            [*resume_bin(), "upload", str(data), url, "--db", str(db), "--json",
             "--chunk-size", chunk, "--window", str(window), "--via", "http" if http else "ws"]
        )  # fmt: skip
    finally:
        server_rss = server.stop()
    assert (root / data.name).stat().st_size == data.stat().st_size
    return Run(seconds, rss, server_rss, client_cpu, server_cpu)


def bench_raw(data: Path, work: Path) -> Run:
    server = Peer([PYTHON, str(HERE / "raw_ws.py"), "server", str(work / "raw")])
    try:
        seconds, rss, client_cpu, server_cpu = server.timed_client(
            [PYTHON, str(HERE / "raw_ws.py"), "client", str(data), server.url]
        )
    finally:
        server_rss = server.stop()
    assert (work / "raw" / "received.bin").stat().st_size == data.stat().st_size
    return Run(seconds, rss, server_rss, client_cpu, server_cpu)


def bench_dd(data: Path, work: Path) -> Run:
    """`dd conv=fsync` of the same file into the same file system: the disk's rate."""
    out = work / "dd.out"
    seconds, rss, _, cpu = run_child_cpu(
        ["dd", f"if={data}", f"of={out}", "bs=1M", "conv=fsync", "status=none"]
    )
    assert out.stat().st_size == data.stat().st_size
    return Run(seconds, rss, 0, cpu, 0.0)


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
        seconds, rss, client_cpu, server_cpu = server.timed_client(
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
    return Run(seconds, rss, server_rss, client_cpu, server_cpu)


def bench_startup(work: Path, runs: int) -> dict[str, float]:
    """Median wall seconds of a whole `resume upload` of 1 KiB, and of the raw client."""
    small = work / "one-kib.bin"
    small.write_bytes(os.urandom(1024))
    db = work / "startup.db"
    server = Peer([*resume_bin(), "serve", "--root", str(work / "srv"), "--port", "0"])
    raw = Peer([PYTHON, str(HERE / "raw_ws.py"), "server", str(work / "raw")])
    resume_times, http_times, raw_times = [], [], []
    files = server.url.replace("ws://", "http://", 1) + "/files/"
    try:  # the first upload creates and migrates the store: not counted
        run_child([*resume_bin(), "upload", str(small), server.url, "--db", str(db), "--name", "w"])
        for i in range(runs):
            resume_times.append(
                run_child(
                    [*resume_bin(), "upload", str(small), server.url, "--db", str(db),
                     "--name", f"s{i}.bin"]
                )[0]
            )  # fmt: skip
            http_times.append(
                run_child(
                    [*resume_bin(), "upload", str(small), files, "--db", str(db),
                     "--name", f"h{i}.bin"]
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
        "resume_http_upload_1kib_s": statistics.median(http_times),
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
    gib = size / 2**30
    return {
        "mb_per_s_median": statistics.median(rates),
        "mb_per_s_min": min(rates),
        "mb_per_s_max": max(rates),
        "client_rss_mib_median": statistics.median(r.client_rss for r in runs) / MiB,
        "server_rss_mib_median": statistics.median(r.server_rss for r in runs) / MiB,
        "client_cpu_s_per_gib": statistics.median(r.client_cpu for r in runs) / gib,
        "server_cpu_s_per_gib": statistics.median(r.server_cpu for r in runs) / gib,
        "cpu_s_per_gib": statistics.median(r.client_cpu + r.server_cpu for r in runs) / gib,
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


PEERS = ("resume", "resume-http", "raw", "dd", "tus")


def bench_size(
    data: Path, scratch: Path, args: argparse.Namespace, peers: list[str]
) -> dict[str, object]:
    """--runs rounds of every peer on one file; medians, ratios and CPU per GiB."""
    size = data.stat().st_size
    runs: dict[str, list[Run]] = {name: [] for name in peers}
    tus_error = None
    for i in range(args.runs):  # alternate, so drift on a noisy machine hits all alike
        order = peers[i % len(peers) :] + peers[: i % len(peers)]  # and rotate who goes first
        for name in order:
            if name == "tus" and tus_error:
                continue
            work = scratch / f"{name}-{i}"
            work.mkdir()
            try:
                if name == "resume":
                    run = bench_resume(data, work, args.chunk_size, args.window)
                elif name == "resume-http":
                    run = bench_resume(data, work, args.chunk_size, args.window, http=True)
                elif name == "raw":
                    run = bench_raw(data, work)
                elif name == "dd":
                    run = bench_dd(data, work)
                else:
                    run = bench_tus(data, work, parse_size(args.tus_chunk_size))
                runs[name].append(run)
                print(
                    f"  {size / MiB:.0f} MiB round {i + 1}: {name} {run.mbps(size):.1f} MB/s, "
                    f"CPU {run.client_cpu:.2f}+{run.server_cpu:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            except (RuntimeError, ImportError) as exc:
                if name != "tus":
                    raise
                tus_error = str(exc)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    results: dict[str, object] = {"size": size}
    for name, measured in runs.items():
        if measured:
            results[name] = median_run(measured, size)
    if tus_error:
        results["tus_error"] = tus_error
    ratios = {}
    for name in ("resume", "resume-http", "tus"):
        if name not in results:
            continue
        r = results[name]["mb_per_s_median"]  # type: ignore[index]
        for base in ("raw", "dd"):
            if base in results:
                ratios[f"{name}/{base}"] = r / results[base]["mb_per_s_median"]  # type: ignore[index]
    if "resume" in results and "resume-http" in results:
        ratios["resume-http/resume"] = (
            results["resume-http"]["mb_per_s_median"]  # type: ignore[index]
            / results["resume"]["mb_per_s_median"]  # type: ignore[index]
        )
    results["ratios"] = ratios
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", "--size", default="1GiB", help="file sizes, comma-separated (default 1GiB)"
    )
    parser.add_argument("--small-size", default="256MiB", help="second size for the RSS check")
    parser.add_argument(
        "--runs", type=int, default=5, help="rounds per size (median reported; default 5)"
    )
    parser.add_argument("--chunk-size", default="4MiB")
    parser.add_argument("--window", type=int, default=16, help="resume's default is 16")
    parser.add_argument("--tus-chunk-size", default="8MiB")
    parser.add_argument("--skip-tus", action="store_true", help="leave out tuspy -> tuspyserver")
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"which peers (default {','.join(PEERS)})"
    )
    parser.add_argument("--skip-kill", action="store_true", help="no resume-after-SIGKILL check")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--startup-runs", type=int, default=15, help="runs of the start-up check")
    args = parser.parse_args()
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "resume")], check=True)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    small = parse_size(args.small_size)
    peers = [p for p in args.peers.split(",") if p in PEERS and not (p == "tus" and args.skip_tus)]

    scratch = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    results: dict[str, object] = {
        "sizes": sizes,
        "runs": args.runs,
        "chunk_size": args.chunk_size,
        "window": args.window,
        "load_average": os.getloadavg(),
        "by_size": {},
        "skipped": {},
    }
    try:
        startup = scratch / "startup"
        startup.mkdir()
        results["startup"] = bench_startup(startup, args.startup_runs)
        first = None
        for size in sizes:
            # the source, one received copy (resume or raw or tus) or dd's copy, and 1 GiB spare
            need = 2 * size + 2**30
            free = shutil.disk_usage(scratch).free
            if free < need:
                message = (
                    f"skipped {size / MiB:.0f} MiB: {free / 2**30:.1f} GiB free on "
                    f"{scratch}, {need / 2**30:.1f} GiB needed"
                )
                print(message, file=sys.stderr)
                results["skipped"][str(size)] = message  # type: ignore[index]
                continue
            data = scratch / f"data-{size}.bin"
            make_data(data, size)
            results["by_size"][str(size)] = bench_size(data, scratch, args, peers)  # type: ignore[index]
            if first is None:
                first = data  # kept for the checks below
            else:
                data.unlink()
        if first is None:
            raise SystemExit("no size fitted on the disk")

        small_data = scratch / "small.bin"
        make_data(small_data, small)
        small_rss = []
        for i in range(args.runs):
            work = scratch / f"small-{i}"
            work.mkdir()
            small_rss.append(
                bench_resume(small_data, work, args.chunk_size, args.window).client_rss
            )
            shutil.rmtree(work, ignore_errors=True)
        results["client_rss_mib_small_file"] = statistics.median(small_rss) / MiB

        if not args.skip_kill:
            kills = []
            for i in range(args.runs):
                work = scratch / f"kill-{i}"
                work.mkdir()
                kills.append(bench_resume_after_kill(first, work, args.chunk_size, args.window))
                shutil.rmtree(work, ignore_errors=True)
            results["resume_after_kill"] = {
                key: statistics.median(k[key] for k in kills) for key in kills[0]
            }
            results["resume_after_kill"]["size"] = first.stat().st_size  # type: ignore[index]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, small)


NAMES = {
    "resume": "resume (WS)",
    "resume-http": "resume (HTTP)",
    "raw": "raw ws",
    "dd": "dd fsync",
    "tus": "tuspy",
}


def report(results: dict, small: int) -> None:  # type: ignore[type-arg]
    la = ", ".join(f"{x:.1f}" for x in results["load_average"])
    print(
        f"median of {results['runs']} alternating rounds, whole processes on loopback "
        f"(resume: chunks {results['chunk_size']}, window {results['window']}); "
        f"load average at start {la}"
    )
    for message in results["skipped"].values():
        print(message)
    for by in results["by_size"].values():
        size = by["size"]
        print(f"\n{size / MiB:.0f} MiB")
        print(
            f"{'peer':14} {'MB/s':>7} {'min':>7} {'max':>7} {'CPU s/GiB':>10} "
            f"{'(client+server)':>16} {'client RSS':>11} {'server RSS':>11}"
        )
        for name in PEERS:
            if name not in by:
                continue
            m = by[name]
            split = f"{m['client_cpu_s_per_gib']:.2f}+{m['server_cpu_s_per_gib']:.2f}"
            print(
                f"{NAMES[name]:14} {m['mb_per_s_median']:7.1f} {m['mb_per_s_min']:7.1f} "
                f"{m['mb_per_s_max']:7.1f} {m['cpu_s_per_gib']:10.2f} {split:>16} "
                f"{m['client_rss_mib_median']:9.1f}Mi {m['server_rss_mib_median']:9.1f}Mi"
            )
        if "tus_error" in by:
            print(f"tus not measured: {by['tus_error']}")
        print("ratios of the medians: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in by["ratios"].items()
        ))  # fmt: skip
        if "raw" in by:
            raw_cpu = by["raw"]["cpu_s_per_gib"]
            print("CPU per GiB vs raw: " + ", ".join(
                f"{NAMES[n]} {by[n]['cpu_s_per_gib'] / raw_cpu:.2f}x"
                for n in ("resume", "resume-http") if n in by
            ))  # fmt: skip
    first = next(iter(results["by_size"].values()))
    if "resume" in first:
        print(
            f"\nresume client peak RSS: {results['client_rss_mib_small_file']:.1f} MiB for "
            f"{small / MiB:.0f} MiB; "
            + ", ".join(
                f"{by['resume']['client_rss_mib_median']:.1f} MiB for {by['size'] / MiB:.0f} MiB"
                for by in results["by_size"].values()
                if "resume" in by
            )
        )
    st = results["startup"]
    print(
        f"start-up: `resume upload` of 1 KiB to a listening server {st['resume_upload_1kib_s']:.3f}s "
        f"over WebSocket, {st['resume_http_upload_1kib_s']:.3f}s over HTTP "
        f"(raw client: {st['raw_client_1kib_s']:.3f}s), median"
    )
    if "resume_after_kill" in results:
        k = results["resume_after_kill"]
        print(
            f"after SIGKILL at {k['killed_at_fraction']:.0%} of {k['size'] / MiB:.0f} MiB: first "
            f"new chunk durable on the server {k['time_to_first_durable_chunk_s']:.2f}s after "
            f"the re-run started; re-run took {k['resumed_run_wall_s']:.2f}s and sent "
            f"{k['resumed_run_bytes_sent'] / MiB:.0f} MiB (server already held "
            f"{k['resumed_from'] / MiB:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
