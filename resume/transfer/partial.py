"""A file being received on the server: written at offsets, fsynced, hashed.

The partial lives under ``<root>/.resume/partial/``. It is sparse: nothing is reserved on disk
for bytes not received yet (the receiver accounts free space instead), so a client that begins
a huge file and disconnects holds no disk. A descriptor is open only while the file is
receiving on some connection; :meth:`PartialFile.close` releases it, and the next write opens
it again.

Blocking calls (``os.pwrite``, ``os.fsync``, reads for hashing): run them in a worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path

from resume.transfer.root import fsync_dir, hash_fd

FILE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class PartialFile:
    """The bytes of one incoming file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.fd = -1

    def exists(self) -> bool:
        """Whether the partial is on disk."""
        return self.path.exists()

    def create(self) -> bool:
        """Make sure the partial exists with its full (sparse) size; True if it was created.

        A new partial's directory entry is fsynced, so a power cut cannot lose a partial whose
        chunks were acked.
        """
        try:
            fd = os.open(self.path, FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.stat(self.path, follow_symlinks=False).st_size != self.size:
                os.truncate(self.path, self.size)
            return False
        try:
            os.ftruncate(fd, self.size)
            os.fsync(fd)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fsync_dir(directory)
            finally:
                os.close(directory)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)  # no descriptor until chunks arrive
        return True

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (not yet durable: see :meth:`sync`)."""
        self._open()
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        """Make every write so far durable."""
        self._open()
        os.fsync(self.fd)

    def checksum(self) -> str:
        """xxh3-128 of the partial's bytes, read back from disk."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return hash_fd(fd, self.size)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the descriptor (idempotent); the next write opens it again."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Close and delete the partial data."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _open(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, FILE_FLAGS)
