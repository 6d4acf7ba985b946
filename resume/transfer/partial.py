"""A file being received on the server: written at offsets, fsynced, verified, published.

Blocking calls (``os.pwrite``, ``os.fsync``, reads for hashing): run them in a worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

READ_BUFFER = 8 * 1024 * 1024


class PartialFile:
    """The bytes of one incoming file, under the server's hidden state directory.

    Nothing ever appears under the final name until :meth:`publish`, which renames the
    verified, fsynced file into place atomically.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fresh or os.fstat(self.fd).st_size != size:
                self._allocate()
        except BaseException:
            os.close(self.fd)
            if fresh:
                path.unlink(missing_ok=True)
            raise

    def _allocate(self) -> None:
        # Reserve the space up front, so a full disk is reported when the upload begins rather
        # than half way through; fall back to a sparse file where fallocate is unsupported.
        os.ftruncate(self.fd, self.size)
        if self.size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.fd, 0, self.size)
            except OSError as exc:
                if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: filesystem cannot; fine
                    raise

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (not yet durable: see :meth:`sync`)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        """Make every write so far durable."""
        os.fsync(self.fd)

    def checksum(self, hasher: xxhash.xxh3_128 | None = None, start: int = 0) -> str:
        """xxh3-128 of the file's bytes from ``start`` on, continuing ``hasher`` if given."""
        hasher = hasher or xxhash.xxh3_128()
        buffer = bytearray(READ_BUFFER)
        view = memoryview(buffer)
        offset = start
        while offset < self.size:
            n = os.preadv(self.fd, [view[: min(READ_BUFFER, self.size - offset)]], offset)
            if n == 0:
                break
            hasher.update(view[:n])
            offset += n
        return hasher.hexdigest()

    def publish(self, final: Path) -> None:
        """fsync, then atomically rename into ``final`` and fsync its directory."""
        os.fsync(self.fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o644)
        os.replace(self.path, final)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        """Release the file descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Close and delete the partial data."""
        self.close()
        self.path.unlink(missing_ok=True)
