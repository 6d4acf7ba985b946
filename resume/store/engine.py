"""Where the state database lives and how connections to it are configured."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from resume.errors import UsageError

BUSY_TIMEOUT_MS = 10_000


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
        try:
            make_url(value)
        except ArgumentError as exc:
            raise UsageError(f"not a database URL: {value!r}") from exc
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory and non-SQLite databases."""
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
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, connect_args=_connect_args(url))
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
    if make_url(url).get_backend_name() == "sqlite":
        return {"timeout": BUSY_TIMEOUT_MS / 1000}
    return {}


def _configure_sqlite(engine: Engine, *, synchronous: str, begin: str) -> None:
    # pysqlite's own transaction handling does not BEGIN before DDL and begins lazily, so two
    # processes can race on a migration or fail a read-then-write upgrade with SQLITE_BUSY.
    # Take over: autocommit at the driver level, and an explicit BEGIN IMMEDIATE per
    # transaction (SQLAlchemy's documented recipe, with IMMEDIATE to take the write lock up
    # front, where the busy timeout applies). WAL readers are never blocked by it.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: object) -> None:
        connection.exec_driver_sql(begin)  # type: ignore[attr-defined]


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Switching a new database to WAL takes an exclusive lock, and SQLite answers "database is
    locked" at once (without its busy handler) when another connection is opening it too.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
