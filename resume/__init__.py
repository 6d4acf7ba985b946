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


# What type checkers see (`X as X` marks a re-export); at run time __getattr__ loads them.
if TYPE_CHECKING:
    from resume.api import upload as upload
    from resume.errors import AckTimeout as AckTimeout
    from resume.errors import ChecksumMismatch as ChecksumMismatch
    from resume.errors import ConnectError as ConnectError
    from resume.errors import ConnectionLost as ConnectionLost
    from resume.errors import ConnectTimeout as ConnectTimeout
    from resume.errors import FatalError as FatalError
    from resume.errors import FileRefused as FileRefused
    from resume.errors import FrameCorrupted as FrameCorrupted
    from resume.errors import GapError as GapError
    from resume.errors import HandshakeTimeout as HandshakeTimeout
    from resume.errors import IntegrityError as IntegrityError
    from resume.errors import Interrupted as Interrupted
    from resume.errors import LedgerError as LedgerError
    from resume.errors import ProtocolError as ProtocolError
    from resume.errors import Rejected as Rejected
    from resume.errors import ResumeError as ResumeError
    from resume.errors import RetryableError as RetryableError
    from resume.errors import SchemaOutOfDate as SchemaOutOfDate
    from resume.errors import ServerBusy as ServerBusy
    from resume.errors import ServerError as ServerError
    from resume.errors import SourceChanged as SourceChanged
    from resume.errors import SourceError as SourceError
    from resume.errors import StoreError as StoreError
    from resume.errors import StoreLocked as StoreLocked
    from resume.errors import StreamReset as StreamReset
    from resume.errors import Timeout as Timeout
    from resume.errors import TransferError as TransferError
    from resume.errors import UsageError as UsageError
    from resume.errors import Verdict as Verdict
    from resume.errors import WaitTimeout as WaitTimeout
    from resume.errors import classify as classify
    from resume.net.backoff import Backoff as Backoff
    from resume.net.connector import ConnectionEvent as ConnectionEvent
    from resume.net.connector import ConnectOptions as ConnectOptions
    from resume.protocol.session import Gap as Gap
    from resume.protocol.session import Message as Message
    from resume.store import Store as Store
    from resume.store import open_store as open_store
    from resume.stream.client import BufferFull as BufferFull
    from resume.stream.client import ClientClosed as ClientClosed
    from resume.stream.client import StreamClient as StreamClient
    from resume.stream.client import StreamEvent as StreamEvent
    from resume.stream.client import StreamOptions as StreamOptions
    from resume.stream.client import StreamStats as StreamStats
    from resume.stream.raw import RawClient as RawClient
    from resume.transfer.plan import FileJob as FileJob
    from resume.transfer.plan import Skipped as Skipped
    from resume.transfer.plan import collect_jobs as collect_jobs
    from resume.transfer.upload import FileResult as FileResult
    from resume.transfer.upload import Uploader as Uploader
    from resume.transfer.upload import UploadOptions as UploadOptions
    from resume.transfer.upload import UploadProgress as UploadProgress
