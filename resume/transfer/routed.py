"""Which way into `resume serve` each file takes: WebSocket, or the HTTP bulk path.

`resume serve` takes uploads on one port two ways: ``/upload`` (WebSocket, :mod:`upload`) and
``/files/`` (tus over HTTP, :mod:`tus_client`). Both end in the same receiver, with the same
per-chunk durability and whole-file check. Over plain ``http://`` the client sends bodies
straight from the file with ``sendfile`` and the server reads them straight into its write
buffers, which WebSocket cannot (masking), so large files go faster and cost less CPU that
way. Starting an HTTP upload costs a little more (an ``OPTIONS``, a ``POST``, ~30 ms), so
small files stay on WebSocket.

``via="auto"`` (the default for a ``ws://`` URL) decides per file:

- a transfer an earlier run began (or finished, to be checked) continues the way it began;
- a new file of at least ``http_from`` bytes goes over HTTP if the server verifies whole files
  there (``OPTIONS /files/`` answers ``Want-Repr-Digest: xxh3-128``), the URL is plain
  ``ws://`` (no TLS: over TLS neither end can skip the copies) and no proxy is in the way;
- everything else goes over WebSocket.

Both halves key their transfer locks on the WebSocket server's identity, so two runs sending
the same file exclude each other whichever way each would send it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from resume.errors import Interrupted, ResumeError, UsageError
from resume.net.connector import ConnectOptions
from resume.protocol import tus
from resume.store import Store
from resume.store.states import TransferState
from resume.store.transfers import TransferRecord
from resume.transfer.plan import FileJob, server_identity, upload_url
from resume.transfer.resumption import fingerprint_of
from resume.transfer.source import Fingerprint
from resume.transfer.upload import FileResult, Uploader, UploadOptions, UploadProgress

if TYPE_CHECKING:  # imported when used: httpx is not loaded by runs that never use HTTP
    from resume.transfer.tus_client import TusUploader

Via = Literal["auto", "ws", "http"]
VIAS: tuple[Via, ...] = ("auto", "ws", "http")
# New files from this size go over HTTP. Whole processes on loopback, medians of 5 (ms), WS /
# HTTP: 1 MiB 142 / 175, 4 MiB 161 / 185, 16 MiB 192 / 212, 64 MiB 281 / 285; larger files go
# faster over HTTP (512 MiB 1.46x, 4 GiB 1.61x WebSocket's rate) at half the CPU per byte.
HTTP_FROM = 64 * 2**20
FILES_PATH = "/files/"
PROBE_TIMEOUT = 5.0  # seconds for the OPTIONS that asks whether the server verifies over HTTP

log = logging.getLogger("resume.route")
AnyUploader: TypeAlias = "Uploader | TusUploader | RoutedUploader"

UNFINISHED = (TransferState.PENDING, TransferState.ACTIVE, TransferState.FAILED)


def http_twin(url: str) -> str:
    """The tus creation endpoint of the `resume serve` at ``url`` (``ws://H:P[/base]``):
    ``http://H:P[/base]/files/`` (``wss`` gives ``https``)."""
    base, _ = upload_url(url)
    parts = urlsplit(base)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + FILES_PATH, "", ""))


