"""A small SQL runner for the client-side repositories, so a quick command starts quickly.

Importing SQLAlchemy costs more than the whole of a small upload (about 0.25 s here), so the
client's transfer records do not go through it when the database is a SQLite file: they use
the standard library's ``sqlite3`` with the same pragmas :mod:`resume.store.engine` sets.
Other databases (PostgreSQL) run the very same SQL text through a SQLAlchemy engine. Either
way a repository writes its statements once, as portable SQL with ``:name`` parameters.

Database exceptions become :mod:`resume.errors` here (the SQL text never reaches a user).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from resume.errors import StoreError, StoreLocked

if TYPE_CHECKING:
    from sqlalchemy import Engine

BUSY_TIMEOUT_MS = 10_000
Row = dict[str, Any]


class Transaction(Protocol):
    """What a repository does inside one transaction."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int: ...

    def run_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...


class Database(Protocol):
    """Where repositories run their SQL: one transaction per ``with db.transaction()``."""

    def transaction(self) -> Any: ...

    def close(self) -> None: ...


def to_datetime(value: Any) -> dt.datetime:
    """A timestamp column as a naive UTC datetime, whichever way the driver returned it."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's SQLite DateTime format: the rows stay readable by either path.
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _sqlite_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _sqlite_value(v) for k, v in (params or {}).items()}


class _SqliteTransaction:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        self.cursor.execute(sql, _sqlite_params(params))
        names = [d[0] for d in self.cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in self.cursor.fetchall()]

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        self.cursor.execute(sql, _sqlite_params(params))
        return self.cursor.rowcount

    def run_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        self.cursor.executemany(sql, [_sqlite_params(p) for p in params])


class SqliteDatabase:
    """One ``sqlite3`` connection (WAL, foreign keys, busy timeout), shared under a lock.

    ``durable`` sets ``synchronous=FULL`` instead of ``NORMAL``; ``readonly`` begins
    transactions without taking the write lock (``BEGIN`` instead of ``BEGIN IMMEDIATE``).
    """

    def __init__(self, path: Path, *, durable: bool = False, readonly: bool = False) -> None:
        self.path = path
        self._begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite_errors():
            self._conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                enable_wal(self._conn)
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            except BaseException:
                self._conn.close()
                raise

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTransaction]:
        with self._lock, sqlite_errors():
            cursor = self._conn.cursor()
            cursor.execute(self._begin)
            try:
                yield _SqliteTransaction(cursor)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")
            finally:
                cursor.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _EngineTransaction:
    def __init__(self, conn: Any) -> None:
        from sqlalchemy import text

        self.conn = conn
        self.text = text

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        result = self.conn.execute(self.text(sql), dict(params or {}))
        return [dict(row._mapping) for row in result]

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return int(self.conn.execute(self.text(sql), dict(params or {})).rowcount)

    def run_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        if params:
            self.conn.execute(self.text(sql), [dict(p) for p in params])


class EngineDatabase:
    """The same SQL through a SQLAlchemy engine: any database SQLAlchemy has a driver for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[_EngineTransaction]:
        from resume.store.errors import store_errors

        with store_errors(), self.engine.begin() as conn:
            yield _EngineTransaction(conn)

    def close(self) -> None:
        pass  # the engine belongs to the Store


@contextmanager
def sqlite_errors() -> Iterator[None]:
    """Translate ``sqlite3`` exceptions raised inside the block into ``StoreError``."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreLocked(f"state database is locked by another process: {exc}") from exc
        raise StoreError(f"state database error: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"state database error: {exc}") from exc


def enable_wal(conn: sqlite3.Connection | sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Switching a new database to WAL takes an exclusive lock, and SQLite answers "database is
    locked" at once (without its busy handler) when another connection is opening it too.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
