"""SQL helpers the repositories share: driver-level statements, timestamps, upserts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, DateTime, Table, update
from sqlalchemy.engine import Compiled, CursorResult
from sqlalchemy.sql import Executable

EPOCH = dt.datetime(1970, 1, 1)


def unix_time(timestamp: dt.datetime) -> float:
    """A naive-UTC timestamp column as Unix time."""
    return (timestamp - EPOCH).total_seconds()


class DriverStatement:
    """A statement compiled once per dialect and handed to the driver as it is.

    SQLAlchemy's per-row parameter processing was half the cost of storing a batch of log rows
    (and most of a cursor write). Here rows are plain dicts turned into the dialect's parameter
    form, and values that need conversion (timestamps) are converted once by the caller with
    :func:`driver_time`, so the SQL stays dialect-neutral.
    """

    def __init__(self, build: Callable[[], Executable]) -> None:
        self.build = build
        self.compiled: dict[str, Compiled] = {}

    def execute(self, conn: Connection, rows: list[dict[str, Any]]) -> CursorResult[Any]:
        """Run for one row (execute) or many (executemany)."""
        dialect = conn.dialect
        compiled = self.compiled.get(dialect.name)
        if compiled is None:
            compiled = self.compiled.setdefault(dialect.name, self.build().compile(dialect=dialect))
        if compiled.positional:
            names = compiled.positiontup or ()
            params: list[Any] = [tuple(row[name] for name in names) for row in rows]
        else:
            params = rows
        return conn.exec_driver_sql(str(compiled), params[0] if len(params) == 1 else params)


def driver_time(conn: Connection, now: dt.datetime) -> Any:
    """``now`` as the driver takes a timestamp column's value on this connection's dialect."""
    convert = DateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return convert(now) if convert else now


def upsert(conn: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Update the row with primary key ``key``, or insert it (dialect-neutral, in one txn)."""
    where = [table.c[name] == value for name, value in key.items()]
    if not conn.execute(update(table).where(*where).values(**values)).rowcount:
        conn.execute(table.insert().values(**key, **values))
