"""Reading a local file as chunks: large reads with aiofiles, xxhash checksums, fingerprints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiofiles
import xxhash
from aiofiles.threadpool.binary import AsyncBufferedReader

from resume.errors import SourceChanged, UsageError
from resume.protocol.geometry import ChunkSpec

CHUNK_ALGO = "xxh3-64"
FILE_ALGO = "xxh3-128"
HASH_BUFFER = 8 * 1024 * 1024


def chunk_checksum(data: bytes | bytearray | memoryview) -> str:
    """The checksum of one chunk: xxh3-64 as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(data)


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
        except FileNotFoundError as exc:
            raise UsageError(f"{os.fspath(path)}: no such file") from exc
        except OSError as exc:
            raise UsageError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from exc
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)

    def check_against(self, path: str | os.PathLike[str], *, restart_hint: str = "") -> None:
        """Raise :class:`SourceChanged` if the file at ``path`` no longer has this fingerprint."""
        try:
            now = Fingerprint.of(path)
        except UsageError as exc:
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


class ChunkSource:
    """An open file that hands out chunks with their checksums.

    Use as ``async with ChunkSource(path) as source``. Reads go through aiofiles' thread pool,
    one read per chunk straight into a fresh buffer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: AsyncBufferedReader | None = None

    async def __aenter__(self) -> Self:
        try:
            self._file = await aiofiles.open(self.path, "rb", buffering=0)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot open: {exc.strerror}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def read(self, spec: ChunkSpec, *, prefix: int = 0) -> bytearray:
        """Read chunk ``spec`` into a new buffer, after ``prefix`` spare bytes for a header.

        Raises :class:`SourceChanged` if the file is shorter than the chunk says.
        """
        assert self._file is not None, "use ChunkSource as an async context manager"
        buffer = bytearray(prefix + spec.length)
        view = memoryview(buffer)[prefix:]
        await self._file.seek(spec.offset)
        filled = 0
        while filled < spec.length:
            n = await self._file.readinto(view[filled:])
            if not n:
                raise SourceChanged(
                    f"{self.path} is shorter than when its transfer began "
                    f"(chunk {spec.index} ends at {spec.offset + spec.length})"
                )
            filled += n
        return buffer


async def file_checksum(path: str | os.PathLike[str], *, buffer_size: int = HASH_BUFFER) -> str:
    """The xxh3-128 of a whole file, read in large buffers: 32 hex digits."""
    hasher = xxhash.xxh3_128()
    async with aiofiles.open(path, "rb", buffering=0) as f:
        buffer = bytearray(buffer_size)
        view = memoryview(buffer)
        while n := await f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()
