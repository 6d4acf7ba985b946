"""Background clean-up that a server endpoint runs every so often (expiry, retention)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resume.store.jobs import RoundGate

log = logging.getLogger("resume.server")


class Housekeeping:
    """Run ``job`` about four times per ``age`` (between 0.5 s and 60 s apart) while serving.

    Started from the first connection (an event loop is running then), stopped by
    :meth:`stop`. A failure of one round is logged and the next round runs as planned: a full
    disk or a locked store must not end the clean-up for good. With no ``age`` it never runs.
    With a ``gate`` (several nodes on one store), a round runs on one node only
    (:class:`resume.store.jobs.RoundGate`).
    """

    def __init__(
        self,
        job: Callable[[], Awaitable[object]],
        *,
        age: float | None,
        what: str,
        errors: tuple[type[BaseException], ...],
        gate: RoundGate | None = None,
    ) -> None:
        self.job = job
        self.gate = gate
        self.age = age
        self.what = what
        self.errors = errors
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        """Start the rounds if they are not running (and there is an ``age``)."""
        if self._task is None and self.age:
            self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        """Cancel the rounds and wait for the one in progress to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        assert self.age
        interval = max(0.5, min(self.age / 4, 60.0))
        while True:
            try:
                if self.gate is None:
                    await self.job()
                else:
                    await self.gate.run_once(self.what, interval, self.job)
            except self.errors:
                log.exception("%s failed", self.what)
            await asyncio.sleep(interval)
