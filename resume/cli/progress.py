"""The upload progress bar: committed bytes, rate and ETA on a terminal; silent otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from resume.cli.format import format_bytes
from resume.net.connector import ConnectionEvent
from resume.transfer.plan import FileJob
from resume.transfer.upload import FileResult


class ProgressReporter:
    """A progress bar of committed bytes, rate and ETA on a terminal; silent otherwise."""

    def __init__(self, console: Console, jobs: list[FileJob], *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.total = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("connecting", total=None)
        self.sizes = {job.path: 0 for job in jobs}

    def __enter__(self) -> ProgressReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        if self.sizes.get(job.path) == 0:
            self.sizes[job.path] = size
            self.total += size
            self.progress.update(self.task, total=self.total, advance=committed)
        self.progress.update(self.task, description=job.name)

    def committed(self, job: FileJob, nbytes: int) -> None:
        self.progress.update(self.task, advance=nbytes)

    def file_done(self, result: FileResult) -> None:
        if self.enabled:
            self.console.print(f"verified {result.job.name} ({format_bytes(result.size)})")

    def connection(self, event: ConnectionEvent) -> None:
        if event.kind == "retrying" and self.enabled:
            self.console.print(f"[yellow]{event.error}; retrying in {event.delay:.1f}s[/]")
