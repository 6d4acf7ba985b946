"""The state enums and the clock of the store, importable without SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import enum


def utcnow() -> dt.datetime:
    """The current time as naive UTC, the form every timestamp column stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class TransferState(enum.StrEnum):
    """Life of a transfer as a whole."""

    PENDING = "pending"  # recorded, nothing sent yet
    ACTIVE = "active"  # an upload run is (or was, until it crashed) sending it
    COMPLETED = "completed"  # every chunk committed and the server verified the whole file
    FAILED = "failed"  # stopped on a fatal error; `last_error` says why
    CANCELLED = "cancelled"  # the user cancelled it; the server dropped the partial


class ReceiveState(enum.StrEnum):
    """Server side: life of a file being received."""

    RECEIVING = "receiving"  # chunks arriving; data under <root>/.resume/partial/
    PUBLISHING = "publishing"  # verified; about to be renamed (a restart finishes the rename)
    COMPLETED = "completed"  # verified and renamed to its final name
    CANCELLED = "cancelled"  # the client cancelled it; the partial is gone
