"""Real tus peers as processes on 127.0.0.1, for interop tests and benchmarks.

- :func:`tuspy_server`: tuspyserver (PyPI) under uvicorn.
- :func:`node_tus_server`: @tus/server with @tus/file-store under the machine's ``node``.
- :func:`tus_js_upload` / :func:`start_tus_js_upload`: tus-js-client in Node.
- :func:`hostile_server`: a tiny tus server with scripted faults (``hostile_tus.py``).

Node packages come from ``tests/interop/node/package-lock.json``: :func:`node_packages` runs
``npm ci`` once into a cache directory outside the repository, keyed by the lock file's hash,
and copies the scripts next to the installed ``node_modules``. Everything here is importable
without pytest (benchmarks use it too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NODE_SOURCES = HERE / "node"
REPO = HERE.parents[1]
MIN_NODE = (20, 19)  # @tus/server 2.x needs it


class ListeningProcess:
    """A child process that prints ``listening on URL`` when ready; killable and restartable.

    stderr of every start goes to one log file, so it survives kills and restarts.
    """

    def __init__(
        self,
        cmd: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    def start(self) -> str:
        """Start and wait for the ``listening on`` line; returns the URL it printed."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO), **(self.env or {})},
                cwd=self.cwd,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"{self.cmd[:3]} did not start: {line!r}\n{self.log[-2000:]}")
        self.url = line.split()[-1]
        return self.url

    def kill(self) -> None:
        """SIGKILL and reap."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM and reap."""
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
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> ListeningProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- Python peers ----------------------------------------------------------------------------


def tuspy_server(
    files_dir: Path, log_path: Path, tls: tuple[Path, Path] | None = None
) -> ListeningProcess:
    """tuspyserver serving ``files_dir`` at ``/files/`` (not started yet); over https with
    ``tls`` = (certificate, key)."""
    extra = ["0", *map(str, tls)] if tls else []
    return ListeningProcess(
        [sys.executable, str(HERE / "tuspy_server.py"), str(files_dir), *extra], log_path
    )


def hostile_server(
    data_dir: Path, log_path: Path, faults: dict[str, Any] | None = None, port: int = 0
) -> ListeningProcess:
    """The fault-scripted tus server of ``hostile_tus.py`` (not started yet)."""
    return ListeningProcess(
        [
            sys.executable,
            str(HERE / "hostile_tus.py"),
            str(data_dir),
            "--port",
            str(port),
            "--faults",
            json.dumps(faults or {}),
        ],
        log_path,
    )


# -- Node peers ------------------------------------------------------------------------------


def node_problem() -> str | None:
    """Why the Node peers cannot run here (no node, no npm, too old), or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed for the Node tus peers (tus-js-client, @tus/server)"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        major, minor = (int(x) for x in out.stdout.strip().lstrip("v").split(".")[:2])
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return f"cannot run node --version: {exc}"
    if (major, minor) < MIN_NODE:
        return f"node {out.stdout.strip()} is older than {'.'.join(map(str, MIN_NODE))}, which @tus/server needs"
    return None


def node_cache_root() -> Path:
    """Where installed packages are kept: $RESUME_NODE_CACHE, else $XDG_CACHE_HOME/resume-tests."""
    explicit = os.environ.get("RESUME_NODE_CACHE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "resume-tests" / "node"


def node_packages(cache_root: Path | None = None) -> Path:
    """Install the locked Node packages (once per lock file) and return the directory that
    holds ``node_modules`` and the peer scripts. Raises ``RuntimeError`` if ``npm ci`` fails."""
    manifest = (NODE_SOURCES / "package.json").read_bytes()
    lock = (NODE_SOURCES / "package-lock.json").read_bytes()
    key = hashlib.sha256(manifest + b"\0" + lock).hexdigest()[:16]
    root = (cache_root or node_cache_root()) / key
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{key}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one installer at a time; the others wait for it
        if not (root / ".installed").exists():
            staging = root.parent / f"{key}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            (staging / "package.json").write_bytes(manifest)
            (staging / "package-lock.json").write_bytes(lock)
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                cwd=staging,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise RuntimeError(f"npm ci failed ({result.returncode}): {result.stderr[-2000:]}")
            (staging / ".installed").write_text(key)
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
        for script in NODE_SOURCES.glob("*.mjs"):  # the scripts may change without the lock
            staged = root / f".{script.name}.{os.getpid()}"
            shutil.copyfile(script, staged)
            staged.replace(root / script.name)
    return root


def node_tus_server(packages: Path, files_dir: Path, log_path: Path) -> ListeningProcess:
    """@tus/server + @tus/file-store serving ``files_dir`` at ``/files/`` (not started yet)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    return ListeningProcess(["node", str(packages / "tus_server.mjs"), str(files_dir)], log_path)


def tus_js_command(
    packages: Path,
    path: Path,
    endpoint: str,
    *,
    chunk_size: int | None = None,
    parallel: int | None = None,
    url_store: Path | None = None,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """The command line of one tus-js-client upload (see ``node/tus_upload.mjs``)."""
    cmd = ["node", str(packages / "tus_upload.mjs"), str(path), endpoint]
    if chunk_size is not None:
        cmd += ["--chunk-size", str(chunk_size)]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    if url_store is not None:
        cmd += ["--url-store", str(url_store)]
    if metadata:
        cmd += ["--metadata", json.dumps(metadata)]
    return cmd


def start_tus_js_upload(
    packages: Path, path: Path, endpoint: str, **options: Any
) -> subprocess.Popen[str]:
    """tus-js-client uploading in the background (to be killed, or waited for)."""
    return subprocess.Popen(
        tus_js_command(packages, path, endpoint, **options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tus_js_upload(
    packages: Path, path: Path, endpoint: str, *, timeout: float = 300, **options: Any
) -> dict[str, Any]:
    """Run tus-js-client to the end; its final JSON line (``url``, ``seconds``, ``resumed``)."""
    result = subprocess.run(
        tus_js_command(packages, path, endpoint, **options),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tus-js-client failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def random_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes (written a MiB at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(size // 2**20):
            f.write(os.urandom(2**20))
        f.write(os.urandom(size % 2**20))
    return path


def read_upload(files_dir: Path, upload_url: str) -> bytes:
    """The bytes a tus server stored for ``upload_url`` (tuspyserver, @tus/server and the
    hostile server all name the data file after the last path segment of the URL)."""
    return (files_dir / upload_url.rstrip("/").rsplit("/", 1)[-1]).read_bytes()
