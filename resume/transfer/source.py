"""Reading a local file as chunks: large positioned reads, xxhash checksums, fingerprints.

This is the boundary where errors of the local source file become :mod:`resume.errors`:
:class:`SourceError` (cannot read it: permission, I/O error, gone) and :class:`SourceChanged`
(it is not the file the transfer began with). Neither is ever retried as a network problem.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import xxhash

from resume.errors import SourceChanged, SourceError
from resume.protocol.geometry import ChunkSpec

CHUNK_ALGO = "xxh3-64"
FILE_ALGO = "xxh3-128"
HASH_BUFFER = 8 * 1024 * 1024


def chunk_checksum(data: bytes | bytearray | memoryview) -> str:
    """The checksum of one chunk: xxh3-64 as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(data)


def source_error(path: str | os.PathLike[str], exc: OSError, doing: str = "read") -> SourceError:
    """A local file's OSError as the error users see: it names the file and what failed."""
    where = os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return SourceError(f"{where}: no such file", path=where)
    return SourceError(f"{where}: cannot {doing}: {exc.strerror or exc}", path=where)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies one version of a file: a change in any field means a different file.

    Size and modification time catch edits; the inode catches a file replaced by another
    (``mv new old``) with the same size and a preserved mtime.
    """

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> Fingerprint:
        """Fingerprint the file at ``path`` now."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise source_error(path, exc) from exc
        return cls.of_stat(st)

    @classmethod
    def of_stat(cls, st: os.stat_result) -> Fingerprint:
        """The fingerprint of a stat result."""
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)

    def check_against(self, path: str | os.PathLike[str], *, restart_hint: str = "") -> None:
        """Raise :class:`SourceChanged` if the file at ``path`` no longer has this fingerprint."""
        try:
            now = Fingerprint.of(path)
        except SourceError as exc:
            raise SourceChanged(f"{os.fspath(path)} disappeared during its transfer") from exc
        if now != self:
            raise SourceChanged(
                f"{os.fspath(path)} changed since its transfer began ({self.differences(now)})"
                + (f"; {restart_hint}" if restart_hint else "")
            )

    def differences(self, other: Fingerprint) -> str:
        """Which fields differ, for people: ``'size, modification time differ'``."""
        names = [
            name
            for name, mine, theirs in (
                ("size", self.size, other.size),
                ("modification time", self.mtime_ns, other.mtime_ns),
                ("inode", self.inode, other.inode),
            )
            if mine != theirs
        ]
        return ", ".join(names) + " differ"


def open_source(path: str | os.PathLike[str]) -> tuple[int, Fingerprint]:
    """Open a file for reading and fingerprint what was opened: ``(fd, fingerprint)``.

    Raises :class:`SourceError` if it cannot be opened or is not a regular file (a FIFO
    would block, a device never ends).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise source_error(path, exc, "open") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{os.fspath(path)}: not a regular file", path=os.fspath(path))
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise source_error(path, exc) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, Fingerprint.of_stat(st)


class ChunkSource:
    """An open file that hands out chunks, checked on every read to be the expected file.

    Use as ``async with ChunkSource(path, fingerprint) as source``. Each chunk is one
    positioned read in a worker thread, straight into a fresh buffer, followed by an
    ``fstat``: a file whose size or modification time differs from ``fingerprint`` raises
    :class:`SourceChanged` at the first chunk read after the change, not at ``finish``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: Fingerprint | None = None,
        *,
        restart_hint: str = "",
    ) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.restart_hint = restart_hint
        self._fd: int | None = None
        self._file: BinaryIO | None = None

    async def __aenter__(self) -> Self:
        fd, now = await asyncio.to_thread(open_source, self.path)
        self._fd = fd
        try:
            self._check(now)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()  # closefd=False: the descriptor is closed below
            self._file = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def file(self) -> BinaryIO:
        """The open file as a file object (``loop.sendfile`` needs one), valid while the
        source is open; positioned reads elsewhere do not depend on its position."""
        assert self._fd is not None, "use ChunkSource as an async context manager"
        if self._file is None:
            self._file = os.fdopen(self._fd, "rb", buffering=0, closefd=False)
        return self._file

    async def read_into(self, spec: ChunkSpec, into: memoryview) -> memoryview:
        """Read chunk ``spec`` into ``into`` (reused by the caller: no allocation per chunk);
        returns the view of exactly the chunk's bytes. Raises as :meth:`read`."""
        assert self._fd is not None, "use ChunkSource as an async context manager"
        view = into[: spec.length]
        await asyncio.to_thread(self._fill, self._fd, spec, view)
        return view

    async def read(self, spec: ChunkSpec, *, prefix: int = 0) -> bytearray:
        """Read chunk ``spec`` into a new buffer, after ``prefix`` spare bytes for a header.

        Raises :class:`SourceChanged` if the file is shorter than the chunk says or changed,
        :class:`SourceError` if it cannot be read.
        """
        assert self._fd is not None, "use ChunkSource as an async context manager"
        return await asyncio.to_thread(self._read, self._fd, spec, prefix)

    def _read(self, fd: int, spec: ChunkSpec, prefix: int) -> bytearray:
        buffer = bytearray(prefix + spec.length)
        self._fill(fd, spec, memoryview(buffer)[prefix:])
        return buffer

    def _fill(self, fd: int, spec: ChunkSpec, view: memoryview) -> None:
        filled = 0
        try:
            while filled < spec.length:
                n = os.preadv(fd, [view[filled:]], spec.offset + filled)
                if not n:
                    raise SourceChanged(
                        f"{self.path} is shorter than when its transfer began "
                        f"(chunk {spec.index} ends at {spec.offset + spec.length})" + self._hint()
                    )
                filled += n
            now = Fingerprint.of_stat(os.fstat(fd))
        except OSError as exc:
            raise source_error(self.path, exc) from exc
        self._check(now)

    def _check(self, now: Fingerprint) -> None:
        if self.fingerprint is not None and now != self.fingerprint:
            raise SourceChanged(
                f"{self.path} changed while it was being sent "
                f"({self.fingerprint.differences(now)})" + self._hint()
            )

    def _hint(self) -> str:
        return f"; {self.restart_hint}" if self.restart_hint else ""


async def file_checksum(path: str | os.PathLike[str], *, buffer_size: int = HASH_BUFFER) -> str:
    """The xxh3-128 of a whole file, read in large buffers: 32 hex digits."""
    return await asyncio.to_thread(_file_checksum, path, buffer_size)


def _file_checksum(path: str | os.PathLike[str], buffer_size: int) -> str:
    hasher = xxhash.xxh3_128()
    fd, _ = open_source(path)
    try:
        buffer = bytearray(buffer_size)
        view = memoryview(buffer)
        while n := os.readv(fd, [buffer]):
            hasher.update(view[:n])
    except OSError as exc:
        raise source_error(path, exc) from exc
    finally:
        os.close(fd)
    return hasher.hexdigest()
