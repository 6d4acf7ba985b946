"""One server per root: an exclusive lock on ``<root>/.resume/server.lock``.

Two servers on one root would each believe they own every partial upload and channel in the
SQLite store (ownership lives in memory, see DESIGN.md "Ownership"), so the second one must
not start. The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file that stays open while the server
runs: the kernel releases it when the process ends, however it ends (``kill -9`` included), so
a crashed server never leaves a stale lock behind.

The file also says who holds it (pid, URL, start time), for the refusal message and for
``resume server-status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resume.errors import StoreLocked

LOCK_NAME = "server.lock"
ACQUIRE_PATIENCE = 0.5


@dataclass(frozen=True, slots=True)
class LockInfo:
    """What the holder of a root's lock wrote into it."""

    pid: int | None
    url: str | None
    started: float | None
    cert_sha256: str | None = None  # of the TLS certificate it serves, to recognise it


class RootLock:
    """The exclusive lock of one server root's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreLocked` naming the server that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_soon(fd):
            os.close(fd)
            holder = read_info(self.path.parent)
            who = f" (pid {holder.pid})" if holder and holder.pid else ""
            root = self.path.parent.parent
            raise StoreLocked(
                f"another resume server{who} is already serving root {root}; stop it first, "
                "or give this one another --root"
            ) from None
        self._fd = fd
        self.describe(url=None)

    def describe(self, *, url: str | None, cert_sha256: str | None = None) -> None:
        """Record the holder (this process) and, once listening, its URL and certificate."""
        if self._fd is None:
            return
        info = {
            "pid": os.getpid(),
            "url": url,
            "started": time.time(),
            "cert_sha256": cert_sha256,
        }
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with a starting server)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _lock_soon(fd: int) -> bool:
    """Take the exclusive lock within ``ACQUIRE_PATIENCE`` seconds; False if still held."""
    # Patience, because `resume server-status` holds a shared lock for an instant to look.
    deadline = time.monotonic() + ACQUIRE_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def read_info(state_dir: Path) -> LockInfo | None:
    """The holder recorded in ``state_dir``'s lock file, or None if nobody holds the lock."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a server is running, read what it wrote
        else:
            return None  # nobody holds it
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)  # also releases our shared lock, if we got one
    try:
        document: dict[str, Any] = json.loads(raw or b"{}")
    except ValueError:
        document = {}
    return LockInfo(
        document.get("pid"),
        document.get("url"),
        document.get("started"),
        document.get("cert_sha256"),
    )


__all__ = ["LockInfo", "RootLock", "read_info"]
