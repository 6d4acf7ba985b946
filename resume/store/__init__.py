"""The state store: SQLAlchemy models, migrations and repositories over one database.

Open it with :func:`open_store`; it is migrated to the newest schema on open.

The client's transfer records (:attr:`Store.transfers`) on a SQLite file go through the
standard library's ``sqlite3``; SQLAlchemy is imported only when something else is used
(the server's and the stream client's repositories, :attr:`Store.engine`, a migration, a
non-SQLite database). That keeps ``resume upload`` of a small file quick.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING

from resume.store.engine import resolve_url, sqlite_path
from resume.store.sql import Database, EngineDatabase, SqliteDatabase
from resume.store.transfers import TransferRepository

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from resume.store.received import ReceivedRepository
    from resume.store.stream_client import StreamClientRepository
    from resume.store.stream_log import StreamLogRepository


class Store:
    """An open state database and the repositories over it."""

    def __init__(
        self, url: str, db: Database, *, durable: bool = False, readonly: bool = False
    ) -> None:
        self.url = url
        self.db = db
        self.durable = durable
        self.readonly = readonly
        self.transfers = TransferRepository(db)

    @cached_property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (created on first use)."""
        if isinstance(self.db, EngineDatabase):
            return self.db.engine
        from resume.store.engine import make_engine

        return make_engine(self.url, durable=self.durable, readonly=self.readonly)

    @cached_property
    def received(self) -> ReceivedRepository:
        """The server's records of incoming files."""
        from resume.store.received import ReceivedRepository

        return ReceivedRepository(self.engine)

    @cached_property
    def streams(self) -> StreamLogRepository:
        """The server's stream logs."""
        from resume.store.stream_log import StreamLogRepository

        return StreamLogRepository(self.engine)

    @cached_property
    def stream_client(self) -> StreamClientRepository:
        """The stream client's outboxes and consumer positions."""
        from resume.store.stream_client import StreamClientRepository

        return StreamClientRepository(self.engine)

    def close(self) -> None:
        """Release every connection."""
        self.db.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    db: str | os.PathLike[str] | None = None, *, durable: bool = False, readonly: bool = False
) -> Store:
    """Open (creating and migrating as needed) the state database.

    ``db`` is a SQLAlchemy URL or a file path; by default ``$RESUME_DB``, else
    ``$XDG_STATE_HOME/resume/state.db``. ``durable`` (``synchronous=FULL``) is for a store
    whose commits are promises to a peer; ``readonly`` readers never wait for the write lock
    (see :func:`resume.store.engine.make_engine`).
    """
    from resume.store import migrate

    url = resolve_url(db)
    path = sqlite_path(url)
    database: Database
    if path is not None:
        database = SqliteDatabase(path, durable=durable, readonly=readonly)
    else:
        from resume.store.engine import make_engine

        database = EngineDatabase(make_engine(url, durable=durable, readonly=readonly))
    store = Store(url, database, durable=durable, readonly=readonly)
    try:
        migrate.ensure_head(store)
    except BaseException:
        store.close()
        raise
    return store


def store_exists(db: str | os.PathLike[str] | None = None) -> bool:
    """False only for a SQLite file that does not exist yet (other databases: True)."""
    path = sqlite_path(resolve_url(db))
    return path is None or path.exists()


__all__ = ["Store", "open_store", "resolve_url", "store_exists"]
