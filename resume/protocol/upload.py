"""The upload protocol on the wire. Sans-I/O: encoders, decoders and validators only.

One WebSocket connection to ``/upload`` carries any number of files, one after another::

    client                                          server
    {"type":"begin", file_id, name, size, chunk_size} ->
                                                  <- {"type":"state", file_id, state, held}
    CHUNK frame (binary, 37-byte header + bytes)  ->   (a window of them in flight)
                                                  <- {"type":"ack", file_id, chunks:[[i, sum]..]}
                                                  <- {"type":"nack", file_id, index, reason}
    {"type":"finish", file_id, checksum}          ->
                                                  <- {"type":"done", file_id, name}
    {"type":"cancel", file_id}                    -> <- {"type":"cancelled", file_id}
                                                  <- {"type":"error", code, message, file_id?}

``held`` lists the chunks the server has durably stored, with their checksums: it is how a
client reconciles after any crash. An ``ack`` is sent only after the chunk was written, fsynced,
verified and recorded in the server's store.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from resume.errors import ProtocolError
from resume.protocol.frames import CloseCode, field
from resume.protocol.geometry import Geometry, GeometryError

FRAME_CHUNK = 0x01
# kind (1), file_id (16), chunk index (4), offset (8), xxh3-64 of the payload (8)
CHUNK_HEADER = struct.Struct(">B16sIQQ")
HEADER_SIZE = CHUNK_HEADER.size
MAX_NAME_BYTES = 4096
RESERVED_TOP = ".resume"  # the server's own state directory under the root


class ErrorCode(enum.StrEnum):
    """Why the server refused something; sent in ``error`` messages."""

    BAD_NAME = "bad_name"  # absolute, '..', NUL, reserved or otherwise escaping the root
    TOO_LARGE = "too_large"  # over --max-size, or a chunk size over the server's limit
    MISMATCH = "mismatch"  # file_id known with another name, size or chunk size
    UNKNOWN_FILE = "unknown_file"  # a chunk or finish for a file not begun on this connection
    INCOMPLETE = "incomplete"  # finish while chunks are missing
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the whole file does not hash to what was sent
    DISK_FULL = "disk_full"  # no space left on the server
    STORAGE = "storage"  # another I/O error on the server
    EXISTS = "exists"  # the destination exists and overwrite was not asked
    NAME_IN_USE = "name_in_use"  # another unfinished upload owns that name
    FORBIDDEN = "forbidden"  # the bearer's token does not allow that name
    LIMIT = "limit"  # a per-connection resource limit


# Refusals of one file: the client fails that file and goes on with the others. Any other
# code ends the run (disk_full, storage: the server cannot store anything).
FILE_ERROR_CODES = frozenset(
    {
        ErrorCode.BAD_NAME,
        ErrorCode.TOO_LARGE,
        ErrorCode.MISMATCH,
        ErrorCode.INCOMPLETE,
        ErrorCode.CHECKSUM_MISMATCH,
        ErrorCode.EXISTS,
        ErrorCode.NAME_IN_USE,
        ErrorCode.FORBIDDEN,
        ErrorCode.LIMIT,
    }
)


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The fixed header in front of every chunk's bytes."""

    file_id: str  # 32 hex digits
    index: int
    offset: int
    checksum: str  # xxh3-64, 16 hex digits

    def pack(self, into: bytearray | memoryview | None = None) -> bytes | None:
        """The header bytes; or, with ``into``, written at the start of that buffer."""
        values = (
            FRAME_CHUNK,
            uuid.UUID(hex=self.file_id).bytes,
            self.index,
            self.offset,
            int(self.checksum, 16),
        )
        if into is None:
            return CHUNK_HEADER.pack(*values)
        CHUNK_HEADER.pack_into(into, 0, *values)
        return None


