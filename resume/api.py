"""One-call entry points: ``await resume.upload(paths, url)``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable

from resume.store import Store, open_store
from resume.transfer.plan import FileJob, Skipped, collect_jobs
from resume.transfer.routed import Via, check_target, make_uploader
from resume.transfer.upload import FileResult, UploadOptions, UploadProgress

PathArg = str | os.PathLike[str]


async def upload(
    paths: PathArg | Iterable[PathArg],
    url: str,
    *,
    name: str | None = None,
    db: PathArg | None = None,
    store: Store | None = None,
    options: UploadOptions | None = None,
    progress: UploadProgress | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    via: Via = "auto",
) -> list[FileResult]:
    """Upload files and directories to the `resume serve` at ``url``; resume any earlier run.

    ``url``: ``ws://HOST:PORT`` of a `resume serve` (``via``: ``"auto"`` sends new files of 64
    MiB or more over its HTTP endpoint when it verifies whole files there, the rest over
    WebSocket; ``"ws"`` or ``"http"`` one way only), or any tus 1.0 server's
    ``http(s)://HOST/files/``.

    ``paths``: one path or several (``str`` or ``os.PathLike``); directories are sent
    recursively under their own name, ``name`` renames a single file. The transfer state is
    kept in ``store``, else in the database ``db`` (default ``$RESUME_DB``, else
    ``$XDG_STATE_HOME/resume/state.db``). ``options`` tunes the run (:class:`UploadOptions`:
    chunk size, window, overwrite, verify, retries); ``progress`` receives events.

    Returns one :class:`FileResult` per file, in order: ``completed``, ``verified`` (already on
    the server) or ``failed`` (``error`` says why; the others went on). Something found inside
    a directory that cannot be sent goes to ``on_skip``; without it, it raises
    :class:`resume.errors.UsageError` before anything is sent, as a path that does not exist
    does. Raises :class:`resume.errors.FatalError` when the run cannot go on, the last
    :class:`resume.errors.RetryableError` when the server stayed unreachable past
    ``options.give_up_after``.
    """
    check_target(url, via=via)
    given = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    jobs: list[FileJob] = collect_jobs(given, name=name, on_skip=on_skip)
    if store is not None:
        return await make_uploader(store, url, options, via=via, progress=progress).run(jobs)
    opened = await asyncio.to_thread(open_store, db)
    try:
        return await make_uploader(opened, url, options, via=via, progress=progress).run(jobs)
    finally:
        opened.close()


__all__ = ["upload"]
