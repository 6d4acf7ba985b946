"""tus 1.0 headers, pure: what a client sends and how it reads what a server answers.

No I/O, no HTTP library: functions take and return plain strings, ints and mappings, so both
``resume upload`` to a tus server and ``resume serve``'s own tus endpoint can use them.

Spec: https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload,
checksum, termination, concatenation, expiration).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from resume.protocol.geometry import chunk_count

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_FAILED = 460  # tus checksum extension: "Checksum Mismatch"

# Checksum algorithms by their tus names. ``xxh3`` is the xxh3-64 digest (8 bytes, big-endian
# as xxhash's ``digest()`` gives it), the algorithm `resume` uses for its own chunks.
_HASHES: dict[str, Callable[[], object]] = {
    "xxh3": xxhash.xxh3_64,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
}
# What a client picks when a server offers several: the cheapest that is strong enough to catch
# corruption in transit. sha1 is the one every tus server that offers checksums must support.
CHECKSUM_PREFERENCE = ("xxh3", "sha1", "sha256", "md5", "sha512")


def is_tus_url(url: str) -> bool:
    """True for ``http://`` and ``https://`` URLs: where a tus server's creation endpoint is."""
    scheme, separator, _ = url.partition("://")
    return bool(separator) and scheme.lower() in ("http", "https")


class TusProtocolError(ValueError):
    """A tus header is missing or malformed (the I/O layer maps it to its own error)."""


# -- what the server offers ------------------------------------------------------------------


FILE_DIGEST = "xxh3-128"  # resume's whole-file checksum, as an RFC 9530 digest name


@dataclass(frozen=True, slots=True)
class Capabilities:
    """A tus server's answer to ``OPTIONS`` on its creation endpoint."""

    versions: tuple[str, ...] = (TUS_VERSION,)
    extensions: frozenset[str] = field(default_factory=frozenset)
    max_size: int | None = None
    checksum_algorithms: tuple[str, ...] = ()
    # The server checks a whole-file xxh3-128 named in Repr-Digest before it publishes the
    # file (``resume serve`` asks for it with Want-Repr-Digest, RFC 9530).
    file_digest: bool = False

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Capabilities:
        """Parse ``Tus-Version``, ``Tus-Extension``, ``Tus-Max-Size`` and
        ``Tus-Checksum-Algorithm`` (header names are matched case-insensitively)."""
        lower = {k.lower(): v for k, v in headers.items()}
        versions = _split(lower.get("tus-version", "")) or _split(lower.get("tus-resumable", ""))
        max_size = lower.get("tus-max-size")
        return cls(
            versions=tuple(versions),
            extensions=frozenset(e.lower() for e in _split(lower.get("tus-extension", ""))),
            max_size=_non_negative(max_size, "Tus-Max-Size") if max_size else None,
            checksum_algorithms=tuple(
                a.lower() for a in _split(lower.get("tus-checksum-algorithm", ""))
            ),
            file_digest=any(
                member.partition("=")[0].strip().lower() == FILE_DIGEST
                for member in _split(lower.get("want-repr-digest", ""))
            ),
        )

    def offers(self, extension: str) -> bool:
        """True if the server lists ``extension`` in ``Tus-Extension``."""
        return extension in self.extensions

    @property
    def speaks_1_0(self) -> bool:
        return TUS_VERSION in self.versions

    def checksum_algorithm(self) -> str | None:
        """The algorithm a client should put in ``Upload-Checksum``, or None if not offered."""
        if not self.offers("checksum"):
            return None
        for name in CHECKSUM_PREFERENCE:
            if name in self.checksum_algorithms:
                return name
        return None


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _non_negative(value: str, name: str) -> int:
    text = value.strip()
    if not text.isdigit():  # rejects "-1", "+1", "1e3", "" and non-ASCII digits alike
        raise TusProtocolError(f"{name} is not a non-negative integer: {value!r}")
    return int(text)


# -- headers a client sends ------------------------------------------------------------------


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs joined by commas."""
    parts = []
    for key, value in metadata.items():
        if not key or any(c in key for c in " ,") or not key.isascii():
            raise TusProtocolError(f"metadata key {key!r} must be ASCII without spaces or commas")
        parts.append(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return ",".join(parts)


def decode_metadata(header: str) -> dict[str, str]:
    """Parse ``Upload-Metadata`` (a key may come without a value); raises on bad base64."""
    result: dict[str, str] = {}
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition(" ")
        if key in result:
            raise TusProtocolError(f"metadata key {key!r} appears twice")
        try:
            result[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII, bad UTF-8
            raise TusProtocolError(f"metadata value of {key!r} is not base64 UTF-8") from exc
    return result


def checksum_header(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    """``Upload-Checksum`` for ``data``: ``<algorithm> <base64 digest>``."""
    return checksum_header_of(algorithm, [data])


def new_hasher(algorithm: str) -> Any:
    """A fresh hasher (``update``/``digest``/``copy``) for a tus checksum algorithm."""
    try:
        return _HASHES[algorithm]()
    except KeyError:
        raise TusProtocolError(f"unsupported checksum algorithm {algorithm!r}") from None


def checksum_header_of(algorithm: str, parts: Iterable[bytes | bytearray | memoryview]) -> str:
    """``Upload-Checksum`` for the concatenation of ``parts`` (hashed in place, not joined)."""
    hasher = new_hasher(algorithm)
    for part in parts:
        hasher.update(part)
    return format_checksum(algorithm, hasher.digest())


def format_checksum(algorithm: str, raw_digest: bytes) -> str:
    """``Upload-Checksum`` for a digest already computed (e.g. fed as the body was read)."""
    return f"{algorithm} {base64.b64encode(raw_digest).decode('ascii')}"


def digest(algorithm: str, data: bytes | bytearray | memoryview) -> bytes:
    """The raw digest of ``data`` with a tus checksum algorithm."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.digest()  # type: ignore[no-any-return]


