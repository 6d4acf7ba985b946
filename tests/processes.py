"""Real `resume` processes for tests: a server to start, kill and restart, and CLI runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def resume_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child `resume`: this checkout importable, nothing inherited."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("RESUME_TOKEN", None)
    env.pop("RESUME_DB", None)
    env.update(extra or {})
    return env


def resume_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "resume", *args]


# Root reads and writes any file whatever its mode; without these two capabilities it is held
# to the permission bits like anyone else (and keeps its own files and the interpreter).
DROP_FILE_OVERRIDES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_resume(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    input: str | None = None,
    unprivileged: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and capture its output.

    ``unprivileged``: held to file permission bits even when the tests run as root (so a
    file with mode 000 really cannot be read).
    """
    prefix = DROP_FILE_OVERRIDES if unprivileged and os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *resume_cmd(*args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=resume_env(env),
        input=input,
    )


def run_in_pty(
    *args: str,
    columns: int = 80,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    typed: bytes | None = None,
) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal ``columns`` wide (stdin, stdout and stderr); returns
    (exit status, everything it wrote, with \r and escape sequences as they were).

    ``typed`` is written to the terminal as if typed (end it with b"\x04" for end of input).
    """
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            os.execve(
                sys.executable, resume_cmd(*args), resume_env({"TERM": "xterm", **(env or {})})
            )
        finally:
            os._exit(127)
    output = bytearray()
    status: int | None = None
    deadline = time.monotonic() + timeout
    if typed:
        time.sleep(0.5)  # let it start reading
        os.write(fd, typed)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                output += data
            else:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
                    break
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout}s: {output[-500:]!r}")
    finally:
        os.close(fd)
    if status is None:
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")


class ServeProcess:
    """`resume serve` in a child process; restartable on the same port."""

    def __init__(self, root: Path, *args: str, port: int = 0, env: dict[str, str] | None = None):
        self.root = root
        self.args = args
        self.port = port
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        # stderr of every start goes to one file, so logs survive kills and restarts
        self.log_path = root.parent / f"{root.name}-serve.log"

    @property
    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, timeout: float = 20) -> str:
        """Start and wait for the 'listening on' line; returns the URL."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                resume_cmd("serve", "--root", str(self.root), "--port", str(self.port), *self.args),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=resume_env(self.env),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])  # restart on the same port
        return self.url

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> int | None:
        """SIGTERM and wait: the graceful shutdown path."""
        return self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def start_upload(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`resume upload ...` in the background (to be interrupted or killed)."""
    return subprocess.Popen(
        resume_cmd("upload", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=resume_env(env),
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> tuple[int, str, str]:
    """Signal a child, wait for it, and return (code, stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def args_for(*parts: str | Path | int) -> Sequence[str]:
    return [str(p) for p in parts]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
