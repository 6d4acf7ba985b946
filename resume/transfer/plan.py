"""Turning `resume upload PATH... URL` into a list of files with their remote names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from resume.errors import UsageError
from resume.protocol.upload import remote_name_problem

UPLOAD_PATH = "/upload"


@dataclass(frozen=True, slots=True)
class FileJob:
    """One local file and the name it gets under the server's root."""

    path: Path  # absolute
    name: str


def upload_url(url: str) -> tuple[str, str]:
    """``(base, endpoint)`` for a server URL such as ``ws://127.0.0.1:8765``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(
            f"not a server URL: {url!r} (expected ws://HOST:PORT, or http(s)://HOST/files/ for tus)"
        )
    path = parts.path.rstrip("/")
    if path.endswith(UPLOAD_PATH):
        path = path[: -len(UPLOAD_PATH)]
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return base, base + UPLOAD_PATH


def collect_jobs(paths: list[Path], *, name: str | None = None) -> list[FileJob]:
    """Files to send: each file as itself, each directory recursively under its own name.

    Symlinks to directories are not followed (no loops, nothing outside what was named);
    anything that is not a regular file is skipped.
    """
    if not paths:
        raise UsageError("nothing to upload: give at least one PATH")
    jobs: list[FileJob] = []
    for given in paths:
        path = given.expanduser()
        if not path.exists():
            raise UsageError(f"{given}: no such file or directory")
        if path.is_dir():
            base = path.resolve().name or "root"
            for directory, subdirs, files in os.walk(path):
                subdirs.sort()
                for filename in sorted(files):
                    full = Path(directory) / filename
                    if full.is_file():
                        relative = full.relative_to(path).as_posix()
                        jobs.append(FileJob(full.absolute(), f"{base}/{relative}"))
        elif path.is_file():
            jobs.append(FileJob(path.absolute(), path.name))
        else:
            raise UsageError(f"{given}: not a regular file or directory")
    if name is not None:
        if len(jobs) != 1 or paths[0].is_dir():
            raise UsageError("--name works with exactly one file")
        jobs = [FileJob(jobs[0].path, name)]
    names: dict[str, Path] = {}
    for job in jobs:
        problem = remote_name_problem(job.name)
        if problem:
            raise UsageError(f"{job.path}: cannot be sent as {job.name!r}: {problem}")
        if job.name in names:
            raise UsageError(f"{names[job.name]} and {job.path} would both be named {job.name!r}")
        names[job.name] = job.path
    return jobs