def parse_checksum_header(header: str) -> tuple[str, bytes]:
    """Split ``Upload-Checksum`` into (algorithm, raw digest); for the receiving side."""
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in _HASHES:
        raise TusProtocolError(f"unsupported checksum algorithm {algorithm!r}")
    try:
        return algorithm, base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise TusProtocolError("Upload-Checksum digest is not base64") from exc


def supported_checksums() -> tuple[str, ...]:
    """Every algorithm name this module can compute, for ``Tus-Checksum-Algorithm``."""
    return tuple(_HASHES)


def base_headers(token: str | None = None) -> dict[str, str]:
    """Headers on every request: the protocol version and the bearer token, if any."""
    headers = {"Tus-Resumable": TUS_VERSION}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def creation_headers(
    length: int,
    metadata: Mapping[str, str] | None = None,
    *,
    partial: bool = False,
    with_body: bool = False,
) -> dict[str, str]:
    """Headers of a ``POST`` that creates an upload of ``length`` bytes."""
    headers = {"Upload-Length": str(length)}
    if metadata:
        headers["Upload-Metadata"] = encode_metadata(metadata)
    if partial:
        headers["Upload-Concat"] = "partial"
    if with_body:  # creation-with-upload: the body is the first bytes of the file
        headers["Content-Type"] = OFFSET_CONTENT_TYPE
    return headers


def final_headers(
    part_urls: Iterable[str], metadata: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Headers of the ``POST`` that concatenates finished partial uploads into the file."""
    headers = {"Upload-Concat": "final;" + " ".join(part_urls)}
    if metadata:
        headers["Upload-Metadata"] = encode_metadata(metadata)
    return headers


def patch_headers(
    offset: int, checksum: str | None = None, file_checksum: str | None = None
) -> dict[str, str]:
    """Headers of a ``PATCH`` that appends bytes at ``offset``; ``file_checksum``: the whole
    file's xxh3-128 (hex) for a server that checks it (:attr:`Capabilities.file_digest`)."""
    headers = {"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE}
    if checksum:
        headers["Upload-Checksum"] = checksum
    if file_checksum:
        headers["Repr-Digest"] = file_digest_header(file_checksum)
    return headers


def file_digest_header(file_checksum: str) -> str:
    """``Repr-Digest`` naming the whole file's xxh3-128 (hex, as resume writes it)."""
    encoded = base64.b64encode(bytes.fromhex(file_checksum)).decode("ascii")
    return f"{FILE_DIGEST}=:{encoded}:"


# -- what a server answers -------------------------------------------------------------------


def upload_offset(headers: Mapping[str, str]) -> int:
    """``Upload-Offset`` of a HEAD/PATCH/POST response; raises if missing or malformed."""
    value = _get(headers, "upload-offset")
    if value is None:
        raise TusProtocolError("the response has no Upload-Offset")
    return _non_negative(value, "Upload-Offset")


def upload_length(headers: Mapping[str, str]) -> int | None:
    """``Upload-Length`` of a HEAD response, None if deferred or absent."""
    value = _get(headers, "upload-length")
    return None if value is None else _non_negative(value, "Upload-Length")


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


class Outcome(enum.Enum):
    """What a client does with a response status (the branch, not the error message)."""

    OK = "ok"
    RESYNC = "resync"  # 409: the offset we sent is not the server's; ask (HEAD) and continue
    RESEND = "resend"  # 460: the body failed its checksum and was discarded; send it again
    GONE = "gone"  # 404/410: the upload URL no longer exists; start a new upload
    RETRY = "retry"  # 423/429/5xx: busy or broken for now; back off and try again
    FATAL = "fatal"  # anything else: 401/403/413/412/400...: retrying repeats it


def outcome(status: int) -> Outcome:
    """Classify a response status for a request to an existing upload URL."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 409:
        return Outcome.RESYNC
    if status == CHECKSUM_FAILED:
        return Outcome.RESEND
    if status in (404, 410):
        return Outcome.GONE
    if status in (423, 429) or (status >= 500 and status != 501):
        return Outcome.RETRY
    return Outcome.FATAL


def covered_chunks(offset: int, size: int, chunk_size: int) -> int:
    """How many whole chunks (of a file cut every ``chunk_size`` bytes) lie below ``offset``."""
    if offset >= size:
        return chunk_count(size, chunk_size)
    return offset // chunk_size
