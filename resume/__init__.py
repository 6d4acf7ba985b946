"""resume: resumable, verified file transfers and a reconnecting WebSocket stream client.

The public names are importable from here::

    import resume

    results = await resume.upload(["big.iso"], "ws://server:8765")

    async with resume.StreamClient(url, consumer="billing", store=resume.open_store()) as c:
        ...

They are loaded on first use (module ``__getattr__``), so ``import resume`` stays cheap and
``resume --help`` does not pay for websockets or SQLAlchemy. See docs/api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    # uploads
    "upload": "resume.api",
    "Uploader": "resume.transfer.upload",
    "UploadOptions": "resume.transfer.upload",
    "UploadProgress": "resume.transfer.upload",
    "FileResult": "resume.transfer.upload",
    "FileJob": "resume.transfer.plan",
    "Skipped": "resume.transfer.plan",
    "collect_jobs": "resume.transfer.plan",
    # streams
    "StreamClient": "resume.stream.client",
    "StreamOptions": "resume.stream.client",
    "StreamEvent": "resume.stream.client",
    "StreamStats": "resume.stream.client",
    "BufferFull": "resume.stream.client",
    "ClientClosed": "resume.stream.client",
    "RawClient": "resume.stream.raw",
    "Message": "resume.protocol.session",
    "Gap": "resume.protocol.session",
    # connections and state
    "Backoff": "resume.net.backoff",
    "ConnectOptions": "resume.net.connector",
    "ConnectionEvent": "resume.net.connector",
    "Store": "resume.store",
    "open_store": "resume.store",
    # errors
    **{
        name: "resume.errors"
        for name in (
            "ResumeError",
            "TransferError",
            "RetryableError",
            "ConnectError",
            "ConnectionLost",
            "ServerBusy",
            "Timeout",
            "ConnectTimeout",
            "HandshakeTimeout",
            "AckTimeout",
            "WaitTimeout",
            "FrameCorrupted",
            "FatalError",
            "Rejected",
            "FileRefused",
            "ProtocolError",
            "GapError",
            "StreamReset",
            "ServerError",
            "SourceError",
            "IntegrityError",
            "ChecksumMismatch",
            "SourceChanged",
            "StoreError",
            "SchemaOutOfDate",
            "StoreLocked",
            "LedgerError",
            "Interrupted",
            "UsageError",
            "Verdict",
            "classify",
        )
    },
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resume' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from resume.api import upload
    from resume.errors import (
        AckTimeout,
        ChecksumMismatch,
        ConnectError,
        ConnectionLost,
        ConnectTimeout,
        FatalError,
        FileRefused,
        FrameCorrupted,
        GapError,
        HandshakeTimeout,
        IntegrityError,
        Interrupted,
        LedgerError,
        ProtocolError,
        Rejected,
        ResumeError,
        RetryableError,
        SchemaOutOfDate,
        ServerBusy,
        ServerError,
        SourceChanged,
        SourceError,
        StoreError,
        StoreLocked,
        StreamReset,
        Timeout,
        TransferError,
        UsageError,
        Verdict,
        WaitTimeout,
        classify,
    )
    from resume.net.backoff import Backoff
    from resume.net.connector import ConnectionEvent, ConnectOptions
    from resume.protocol.session import Gap, Message
    from resume.store import Store, open_store
    from resume.stream.client import (
        BufferFull,
        ClientClosed,
        StreamClient,
        StreamEvent,
        StreamOptions,
        StreamStats,
    )
    from resume.stream.raw import RawClient
    from resume.transfer.plan import FileJob, Skipped, collect_jobs
    from resume.transfer.upload import FileResult, Uploader, UploadOptions, UploadProgress
