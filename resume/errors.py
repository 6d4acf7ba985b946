"""One exception tree for everything `resume` raises.

Catch at whatever level suits you::

    ResumeError
    ├── TransferError                      anything that went wrong talking to a peer
    │   ├── RetryableError                 worth another attempt after a backoff delay
    │   │   ├── ConnectError               refused, unreachable, reset during connect
    │   │   ├── FrameCorrupted             a frame failed to decode (retried a bounded number of times)
    │   │   ├── ConnectionLost             an open connection dropped (1001/1006/1011/1012/1013)
    │   │   ├── ServerBusy                 5xx at the handshake, "try again later"
    │   │   └── Timeout
    │   │       ├── ConnectTimeout         TCP connect or opening handshake took too long
    │   │       ├── HandshakeTimeout       the peer never answered our hello
    │   │       ├── AckTimeout             data went out, no acknowledgement came back
    │   │       └── WaitTimeout            an API wait (ready, flush) ran out; also a TimeoutError
    │   └── FatalError                     retrying cannot help; stop at once
    │       ├── Rejected                   401/403/404 at the handshake or a policy close
    │       │   └── FileRefused            the server refused one file (exists, bad name, ...)
    │       ├── ProtocolError              the peer broke the wire protocol (1002/1003/1007/1009)
    │       ├── GapError                   a stream gap the server can no longer replay
    │       ├── StreamReset                the server's log is behind a consumer's position
    │       ├── ClientIdConflict           another producer uses this stream client id
    │       ├── ServerError                server could not store the data (disk full, I/O)
    │       ├── SourceError                a local file cannot be read (permission, I/O, gone)
    │       └── IntegrityError             bytes do not match what they must be
    │           ├── ChecksumMismatch       a chunk or a whole file failed verification
    │           └── SourceChanged          the local file changed since its transfer began
    ├── StoreError                         the state database cannot be used
    │   ├── SchemaOutOfDate                the database needs `resume db upgrade`
    │   ├── StoreLocked                    another process holds the database too long
    │   ├── StoreFull                      no space left for the database to write
    │   └── Fenced                         a write by an owner that was taken over (refused)
    ├── LedgerError                        an illegal chunk-state transition (a bug, never retried)
    ├── Interrupted                        the user asked us to stop; state is saved, run again
    └── UsageError                         bad input from the user: arguments, paths, sizes

Third-party exceptions (websockets, sqlite3, OSError) are translated into this tree in exactly
one place per I/O layer, always with ``raise New(...) from exc``. Retry loops never inspect
foreign exceptions: they call :func:`classify`.
"""

from __future__ import annotations

import enum


class ResumeError(Exception):
    """Base class of every error raised by `resume`."""


class UsageError(ResumeError):
    """Bad input from the user: arguments, paths, sizes, URLs."""


class Interrupted(ResumeError):
    """The user asked us to stop (SIGINT); state is saved and the same command resumes."""


class LedgerError(ResumeError):
    """An illegal chunk-state transition; indicates a bug, never retried."""


class StoreError(ResumeError):
    """The state database cannot be opened, read or written."""


class SchemaOutOfDate(StoreError):
    """The database schema is older or newer than this version of `resume` expects."""


class StoreLocked(StoreError):
    """Another process held the database lock longer than the busy timeout."""


class StoreFull(StoreError):
    """The database could not write: its disk is full."""


class Fenced(StoreError):
    """A write by an owner whose epoch is no longer current: another owner took over."""


class TransferError(ResumeError):
    """Something went wrong talking to a peer."""


class RetryableError(TransferError):
    """A failure that another attempt, after a backoff delay, may get past."""


class ConnectError(RetryableError):
    """The connection could not be opened (refused, unreachable, reset)."""


