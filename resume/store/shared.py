"""What several server nodes sharing one database need from it, in one place.

On PostgreSQL the nodes coordinate through the database itself: transaction-scoped advisory
locks (one migration at a time, one append per channel at a time), session advisory locks
(one housekeeping round at a time), and the database's clock for leases, so nodes whose clocks
disagree still agree on when a lease lapses. On SQLite there is only ever one node (the root
lock, :mod:`resume.rootlock`): the locks are no-ops there, and the clock is this machine's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import xxhash
from sqlalchemy import Connection, Engine, text

from resume.store.models import utcnow


def is_postgresql(bind: Connection | Engine) -> bool:
    """Whether ``bind`` talks to PostgreSQL (where several nodes may share the store)."""
    return bind.dialect.name == "postgresql"


def lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (stable across processes and nodes)."""
    return xxhash.xxh3_64_intdigest(name.encode()) - 2**63


def xact_lock(conn: Connection, name: str) -> None:
    """Hold the lock ``name`` until this transaction ends (PostgreSQL; a no-op elsewhere)."""
    if is_postgresql(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})


def db_now(conn: Connection) -> dt.datetime:
    """The database's current time as naive UTC (PostgreSQL's clock; here, this machine's).

    Leases are written and compared with this clock, so nodes never compare two clocks.
    """
    if is_postgresql(conn):
        value = conn.execute(text("SELECT (clock_timestamp() AT TIME ZONE 'UTC')")).scalar()
        assert isinstance(value, dt.datetime)
        return value
    return utcnow()


@contextmanager
def session_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Try to take the lock ``name`` for the block; yields whether this node got it.

    PostgreSQL: a session advisory lock on a connection held for the block (released at its
    end, or by the server when this node dies). Elsewhere: always True (one node).
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
