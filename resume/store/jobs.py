"""Housekeeping rounds that run once across the server nodes sharing a store.

Each node keeps its own timer; before a round, :meth:`RoundGate.run_once` takes the job's
advisory lock (PostgreSQL; a node that cannot get it skips the round: another node is running
it) and then claims the round in ``server_jobs`` with a compare-and-set on ``last_run``: only
the first node whose timer fires in each interval runs the job. With one node (SQLite) the
lock is a no-op and the claim always succeeds at the node's own pace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError

from resume.errors import StoreError
from resume.store.errors import store_errors
from resume.store.models import ServerJob
from resume.store.shared import db_now, session_lock

JOBS = ServerJob.__table__


class RoundGate:
    """Lets one node at a time, and one per interval, run each named job."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node

    def claim_round(self, name: str, every: float) -> bool:
        """Whether this node runs job ``name`` now (nobody ran it in the last ``every`` s)."""
        with store_errors(), self.engine.begin() as conn:
            now = db_now(conn)
            # a little slack: two timers of the same period must not skip every other round
            due = now - dt.timedelta(seconds=every * 0.8)
            result = conn.execute(
                update(JOBS)
                .where(JOBS.c.name == name, or_(JOBS.c.last_run.is_(None), JOBS.c.last_run <= due))
                .values(last_run=now, node=self.node)
            )
            if result.rowcount == 1:
                return True
            if conn.execute(JOBS.select().where(JOBS.c.name == name)).first() is not None:
                return False
        try:
            with store_errors(), self.engine.begin() as conn:
                conn.execute(JOBS.insert().values(name=name, node=self.node, last_run=db_now(conn)))
        except StoreError as exc:  # a node inserted it at the same moment: it runs this round
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    async def run_once(self, name: str, every: float, job: Callable[[], Awaitable[object]]) -> bool:
        """Run ``job`` if this node gets the round; returns whether it ran."""
        lock = session_lock(self.engine, f"housekeeping:{name}")
        got = await asyncio.to_thread(lock.__enter__)
        try:
            if not got or not await asyncio.to_thread(self.claim_round, name, every):
                return False
            await job()
            return True
        finally:
            await asyncio.to_thread(lock.__exit__, None, None, None)
