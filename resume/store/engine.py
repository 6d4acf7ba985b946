"""Where the state database lives and how connections to it are configured.

SQLAlchemy is imported only by :func:`make_engine`: finding the database and opening a SQLite
file for the client's records (:mod:`resume.store.sql`) must not pay for it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from resume.errors import UsageError
from resume.store.sql import BUSY_TIMEOUT_MS, enable_wal

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Drivers SQLAlchemy may ask for, and what to install to get them.
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "'psycopg[binary]'",
    "asyncpg": "asyncpg",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "pg8000": "pg8000",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/resume/state.db``, falling back to ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "resume" / "state.db"


def resolve_url(db: str | os.PathLike[str] | None = None) -> str:
    """Turn ``--db`` (a URL or a path), else ``$RESUME_DB``, else the XDG default, into a URL."""
    value = os.fspath(db) if db is not None else os.environ.get("RESUME_DB")
    if not value:
        return f"sqlite:///{default_state_path()}"
    if "://" in value:
        if _plain_sqlite_file(value) is None and value != "sqlite://":
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(value)
            except ArgumentError as exc:
                raise UsageError(f"not a database URL: {value!r}") from exc
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def _plain_sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL without options, else None (parsed without
    SQLAlchemy, which is only needed for the other forms)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or len(url) == len(prefix):
        return None
    rest = url[len(prefix) :]
    return None if rest == ":memory:" else Path(rest)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory and non-SQLite databases."""
    plain = _plain_sqlite_file(url)
    if plain is not None:
        return plain
    if url == "sqlite://" or not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str, *, durable: bool = False, readonly: bool = False) -> Engine:
    """Create an engine with the pragmas the state rules ask for.

    SQLite runs in WAL mode (readers never block the writer), with foreign keys on and a busy
    timeout. ``durable=True`` sets ``synchronous=FULL``: used where a commit is a promise to a
    peer (the server acks only what it has recorded). Otherwise ``NORMAL``: a crash of the
    process loses nothing, a power cut may lose the last commits, which reconciliation with the
    peer repairs. ``readonly=True`` begins transactions without taking the write lock, for
    readers such as ``resume status`` that must not wait behind a running upload.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, connect_args=_connect_args(url))
    except ModuleNotFoundError as exc:
        package = DRIVER_PACKAGES.get((exc.name or "").split(".")[0], exc.name)
        raise UsageError(
            f"cannot use database URL {url!r}: its driver {exc.name!r} is not installed "
            f"(pip install {package})"
        ) from exc
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UsageError(f"cannot use database URL {url!r}: {exc}") from exc
    if make_url(url).get_backend_name() == "sqlite":
        _configure_sqlite(
            engine,
            synchronous="FULL" if durable else "NORMAL",
            begin="BEGIN" if readonly else "BEGIN IMMEDIATE",
        )
    return engine


def _connect_args(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        return {"timeout": BUSY_TIMEOUT_MS / 1000}
    return {}


def _configure_sqlite(engine: Engine, *, synchronous: str, begin: str) -> None:
    from sqlalchemy import event

    # pysqlite's own transaction handling does not BEGIN before DDL and begins lazily, so two
    # processes can race on a migration or fail a read-then-write upgrade with SQLITE_BUSY.
    # Take over: autocommit at the driver level, and an explicit BEGIN IMMEDIATE per
    # transaction (SQLAlchemy's documented recipe, with IMMEDIATE to take the write lock up
    # front, where the busy timeout applies). WAL readers are never blocked by it.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        enable_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: object) -> None:
        connection.exec_driver_sql(begin)  # type: ignore[attr-defined]