class ConnectionLost(RetryableError):
    """An open connection dropped."""

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class ServerBusy(RetryableError):
    """The server answered the handshake with a 5xx status or asked us to come back later."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Timeout(RetryableError):
    """An operation did not complete in time."""


class ConnectTimeout(Timeout):
    """The TCP connect or the opening handshake took too long."""


class HandshakeTimeout(Timeout):
    """The peer accepted the connection but never answered our hello."""


class AckTimeout(Timeout):
    """Data was sent but no acknowledgement arrived in time."""


class WaitTimeout(Timeout, TimeoutError):
    """An API call waited as long as it was told to (``ready(timeout=)``, ``flush(timeout=)``).

    Also a :class:`TimeoutError`, so ``except TimeoutError`` keeps working; the message says
    what was waited for.
    """


class FrameCorrupted(RetryableError):
    """A frame failed to decode (invalid UTF-8 or JSON, a 1007 close): corrupted in transit.

    Retried like a dropped connection, but only a bounded number of times: a peer that keeps
    sending garbage is a protocol problem, and then it becomes a :class:`ProtocolError`.
    """

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class FatalError(TransferError):
    """A failure that retrying cannot fix; stop at once with a clear message."""


class Rejected(FatalError):
    """The server refused us: 401/403/404 at the handshake, or a policy close (1008)."""

    def __init__(
        self, message: str, *, status: int | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class FileRefused(Rejected):
    """The server refused one file (``code``: exists, bad_name, too_large, name_in_use,
    forbidden, limit, mismatch, checksum_mismatch...); the other files of the run go on."""

    def __init__(self, message: str, *, code: str, file_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.file_id = file_id


class ProtocolError(FatalError):
    """The peer broke the wire protocol."""

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class GapError(FatalError):
    """Stream messages were trimmed on the server before we could take them: not recovered."""

    def __init__(self, message: str, *, first: int, last: int) -> None:
        super().__init__(message)
        self.first = first
        self.last = last


class StreamReset(FatalError):
    """The server's log ends before this consumer's stored position: its state was reset.

    Messages numbered after the reset would reuse seqs the consumer already took, so they are
    not delivered silently; reset the consumer's position to start over.
    """

    def __init__(self, message: str, *, position: int, last: int) -> None:
        super().__init__(message)
        self.position = position
        self.last = last


class ClientIdConflict(FatalError):
    """Another producer uses this client id on this channel (close codes 4409 / 4410).

    Each producer (a process with its own store) needs its own client id: the server would
    otherwise drop one producer's messages as replays of the other's. Raised, never retried,
    when the server refuses or fences this producer, or when the server already holds more
    messages for the id than this producer ever numbered.
    """

    def __init__(
        self, message: str, *, client_id: str | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.client_id = client_id
        self.close_code = close_code


class ServerError(FatalError):
    """The server could not store the data: disk full or another I/O error on its side."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SourceError(FatalError):
    """A local file cannot be read: permission denied, an I/O error, gone, not a regular file.

    Never retried as a connection problem; the message names the file.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class IntegrityError(FatalError):
    """Bytes do not match what they must be."""


class ChecksumMismatch(IntegrityError):
    """A chunk or a whole file failed checksum verification."""


class SourceChanged(IntegrityError):
    """The local file changed since its transfer began; it is never silently mixed."""


class Verdict(enum.Enum):
    """What a retry loop should do with an exception."""

    RETRY = "retry"
    FATAL = "fatal"


# Close codes that mean "the link or the server had a problem, come back".
RETRYABLE_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})
# Close codes that mean "you did something wrong", retrying would repeat it.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
# Application close codes (4000-4999) of `resume` itself; any other one is retried.
CLIENT_ID_CONFLICT = 4409  # the client id belongs to another producer instance: refused
PRODUCER_FENCED = 4410  # a newer connection of the same producer took over: this one stops
TOKEN_EXPIRED = 4401  # the bearer token expired while connected: reconnect with a fresh one


def classify(exc: BaseException) -> Verdict:
    """Tell a retry loop whether ``exc`` is worth another attempt.

    Pure: looks only at the exception. Unknown exceptions are fatal so that a bug never
    turns into a retry storm.
    """
    if isinstance(exc, RetryableError):
        return Verdict.RETRY
    return Verdict.FATAL


def error_for_close(code: int | None, reason: str = "") -> TransferError:
    """Map a WebSocket close code from the peer to the matching error in this tree."""
    detail = f" ({reason})" if reason else ""
    if code in (CLIENT_ID_CONFLICT, PRODUCER_FENCED):
        return ClientIdConflict(
            f"client id conflict: {reason or 'another producer uses this client id'}; give "
            "each producer (each process with its own state database) its own client id",
            close_code=code,
        )
    if code in FATAL_CLOSE_CODES:
        if code == 1008:
            return Rejected(
                f"server closed the connection: policy violation{detail}", close_code=code
            )
        return ProtocolError(
            f"server closed the connection with code {code}{detail}", close_code=code
        )
    return ConnectionLost(f"connection closed with code {code}{detail}", close_code=code)


def error_for_status(status: int, body: str = "") -> TransferError:
    """Map an HTTP status that refused the WebSocket upgrade to the matching error."""
    detail = f": {body.strip()}" if body.strip() else ""
    if status in (401, 403):
        return Rejected(f"server refused the connection: HTTP {status}{detail}", status=status)
    if status >= 500 or status == 429:
        return ServerBusy(f"server unavailable: HTTP {status}{detail}", status=status)
    return Rejected(f"server refused the connection: HTTP {status}{detail}", status=status)