class RoutedUploader:
    """Uploads files to one `resume serve`, each over WebSocket or HTTP (module docstring).

    The same interface as :class:`~resume.transfer.upload.Uploader`: ``await run(jobs)``
    returns one :class:`FileResult` per job, in order; ``stop()`` asks it to stop.
    """

    def __init__(
        self,
        store: Store,
        url: str,
        options: UploadOptions | None = None,
        *,
        progress: UploadProgress | None = None,
        http_from: int = HTTP_FROM,
    ) -> None:
        from resume.transfer.tus_client import creation_url

        self.store = store
        self.url = url
        self.base_url, _ = upload_url(url)
        self.http_url = creation_url(http_twin(url))
        self.options = options or UploadOptions()
        self.progress = progress
        self.http_from = http_from
        self._stopping = False
        self._current: Uploader | TusUploader | None = None

    def stop(self) -> None:
        """Ask the run to stop (as :meth:`Uploader.stop`)."""
        self._stopping = True
        if self._current is not None:
            self._current.stop()

    async def run(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """Upload every job the way the module docstring says; one result per job, in order."""
        from resume.transfer.tus_client import TusUploader

        server = await asyncio.to_thread(server_identity, self.url)
        earlier = [self._continues(job, server) for job in jobs]
        large = [
            way is None and job.size >= self.http_from
            for way, job in zip(earlier, jobs, strict=True)
        ]
        offered = await verified_http(self.http_url, self.options.connect) if any(large) else None
        ways = [
            way or ("http" if big and offered else "ws")
            for way, big in zip(earlier, large, strict=True)
        ]
        results: dict[int, FileResult] = {}
        for way in ("ws", "http"):
            indexes = [i for i, chosen in enumerate(ways) if chosen == way]
            if not indexes:
                continue
            if self._stopping:
                raise Interrupted("interrupted; resume with the same command")
            uploader: Uploader | TusUploader = (
                Uploader(self.store, self.url, self.options, progress=self.progress)
                if way == "ws"
                else TusUploader(
                    self.store,
                    self.http_url,
                    self.options,
                    progress=self.progress,
                    served_as=self.url,
                    capabilities=offered,  # asked once: not again
                )
            )
            self._current = uploader
            try:
                done = await uploader.run([jobs[i] for i in indexes])
            finally:
                self._current = None
            results.update(zip(indexes, done, strict=True))
        return [results[i] for i in range(len(jobs))]

    def _continues(self, job: FileJob, server: str | None) -> str | None:
        """The way an earlier transfer of ``job`` went, if this run continues or checks it."""
        repo = self.store.transfers
        found = [
            (record, way)
            for record, way in (
                (repo.latest_for(str(job.path), self.base_url, job.name, server=server), "ws"),
                (repo.latest_for(str(job.path), self.http_url, job.name), "http"),
            )
            if record is not None and self._carried_on(record, job)
        ]
        if not found:
            return None
        return max(found, key=lambda pair: pair[0].created_at)[1]

    def _carried_on(self, record: TransferRecord, job: FileJob) -> bool:
        if record.state in UNFINISHED:
            return True  # resumed (or, with --restart, dropped on the server it went to)
        if record.state is not TransferState.COMPLETED or self.options.restart:
            return False
        try:
            return fingerprint_of(record) == Fingerprint.of(job.path)  # checked, not sent
        except ResumeError:
            return False  # unreadable now: whichever way fails it the same


async def verified_http(http_url: str, connect: ConnectOptions) -> tus.Capabilities | None:
    """What the server offers at ``http_url`` if it takes tus uploads there over plain HTTP
    and checks whole files (``Want-Repr-Digest: xxh3-128``); None for TLS, a proxy in the way,
    no answer, or a server that does not (then the files go over WebSocket)."""
    from resume.net.http import HttpClient

    if not http_url.startswith("http://") or connect.use_env_proxy:
        return None
    try:
        async with HttpClient(
            headers=tus.base_headers(connect.token),
            connect_timeout=min(connect.open_timeout, PROBE_TIMEOUT),
            response_timeout=PROBE_TIMEOUT,
            connections=1,
        ) as http:
            response = await http.request("OPTIONS", http_url)
        capabilities = tus.Capabilities.from_headers(response.headers)
    except (ResumeError, tus.TusProtocolError) as exc:
        log.info("%s: no uploads over HTTP (%s); using WebSocket", http_url, exc)
        return None
    if (
        response.is_success
        and capabilities.speaks_1_0
        and capabilities.offers("creation")
        and capabilities.file_digest
    ):
        return capabilities
    log.info("%s: no verified uploads over HTTP; using WebSocket", http_url)
    return None


def make_uploader(
    store: Store,
    url: str,
    options: UploadOptions | None = None,
    *,
    via: Via = "auto",
    parallel: int = 1,
    progress: UploadProgress | None = None,
) -> AnyUploader:
    """The uploader for ``url``: a tus server's ``http(s)://`` URL goes over HTTP; a
    `resume serve` ``ws(s)://`` URL over WebSocket (``via="ws"``), over HTTP to its
    ``/files/`` (``via="http"``), or file by file (``via="auto"``, :class:`RoutedUploader`).
    ``parallel`` (tus concatenation) sends everything over HTTP."""
    check_target(url, via=via, parallel=parallel)
    if tus.is_tus_url(url):
        return _tus_uploader(store, url, options, parallel, progress)
    if via == "http" or parallel != 1:
        return _tus_uploader(store, http_twin(url), options, parallel, progress, served_as=url)
    if via == "ws":
        return Uploader(store, url, options, progress=progress)
    return RoutedUploader(store, url, options, progress=progress)


def check_target(url: str, *, via: Via = "auto", parallel: int = 1) -> None:
    """Raise :class:`UsageError` for a URL, ``via`` or ``parallel`` that cannot go together
    (before anything is read or written)."""
    if via not in VIAS:
        raise UsageError(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    if not 1 <= parallel <= 64:
        raise UsageError(f"--parallel must be between 1 and 64, got {parallel}")
    if tus.is_tus_url(url):
        if via == "ws":
            raise UsageError(f"{url} is an HTTP URL; --via ws needs the ws://HOST:PORT of a server")
        from resume.transfer.tus_client import creation_url

        creation_url(url)
        return
    upload_url(url)
    if via == "ws" and parallel != 1:
        raise UsageError("--parallel sends over HTTP (tus concatenation), not with --via ws")


def _tus_uploader(
    store: Store,
    url: str,
    options: UploadOptions | None,
    parallel: int,
    progress: UploadProgress | None,
    served_as: str | None = None,
) -> TusUploader:
    from resume.transfer.tus_client import TusOptions, TusUploader

    return TusUploader(
        store, url, options, TusOptions(parallel=parallel), progress=progress, served_as=served_as
    )
