"""Turning `resume upload PATH... URL` into a list of files with their remote names."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from resume.errors import UsageError
from resume.protocol.upload import remote_name_problem

UPLOAD_PATH = "/upload"


@dataclass(frozen=True, slots=True)
class FileJob:
    """One local file and the name it gets under the server's root.

    ``size`` is what a stat said when the job was collected (for the progress total); the
    transfer itself fingerprints the file again when it opens it.
    """

    path: Path  # absolute
    name: str
    size: int = 0


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path that cannot be sent, and why (``resume upload`` reports it and goes on)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def upload_url(url: str) -> tuple[str, str]:
    """``(base, endpoint)`` for a server URL such as ``ws://127.0.0.1:8765``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(
            f"not a server URL: {url!r} (expected ws://HOST:PORT, or http(s)://HOST/files/ for tus)"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UsageError(f"not a server URL: {url!r} ({exc})") from exc
    path = parts.path.rstrip("/")
    if path.endswith(UPLOAD_PATH):
        path = path[: -len(UPLOAD_PATH)]
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return base, base + UPLOAD_PATH


def server_identity(url: str) -> str | None:
    """The server behind ``url`` as ``scheme://resolved-host:port/path``, or None.

    Spellings of one server are one server: ``ws://localhost:P``, ``ws://127.0.0.1:P/`` and
    ``ws://127.0.0.1:P/upload`` all give ``ws://127.0.0.1:P``. The host is resolved (the
    smallest IPv4 address, else the smallest IPv6 one, so the answer does not depend on the
    resolver's order); None when it cannot be resolved right now.
    """
    base, _ = upload_url(url)
    parts = urlsplit(base)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    addresses = {str(info[4][0]) for info in infos}
    v4 = sorted(a for a in addresses if ":" not in a)
    v6 = sorted(a for a in addresses if ":" in a)
    if not (v4 or v6):
        return None
    address = v4[0] if v4 else f"[{v6[0]}]"
    return f"{parts.scheme}://{address}:{port}{parts.path}"


PathArg = str | os.PathLike[str]


def collect_jobs(
    paths: Iterable[PathArg],
    *,
    name: str | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
) -> list[FileJob]:
    """Files to send: each file as itself, each directory recursively under its own name.

    Symlinks to directories are not followed (no loops, nothing outside what was named).
    Paths given that do not exist, and names that clash, raise :class:`UsageError`. What is
    found but cannot be sent (an unreadable directory, a special file, a name the server
    would refuse) goes to ``on_skip`` and the walk goes on; without ``on_skip`` the first
    one raises :class:`UsageError`.
    """
    given_paths = [Path(os.fspath(p)) for p in paths]
    if not given_paths:
        raise UsageError("nothing to upload: give at least one PATH")

    def skip(path: Path, reason: str) -> None:
        if on_skip is None:
            raise UsageError(f"{path}: {reason}")
        on_skip(Skipped(path, reason))

    jobs: list[FileJob] = []
    for given in given_paths:
        path = given.expanduser()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UsageError(f"{given}: no such file or directory") from None
        except OSError as exc:
            skip(path, f"cannot read: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            jobs.extend(_walk(path, skip))
        elif stat.S_ISREG(st.st_mode):
            jobs.append(FileJob(path.absolute(), path.name, st.st_size))
        else:
            skip(path, "not a regular file or directory")
    if name is not None:
        if len(jobs) != 1 or given_paths[0].is_dir():
            raise UsageError("--name works with exactly one file")
        problem = remote_name_problem(name)
        if problem:
            raise UsageError(f"{jobs[0].path}: cannot be sent as {name!r}: {problem}")
        jobs = [FileJob(jobs[0].path, name, jobs[0].size)]
    sendable: list[FileJob] = []
    names: dict[str, Path] = {}
    for job in jobs:
        problem = remote_name_problem(job.name)
        if problem:
            skip(job.path, f"cannot be sent as {job.name!r}: {problem}")
            continue
        if job.name in names:
            raise UsageError(f"{names[job.name]} and {job.path} would both be named {job.name!r}")
        names[job.name] = job.path
        sendable.append(job)
    return sendable


def _walk(top: Path, skip: Callable[[Path, str], None]) -> list[FileJob]:
    """The regular files under directory ``top``, named ``top's name/relative path``."""
    base = top.resolve().name or "root"
    jobs: list[FileJob] = []

    def on_error(exc: OSError) -> None:
        skip(Path(exc.filename or top), f"cannot read directory: {exc.strerror}")

    for directory, subdirs, files in os.walk(top, onerror=on_error):
        subdirs.sort()
        for filename in sorted(files):
            full = Path(directory) / filename
            try:
                st = full.lstat()
            except OSError as exc:
                skip(full, f"cannot read: {exc.strerror}")
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    st = full.stat()
                except OSError as exc:
                    skip(full, f"cannot read: {exc.strerror}")
                    continue
            if not stat.S_ISREG(st.st_mode):
                skip(full, "not a regular file")
                continue
            relative = full.relative_to(top).as_posix()
            jobs.append(FileJob(full.absolute(), f"{base}/{relative}", st.st_size))
    return jobs
