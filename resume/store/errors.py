"""The one place where SQLAlchemy's exceptions become `resume` errors.

Only the driver's own message goes into the error: never the SQL text or its parameters,
which mean nothing to a user (and may hold paths or data).
"""

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
        message = _message(exc)
        if "locked" in message or "busy" in message:
            raise StoreLocked(f"state database is locked by another process: {message}") from exc
        if "disk is full" in message or "No space left" in message:
            raise StoreFull(f"state database cannot write: {message}") from exc
        raise StoreError(f"state database error: {message}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"state database error: {_message(exc)}") from exc


def _message(exc: SQLAlchemyError) -> str:
    text = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