def parse_chunk(frame: bytes | bytearray | memoryview) -> tuple[ChunkHeader, memoryview]:
    """Split a binary chunk frame into its header and payload (no copy)."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(
            f"binary frame of {len(frame)} bytes is shorter than a chunk header",
            close_code=CloseCode.PROTOCOL_ERROR,
        )
    kind, raw_id, index, offset, checksum = CHUNK_HEADER.unpack_from(frame, 0)
    if kind != FRAME_CHUNK:
        raise ProtocolError(
            f"unknown binary frame kind {kind:#x}", close_code=CloseCode.PROTOCOL_ERROR
        )
    header = ChunkHeader(uuid.UUID(bytes=raw_id).hex, index, offset, f"{checksum:016x}")
    return header, memoryview(frame)[HEADER_SIZE:]


def new_file_id() -> str:
    """A fresh random file id: 32 hex digits."""
    return uuid.uuid4().hex


def check_file_id(value: Any) -> str:
    """Validate a file id from the wire."""
    if not isinstance(value, str) or len(value) != 32:
        raise ProtocolError(f"bad file_id {value!r}", close_code=CloseCode.PROTOCOL_ERROR)
    try:
        return uuid.UUID(hex=value).hex
    except ValueError as exc:
        raise ProtocolError(f"bad file_id {value!r}", close_code=CloseCode.PROTOCOL_ERROR) from exc


def remote_name_problem(name: str) -> str | None:
    """Why ``name`` may not be used as a path under the server root, or None if it may.

    A name is a relative POSIX path of ordinary components: not absolute, no ``..`` or ``.``
    or empty components, no NUL or backslash, not under the server's ``.resume/`` directory.
    """
    if not name:
        return "empty name"
    if "\x00" in name:
        return "name contains NUL"
    if "\\" in name:
        return "name contains a backslash"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return "name too long"
    if name.startswith("/"):
        return "name is absolute"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "name has an empty, '.' or '..' component"
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in parts):
        return "a name component is longer than 255 bytes"
    if parts[0] == RESERVED_TOP:
        return f"{RESERVED_TOP}/ is reserved for the server"
    if any(ord(ch) < 0x20 for ch in name):
        return "name contains a control character"
    return None


@dataclass(frozen=True, slots=True)
class Begin:
    """``begin``: the client starts or resumes sending one file."""

    file_id: str
    name: str
    size: int
    chunk_size: int
    overwrite: bool = False  # may replace a file that exists at the destination
    verify: bool = False  # for a completed file: re-hash what is under its name

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.size, self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "begin",
            "file_id": self.file_id,
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
        }
        # Only when set: a server from before these fields sees the same begin as before.
        if self.overwrite:
            message["overwrite"] = True
        if self.verify:
            message["verify"] = True
        return message

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Begin:
        """Validate a ``begin``; sizes that no file can have are a protocol error (1002)."""
        size = field(message, "size", int)
        chunk_size = field(message, "chunk_size", int)
        try:
            Geometry(size, chunk_size)
        except GeometryError as exc:
            raise ProtocolError(str(exc), close_code=CloseCode.PROTOCOL_ERROR) from exc
        flags = {}
        for name in ("overwrite", "verify"):
            if name in message:
                flags[name] = field(message, name, bool)
        return cls(
            check_file_id(message.get("file_id")),
            field(message, "name", str),
            size,
            chunk_size,
            **flags,
        )


def held_to_json(held: dict[int, str]) -> list[list[Any]]:
    """``{index: checksum}`` as the compact JSON list used in ``state`` and ``ack``."""
    return [[index, checksum] for index, checksum in sorted(held.items())]


def held_from_json(message: dict[str, Any], name: str) -> dict[int, str]:
    """Parse a ``[[index, checksum], ...]`` field, validating every entry."""
    value = field(message, name, list)
    held: dict[int, str] = {}
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], int)
            or isinstance(entry[0], bool)
            or not isinstance(entry[1], str)
        ):
            raise ProtocolError(f"bad {name} entry {entry!r}", close_code=CloseCode.PROTOCOL_ERROR)
        held[entry[0]] = entry[1]
    return held
