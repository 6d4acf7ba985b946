"""The one place where database exceptions become `resume` errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from resume.errors import StoreError, StoreFull, StoreLocked


@contextmanager
def store_errors() -> Iterator[None]:
    """Translate SQLAlchemy/driver exceptions raised inside the block into ``StoreError``."""
    try:
        yield
    except OperationalError as exc:
        message = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        if "locked" in message or "busy" in message:
            raise StoreLocked(f"state database is locked by another process: {message}") from exc
        if "disk is full" in message or "No space left" in message:
            raise StoreFull(f"state database cannot write: {message}") from exc
        raise StoreError(f"state database error: {message}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"state database error: {exc}") from exc
