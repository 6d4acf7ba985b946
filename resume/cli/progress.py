"""What ``resume upload`` tells the user while it runs.

On a terminal, one live line, numbers first so they stay visible at 80 columns (the name is
shortened instead)::

    file 3/34  45%  1.2 GiB/2.6 GiB  98.1 MiB/s  ETA 0:15  photos/2024/IMG_0042.jpg

The total comes from a stat of every file before the first byte is sent. Whatever the output
is, these lines go to stderr: retry warnings, each file that failed or was skipped, "resuming
NAME at 45%", "NAME: already on the server (verified)", and a closing summary. Sizes use one
unit system (binary: KiB, MiB, GiB).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from resume.cli.format import format_bytes
from resume.net.connector import ConnectionEvent
from resume.transfer.plan import FileJob, Skipped
from resume.transfer.upload import FileResult

REDRAW_EVERY = 0.1  # seconds between two redraws of the live line


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its start replaced by '…' if needed."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :]


def format_eta(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressReporter:
    """Progress of an upload run on ``stream`` (stderr): a live line only when ``live``."""

    def __init__(
        self,
        stream: TextIO,
        jobs: list[FileJob],
        *,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.live = live
        self.clock = clock
        self.jobs = jobs
        self.total = sum(job.size for job in jobs)
        self.done = 0  # bytes durable on the server (earlier runs included)
        self.sent_now = 0  # bytes made durable by this run: what the rate is made of
        self.counted: dict[str, int] = {}  # job name -> bytes of it counted in ``done``
        self.index = {job.name: n for n, job in enumerate(jobs, 1)}
        self.current: FileJob | None = None
        self.started: float | None = None
        self.results: list[FileResult] = []
        self.skipped: list[Skipped] = []
        self._resumed: set[str] = set()
        self._drawn = False
        self._last_draw = 0.0

    # -- the UploadProgress protocol -------------------------------------------------------------

    def file_started(self, job: FileJob, size: int, committed: int) -> None:
        if self.started is None:
            self.started = self._now()
        self._count(job, committed, absolute=True)
        if size and committed and job.name not in self._resumed:
            self._resumed.add(job.name)
            self.line(f"resuming {job.name} at {100 * committed // size}%")
        self.current = job
        self._draw(force=True)

    def committed(self, job: FileJob, nbytes: int) -> None:
        self._count(job, nbytes)
        self.sent_now += nbytes
        self._draw()

    def file_done(self, result: FileResult) -> None:
        self.results.append(result)
        job = result.job
        if result.state == "failed":
            self._count(job, job.size, absolute=True)  # nothing more will come of it
            self.line(f"resume: {result.error}")
        elif result.state == "verified":
            self._count(job, result.size, absolute=True)
            # No whole-file checksum (tus): the server could only confirm the length.
            how = "verified" if result.checksum is not None else "length confirmed"
            self.line(f"{job.name}: already on the server ({how})")
        else:
            self._count(job, result.size, absolute=True)
            if self.live:
                word = "verified" if result.checksum is not None else "uploaded"
                size = f" ({format_bytes(result.size)})"
                room = self._width() - 2 - len(word) - len(size)
                self.line(f"{word} {shorten(job.name, max(room, 8))}{size}")
        self._draw(force=True)

    def connection(self, event: ConnectionEvent) -> None:
        # Always, terminal or not: a run waiting for a server must not be silent.
        if event.kind == "retrying" and event.delay is not None:
            self.line(f"resume: warning: {event.error}; retrying in {event.delay:.1f}s")
        elif event.kind == "connected" and event.attempt:
            self.line("resume: connected again")

    def notice(self, message: str) -> None:
        self.line(f"resume: warning: {message}")

    # -- more for the CLI ------------------------------------------------------------------------

    def skip(self, skipped: Skipped) -> None:
        """A path that cannot be sent was found while collecting the files."""
        self.skipped.append(skipped)
        self.line(f"resume: skipped {skipped}")

    def line(self, text: str) -> None:
        """Print one line, keeping the live line below it."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        self._draw(force=True)

    def summary(self, elapsed: float) -> str:
        """One line about the whole run."""
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.state] = counts.get(result.state, 0) + 1
        unchecked = sum(r.state == "completed" and r.checksum is None for r in self.results)
        parts = [f"{counts.get('completed', 0) - unchecked} sent and verified"]
        if unchecked:  # tus: no whole-file checksum is verified by the server
            parts.append(f"{unchecked} sent without a whole-file check")
        if counts.get("verified"):
            parts.append(f"{counts['verified']} already on the server")
        failed = counts.get("failed", 0) + len(self.skipped)
        if failed:
            parts.append(f"{failed} not sent")
        sent = sum(r.bytes_sent for r in self.results)
        rate = f" ({format_bytes(sent / elapsed)}/s)" if sent and elapsed > 0 else ""
        files = len(self.jobs) + len(self.skipped)
        return (
            f"{files} file(s): {', '.join(parts)}; {format_bytes(sent)} sent in "
            f"{elapsed:.1f}s{rate}"
        )

    def close(self) -> None:
        """Remove the live line."""
        self._clear()
        self.stream.flush()

    # -- drawing ---------------------------------------------------------------------------------

    def _count(self, job: FileJob, nbytes: int, *, absolute: bool = False) -> None:
        before = self.counted.get(job.name, 0)
        after = max(before, nbytes) if absolute else before + nbytes
        if job.size:
            after = min(after, job.size)
        self.counted[job.name] = after
        self.done += after - before

    def status_line(self, width: int) -> str:
        """The live line for a terminal ``width`` columns wide."""
        job = self.current
        number = self.index.get(job.name, 0) if job else 0
        total = max(self.total, 1)
        percent = min(100, 100 * self.done // total)
        fields = [
            f"file {number}/{len(self.jobs)}",
            f"{percent:3d}%",
            f"{format_bytes(self.done)}/{format_bytes(self.total)}",
        ]
        elapsed = self._now() - self.started if self.started is not None else 0.0
        if self.sent_now and elapsed > 0.5:
            rate = self.sent_now / elapsed
            fields.append(f"{format_bytes(rate)}/s")
            fields.append(f"ETA {format_eta(max(0, self.total - self.done) / rate)}")
        text = "  ".join(fields)
        room = width - 1 - len(text) - 2  # never the last column: no wrap on any terminal
        if job is not None and room >= 4:
            text += "  " + shorten(job.name, room)
        return text[: width - 1]

    def _draw(self, *, force: bool = False) -> None:
        if not self.live:
            return
        now = self._now()
        if not force and now - self._last_draw < REDRAW_EVERY:
            return
        self._last_draw = now
        self.stream.write("\r\033[K" + self.status_line(self._width()))
        self.stream.flush()
        self._drawn = True

    @staticmethod
    def _width() -> int:
        return shutil.get_terminal_size((80, 24)).columns

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def _now(self) -> float:
        return self.clock()
