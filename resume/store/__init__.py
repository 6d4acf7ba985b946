"""The state store: SQLAlchemy models, migrations and repositories over one database.

Open it with :func:`open_store`; it is migrated to the newest schema on open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine

from resume.store import migrate
from resume.store.engine import make_engine, resolve_url, sqlite_path
from resume.store.errors import store_errors
from resume.store.received import ReceivedRepository
from resume.store.stream_client import StreamClientRepository
from resume.store.stream_log import StreamLogRepository
from resume.store.transfers import TransferRepository


@dataclass
class Store:
    """An open state database and the repositories over it."""

    url: str
    engine: Engine
    transfers: TransferRepository
    received: ReceivedRepository
    streams: StreamLogRepository
    stream_client: StreamClientRepository

    def close(self) -> None:
        """Release every connection."""
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
    ``$XDG_STATE_HOME/resume/state.db``. See :func:`resume.store.engine.make_engine` for
    ``durable`` and ``readonly``.
    """
    url = resolve_url(db)
    engine = make_engine(url, durable=durable, readonly=readonly)
    try:
        with store_errors():
            migrate.upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(
        url=url,
        engine=engine,
        transfers=TransferRepository(engine),
        received=ReceivedRepository(engine),
        streams=StreamLogRepository(engine),
        stream_client=StreamClientRepository(engine),
    )


def store_exists(db: str | os.PathLike[str] | None = None) -> bool:
    """False only for a SQLite file that does not exist yet (other databases: True)."""
    path = sqlite_path(resolve_url(db))
    return path is None or path.exists()


__all__ = ["Store", "open_store", "resolve_url", "store_exists"]
