"""A file being received on the server: written at offsets, fsynced, hashed.

The partial lives under ``<root>/.resume/partial/``. It is sparse: nothing is reserved on disk
for bytes not received yet (the receiver accounts free space instead), so a client that begins
a huge file and disconnects holds no disk. A descriptor is open only while the file is
receiving on some connection; :meth:`PartialFile.close` releases it, and the next write opens
it again.

Blocking calls (``os.pwrite``, ``os.fsync``, reads for hashing): run them in a worker thread.

Large writes bypass the page cache (``O_DIRECT``) where the file system allows it: the bytes
are copied once into a reused page-aligned buffer and the disk takes them from there, instead
of the kernel copying them into freshly allocated page-cache pages (about half of the server's
CPU per byte when measured, see benchmarks/README.md) that nobody reads again. Only whole
4 KiB pages at aligned offsets go that way; the unaligned head and tail of a write, small
writes, and file systems without ``O_DIRECT`` (tmpfs) use the ordinary descriptor. Durability
is unchanged: :meth:`PartialFile.sync` still fsyncs the file (its metadata, the allocation of
the written blocks and the disk's cache), and nothing is acked before that.
``RESUME_DIRECT_IO=0`` turns it off.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from resume.transfer.root import fsync_dir, hash_fd

FILE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
DIRECT_ALIGN = 4096  # offsets, lengths and buffers of O_DIRECT writes: whole pages
DIRECT_MIN = 64 * 1024  # smaller writes go through the page cache
STAGING = 4 * 2**20  # the aligned buffer a direct write is copied through, per open file
DIRECT_IO = hasattr(os, "O_DIRECT") and os.environ.get("RESUME_DIRECT_IO", "1") != "0"


class PartialFile:
    """The bytes of one incoming file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.fd = -1
        self.direct_fd = -1  # the same file opened O_DIRECT (-1: not open or not possible)
        self.direct = DIRECT_IO
        self._staging: mmap.mmap | None = None
        self._staged: memoryview | None = None

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

    def write(self, offset: int, data: bytes | memoryview, *, aligned: bool = False) -> None:
        """Write ``data`` at ``offset`` (not yet durable: see :meth:`sync`).

        ``aligned``: ``data`` starts on a page boundary in memory (a view from the start of
        an :class:`AlignedBuffers` buffer); written at a page-aligned offset, its pages then go
        to the disk straight from it, without the copy into the staging buffer.
        """
        self._open()
        view = memoryview(data).cast("B")
        if self.direct and len(view) >= DIRECT_MIN:
            head = -offset % DIRECT_ALIGN
            body = (len(view) - head) // DIRECT_ALIGN * DIRECT_ALIGN
            if body > 0:
                from_source = aligned and head == 0
                done = self._write_direct(offset + head, view[head : head + body], from_source)
                self._write_buffered(offset + head + done, view[head + done :])
                self._write_buffered(offset, view[:head])
                return
        self._write_buffered(offset, view)

    def _write_buffered(self, offset: int, view: memoryview) -> None:
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def _write_direct(self, offset: int, view: memoryview, from_source: bool = False) -> int:
        """Write whole aligned pages with O_DIRECT; how many bytes it wrote (the caller writes
        the rest through the page cache: a file system that refuses O_DIRECT writes 0).
        ``from_source``: ``view`` itself is page-aligned memory, written without staging."""
        if self.direct_fd < 0:
            try:
                self.direct_fd = os.open(self.path, FILE_FLAGS | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # e.g. tmpfs
                return 0
            self._staging = mmap.mmap(-1, STAGING)  # page-aligned, reused for every write
            self._staged = memoryview(self._staging)
        staged = self._staged
        assert staged is not None
        done = 0
        while done < len(view):
            piece = view[done : done + STAGING]
            n = len(piece)
            if not from_source:
                staged[:n] = piece
                piece = staged[:n]
            try:
                written = os.pwrite(self.direct_fd, piece, offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # alignment the device does not take: page cache from now
                return done
            done += written
            if written != n and written % DIRECT_ALIGN:
                return done  # a short unaligned write: the rest through the page cache
        return done

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
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        if self._staging is not None:
            assert self._staged is not None
            self._staged.release()
            self._staging.close()
            self._staging = self._staged = None

    def remove(self) -> None:
        """Close and delete the partial data."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _open(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, FILE_FLAGS)


class AlignedBuffers:
    """Two page-aligned buffers used in turn: one is filled while the other is written."""

    def __init__(self, size: int) -> None:
        self._views = [memoryview(mmap.mmap(-1, size)) for _ in range(2)]
        self._turn = 0

    def next(self) -> memoryview:
        """The other buffer (the caller must be done with it)."""
        self._turn ^= 1
        return self._views[self._turn]


class BufferPool:
    """:class:`AlignedBuffers` kept between requests: at most ``keep`` idle pairs (the rest
    are freed), so a server that once had many uploads at a time does not keep their memory."""

    def __init__(self, size: int, keep: int = 4) -> None:
        self.size = size
        self.keep = keep
        self._idle: list[AlignedBuffers] = []

    def take(self) -> AlignedBuffers:
        return self._idle.pop() if self._idle else AlignedBuffers(self.size)

    def give_back(self, buffers: AlignedBuffers) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(buffers)
