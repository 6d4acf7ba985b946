"""The server's root directory, walked without ever following a symlink.

Every name a client gives is resolved component by component from a descriptor of the root,
each directory opened with ``O_NOFOLLOW``: a symlink anywhere in the path (``ROOT/shared ->
.resume``, ``ROOT/cur -> .``) is refused instead of followed, so no name can reach outside
the root or into the server's own ``.resume/``. The final rename or link happens relative to
the directory descriptor that was checked, so swapping a parent for a symlink afterwards
changes nothing.

Blocking calls: run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from resume.crashpoints import crash_point
from resume.protocol.receive import Destination, Occupant

STATE_DIR = ".resume"
PATH_MAX = 4096
READ_BUFFER = 8 * 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DestinationRefused(Exception):
    """The destination cannot take the file (a file appeared there, a parent is not a dir)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Identity:
    """What tells one published file from another: inode, mtime and size."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


def fsync_dir(fd: int) -> None:
    """Make a directory's entries durable (created, renamed or removed names)."""
    os.fsync(fd)


class ServerRoot:
    """The directory that receives files, and its hidden state directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.realpath(path))
        self.state_dir = self.path / STATE_DIR
        self.partial_dir = self.state_dir / "partial"

    def prepare(self) -> None:
        """Create the state and partial directories (durably); refuse a symlinked ``.resume``."""
        for directory in (self.state_dir, self.partial_dir):
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                try:
                    os.mkdir(directory, 0o700)
                except FileExistsError:  # another node on this root made it meanwhile
                    st = os.lstat(directory)
                else:
                    self._fsync_path(directory.parent)
                    continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(
                    errno.ENOTDIR, f"{directory} is not a directory (a symlink?)"
                )

    def partial_path(self, file_id: str) -> Path:
        return self.partial_dir / f"{file_id}.part"

    # -- looking ---------------------------------------------------------------------------

    def inspect(self, name: str) -> Destination:
        """What is at ``name`` now, found without following symlinks."""
        if len(os.fsencode(str(self.path / name))) >= PATH_MAX:
            return Destination(
                Occupant.NOTHING, f"the path is longer than the server's limit ({PATH_MAX} bytes)"
            )
        *parents, leaf = name.split("/")
        try:
            with self._walk(parents, create=False) as directory:
                if directory is None:
                    return Destination(Occupant.NOTHING)
                return Destination(_occupant(leaf, directory))
        except DestinationRefused as refused:
            return Destination(Occupant.NOTHING, str(refused))

    def identity(self, name: str) -> Identity | None:
        """The identity of the regular file at ``name``, or None if there is none."""
        *parents, leaf = name.split("/")
        try:
            with self._walk(parents, create=False) as directory:
                if directory is None:
                    return None
                st = os.stat(leaf, dir_fd=directory, follow_symlinks=False)
        except (DestinationRefused, FileNotFoundError, NotADirectoryError):
            return None
        return Identity.of(st) if stat.S_ISREG(st.st_mode) else None

    def checksum(self, name: str) -> str | None:
        """xxh3-128 of the regular file at ``name``; None if there is none."""
        fd = self.open_read(name)
        if fd is None:
            return None
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def open_read(self, name: str) -> int | None:
        """A read-only descriptor of the regular file at ``name`` (no symlink followed), or
        None if there is none. The caller closes it."""
        *parents, leaf = name.split("/")
        try:
            with self._walk(parents, create=False) as directory:
                if directory is None:
                    return None
                fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except (DestinationRefused, OSError):
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def is_same_file(self, name: str, path: Path) -> bool:
        """Whether ``name`` and ``path`` are one file (two links to one inode)."""
        identity = self.identity(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        return identity is not None and identity.inode == st.st_ino

    # -- publishing ------------------------------------------------------------------------

    def publish(self, partial: Path, name: str, *, overwrite: bool) -> Identity:
        """Put the verified ``partial`` under ``name`` atomically; every step durable.

        Without ``overwrite`` the partial is hard-linked under the name (which fails if
        anything is there, even a file created a moment ago) and then unlinked; with it, it is
        renamed over the old file, which stays whole until that instant. Missing parent
        directories are created, and they and the final directory are fsynced.
        """
        *parents, leaf = name.split("/")
        os.chmod(partial, 0o644)
        with self._walk(parents, create=True) as directory:
            assert directory is not None
            occupant = _occupant(leaf, directory)
            if occupant is Occupant.DIRECTORY:
                raise DestinationRefused("bad_name", "an existing directory has that name")
            if occupant is Occupant.OTHER:
                raise DestinationRefused("bad_name", "a symlink or special file has that name")
            if overwrite:
                os.replace(partial, leaf, dst_dir_fd=directory)
            else:
                try:
                    os.link(partial, leaf, dst_dir_fd=directory, follow_symlinks=False)
                except FileExistsError:
                    raise DestinationRefused(
                        "exists", "a file with that name exists; pass --overwrite to replace it"
                    ) from None
                fsync_dir(directory)
                crash_point("publish.linked")
                os.unlink(partial)
            fsync_dir(directory)
            self._fsync_path(partial.parent)
            crash_point("publish.renamed")
            return Identity.of(os.stat(leaf, dir_fd=directory, follow_symlinks=False))

    def unlink_partial_link(self, partial: Path) -> None:
        """Remove the partial's name after a crash left it linked under the final name too."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        self._fsync_path(partial.parent)

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _walk(self, parents: list[str], *, create: bool) -> Iterator[int | None]:
        """A descriptor of the directory ``parents`` under the root (None if it is missing).

        Refuses a component that is a symlink or not a directory. With ``create``, missing
        directories are made, and each new one and its parent are fsynced.
        """
        fd = os.open(self.path, DIR_FLAGS)
        try:
            for depth, part in enumerate(parents):
                shown = "/".join(parents[: depth + 1])
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        fd = -1
                        yield None
                        return
                    os.mkdir(part, 0o755, dir_fd=fd)
                    fsync_dir(fd)
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise DestinationRefused("bad_name", f"{shown} is a symlink (not followed)")
                if not stat.S_ISDIR(st.st_mode):
                    raise DestinationRefused("bad_name", f"{shown} is a file, not a directory")
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _fsync_path(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fsync_dir(fd)
        finally:
            os.close(fd)


def _occupant(leaf: str, directory: int) -> Occupant:
    try:
        st = os.stat(leaf, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return Occupant.NOTHING
    if stat.S_ISREG(st.st_mode):
        return Occupant.FILE
    if stat.S_ISDIR(st.st_mode):
        return Occupant.DIRECTORY
    return Occupant.OTHER


def hash_fd(fd: int, size: int | None = None) -> str:
    """xxh3-128 of an open file's bytes (``size`` of them, or to its end)."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    offset = 0
    while size is None or offset < size:
        want = READ_BUFFER if size is None else min(READ_BUFFER, size - offset)
        n = os.preadv(fd, [view[:want]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return hasher.hexdigest()
