"""The server side of tus 1.0 and of the IETF resumable-upload draft, pure: headers in, replies out.

No I/O and no HTTP library: a request is a method and a mapping of lowercase header names;
a decision is either a parsed request (:class:`Creation`, :class:`Append`) or a :class:`Reply`
to send as it is. The asyncio endpoint (:mod:`resume.transfer.tus_endpoint`) moves bytes and
calls the upload machine (:mod:`resume.protocol.receive`); every status code and header is
chosen here.

Two dialects share the endpoint:

- **tus 1.0.0** (``Tus-Resumable: 1.0.0``): core, creation, creation-with-upload,
  creation-defer-length, expiration, checksum (sha1, md5, sha256, xxh3), termination and
  concatenation. https://tus.io/protocols/resumable-upload
- **the IETF draft** (``Upload-Draft-Interop-Version: 8``, draft-ietf-httpbis-resumable-upload):
  ``Upload-Complete``, ``Upload-Offset``, ``Upload-Length``, ``Upload-Limit``,
  ``application/partial-upload``, RFC 9457 problem details on 409/400, and RFC 9530
  ``Repr-Digest`` / ``Content-Digest`` with sha-256 and sha-512.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from resume.protocol.tus import (
    CHECKSUM_FAILED,
    FILE_DIGEST,
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    TusProtocolError,
    decode_metadata,
    new_hasher,
    parse_checksum_header,
    supported_checksums,
)

INTEROP_VERSION = "8"
PARTIAL_UPLOAD_TYPE = "application/partial-upload"
PROBLEM_TYPE = "application/problem+json"
PROBLEMS = "https://iana.org/assignments/http-problem-types#"
SERVER_CHECKSUMS = ("xxh3", "sha1", "sha256", "md5")
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# The whole-file checksum resume's own machine computes as bytes arrive (no read-back). A
# client names it in ``Repr-Digest`` (on the creation or on any PATCH; the last one counts) and
# the file is published only if it matches, as over WebSocket. Offered in OPTIONS with
# ``Want-Repr-Digest`` (RFC 9530).
FILE_DIGEST_BYTES = 16  # FILE_DIGEST (resume.protocol.tus) is xxh3-128
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
MAX_METADATA = 8 * 1024  # bytes of Upload-Metadata kept with an upload (it is stored)
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_INTEGER = re.compile(r"[0-9]{1,19}")  # a non-negative 63-bit integer, no sign, no spaces

# Headers a browser may send and must be allowed to read (CORS).
REQUEST_HEADERS = (
    "Authorization, Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, "
    "Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, "
    "X-HTTP-Method-Override, X-Requested-With, Upload-Complete, "
    "Upload-Draft-Interop-Version, Repr-Digest, Content-Digest"
)
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, "
    "Tus-Checksum-Algorithm, Upload-Complete, Upload-Limit, Upload-Draft-Interop-Version"
)


class Dialect(enum.Enum):
    """Which protocol a request speaks."""

    TUS = "tus"
    IETF = "ietf"


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def with_headers(self, *extra: tuple[str, str]) -> Reply:
        return Reply(self.status, (*self.headers, *extra), self.body)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the server offers."""

    max_size: int | None = None  # Tus-Max-Size; None: no limit
    expire: float | None = None  # seconds an idle unfinished upload is kept
    cors_origins: tuple[str, ...] = ()  # allowed Origin values; "*" allows any


# -- parsed requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Creation:
    """A POST that creates an upload."""

    dialect: Dialect
    length: int | None  # None: deferred (tus) or not yet known (IETF)
    metadata: dict[str, str] = field(default_factory=dict)
    metadata_header: str | None = None
    concat: str | None = None  # "partial", "final" or None
    parts: tuple[str, ...] = ()  # a final upload's partial upload ids, in order
    complete: bool = False  # IETF: the body is the whole representation
    checksum: tuple[str, bytes] | None = None  # (algorithm, digest) of the body
    digest: str | None = None  # IETF Repr-Digest of the whole upload, to check at the end
    has_body: bool = False


@dataclass(frozen=True, slots=True)
class Append:
    """A PATCH (or a creation's body) that appends at ``offset``."""

    dialect: Dialect
    offset: int
    length: int | None = None  # tus: Upload-Length given now for a deferred upload
    complete: bool | None = None  # IETF: Upload-Complete
    checksum: tuple[str, bytes] | None = None  # (algorithm, digest) of this body
    content_length: int | None = None
    digest: str | None = None  # Repr-Digest of the whole upload, to check when complete


@dataclass(frozen=True, slots=True)
class UploadView:
    """What a reply about an existing upload needs to know."""

    url_id: str
    offset: int  # durable bytes
    length: int | None  # None while deferred
    complete: bool  # every byte is here (and, for a whole upload, it is published)
    metadata_header: str | None = None
    concat: str | None = None
    part_urls: tuple[str, ...] = ()
    expires: float | None = None  # Unix time it expires if left idle; None: never


# -- dialect and method ------------------------------------------------------------------------


def effective_method(method: str, headers: Mapping[str, str]) -> str:
    """The method, or ``X-HTTP-Method-Override`` for clients that cannot send PATCH/DELETE."""
    override = headers.get("x-http-method-override")
    return override.strip().upper() if override else method.upper()


def dialect_of(method: str, headers: Mapping[str, str]) -> Dialect | Reply:
    """Which protocol the request speaks, or the 412/400 reply that refuses it."""
    interop = headers.get("upload-draft-interop-version")
    if interop is not None:
        if interop.strip() != INTEROP_VERSION:
            return problem(
                400,
                "unsupported-interop-version",
                f"this server speaks interop version {INTEROP_VERSION}, not {interop.strip()!r}",
                Dialect.IETF,
            )
        return Dialect.IETF
    version = headers.get("tus-resumable")
    if version is None and method == "OPTIONS":
        return Dialect.TUS
    if version is None or version.strip() != TUS_VERSION:
        return Reply(
            412,
            (("Tus-Version", TUS_VERSION), ("Content-Type", "text/plain; charset=utf-8")),
            f"unsupported protocol version; send Tus-Resumable: {TUS_VERSION}\n".encode(),
        )
    return Dialect.TUS


def base_headers(dialect: Dialect) -> tuple[tuple[str, str], ...]:
    """Headers on every response of a dialect (tus: all but OPTIONS)."""
    if dialect is Dialect.TUS:
        return (("Tus-Resumable", TUS_VERSION), ("Cache-Control", "no-store"))
    return (("Cache-Control", "no-store"),)


def options_reply(settings: Settings) -> Reply:
    """204 to OPTIONS: what the server supports (tus discovery)."""
    headers = [
        ("Tus-Resumable", TUS_VERSION),
        ("Tus-Version", TUS_VERSION),
        ("Tus-Extension", ",".join(EXTENSIONS)),
        ("Tus-Checksum-Algorithm", ",".join(a for a in SERVER_CHECKSUMS)),
        ("Want-Repr-Digest", f"{FILE_DIGEST}=10, sha-256=3, sha-512=3"),
    ]
    if settings.max_size is not None:
        headers.append(("Tus-Max-Size", str(settings.max_size)))
    return Reply(204, tuple(headers))


def upload_limit(settings: Settings) -> str:
    """The IETF ``Upload-Limit`` dictionary (max-size, expires)."""
    items = []
    if settings.max_size is not None:
        items.append(f"max-size={settings.max_size}")
    if settings.expire is not None:
        items.append(f"expires={int(settings.expire)}")
    return ", ".join(items)


# -- creation ----------------------------------------------------------------------------------


def parse_creation(
    headers: Mapping[str, str], dialect: Dialect, settings: Settings
) -> Creation | Reply:
    """A POST to the creation endpoint, checked; or the reply that refuses it."""
    has_body = _body_announced(headers)
    if dialect is Dialect.IETF:
        complete = _sf_boolean(headers.get("upload-complete"))
        if complete is None:
            return problem(400, "", "Upload-Complete must be ?0 or ?1", dialect)
        length = _integer(headers.get("upload-length"))
        if isinstance(length, Reply):
            return length
        content_length = _integer(headers.get("content-length"))
        if isinstance(content_length, Reply):
            return content_length
        if complete and content_length is not None:
            if length is not None and length != content_length:
                return problem(
                    400,
                    "inconsistent-upload-length",
                    "Upload-Length differs from the complete body's length",
                    dialect,
                )
            length = content_length
        if settings.max_size is not None and length is not None and length > settings.max_size:
            return _too_large(length, settings, dialect)
        digest = headers.get("repr-digest")
        if digest is not None and isinstance(_digest(digest), Reply):
            return problem(400, "", "Repr-Digest: no usable value", dialect)
        checksum = _content_digest(headers.get("content-digest"))
        if isinstance(checksum, Reply):
            return checksum
        return Creation(
            dialect,
            length,
            complete=complete,
            checksum=checksum,
            digest=digest,
            has_body=has_body,
        )
    raw_metadata = headers.get("upload-metadata")
    if raw_metadata is not None and len(raw_metadata) > MAX_METADATA:
        return _bad(f"Upload-Metadata is over {MAX_METADATA} bytes")
    try:
        metadata = decode_metadata(raw_metadata) if raw_metadata else {}
    except TusProtocolError as exc:
        return _bad(f"Upload-Metadata: {exc}")
    concat: str | None = None
    parts: tuple[str, ...] = ()
    raw_concat = headers.get("upload-concat")
    if raw_concat is not None:
        parsed = _parse_concat(raw_concat)
        if isinstance(parsed, Reply):
            return parsed
        concat, parts = parsed
    raw_length = headers.get("upload-length")
    deferred = headers.get("upload-defer-length")
    if concat == "final":
        if raw_length is not None or deferred is not None:
            return _bad("a final upload takes its length from its parts: no Upload-Length")
        if has_body:
            return Reply(403, (), b"a final upload cannot carry a body\n")
        return Creation(dialect, None, metadata, raw_metadata, concat, parts)
    if deferred is not None:
        if deferred.strip() != "1":
            return _bad("Upload-Defer-Length must be 1")
        if raw_length is not None:
            return _bad("give Upload-Length or Upload-Defer-Length, not both")
        length = None
    else:
        if raw_length is None:
            return _bad("Upload-Length (or Upload-Defer-Length: 1) is required")
        parsed_length = _integer(raw_length)
        if isinstance(parsed_length, Reply):
            return parsed_length
        length = parsed_length
        if settings.max_size is not None and length is not None and length > settings.max_size:
            return _too_large(length, settings, dialect)
    checksum = None
    if has_body:
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
            return Reply(
                415, (), f"a creation body needs Content-Type: {OFFSET_CONTENT_TYPE}\n".encode()
            )
        parsed_checksum = _tus_checksum(headers.get("upload-checksum"))
        if isinstance(parsed_checksum, Reply):
            return parsed_checksum
        checksum = parsed_checksum
    return Creation(
        dialect,
        length,
        metadata,
        raw_metadata,
        concat,
        parts,
        checksum=checksum,
        has_body=has_body,
    )


def created_reply(
    view: UploadView, location: str, dialect: Dialect, settings: Settings, *, with_body: bool
) -> Reply:
    """The answer to a successful creation (201, or 200 when an IETF body completed it)."""
    headers = [*base_headers(dialect), ("Location", location)]
    if with_body or dialect is Dialect.IETF:
        headers.append(("Upload-Offset", str(view.offset)))
    headers.extend(_expires(view))
    if dialect is Dialect.IETF:
        headers.append(("Upload-Complete", "?1" if view.complete else "?0"))
        limit = upload_limit(settings)
        if limit:
            headers.append(("Upload-Limit", limit))
        return Reply(200 if view.complete else 201, tuple(headers))
    return Reply(201, tuple(headers))


# -- appending ---------------------------------------------------------------------------------


def parse_append(headers: Mapping[str, str], dialect: Dialect) -> Append | Reply:
    """A PATCH's headers, checked; or the reply that refuses it (nothing changes then)."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    expected = PARTIAL_UPLOAD_TYPE if dialect is Dialect.IETF else OFFSET_CONTENT_TYPE
    if content_type != expected:
        return Reply(
            415,
            base_headers(dialect),
            f"PATCH needs Content-Type: {expected}\n".encode(),
        )
    raw_offset = headers.get("upload-offset")
    if raw_offset is None:
        return _bad("Upload-Offset is required", dialect)
    offset = _integer(raw_offset, dialect)
    if isinstance(offset, Reply):
        return offset
    assert offset is not None
    content_length = _integer(headers.get("content-length"), dialect)
    if isinstance(content_length, Reply):
        return content_length
    digest = headers.get("repr-digest")
    if digest is not None and isinstance(_digest(digest), Reply):
        return problem(400, "", "Repr-Digest: no usable value", dialect)
    if dialect is Dialect.IETF:
        complete = _sf_boolean(headers.get("upload-complete"))
        if complete is None:
            return problem(400, "", "Upload-Complete must be ?0 or ?1", dialect)
        length = _integer(headers.get("upload-length"), dialect)
        if isinstance(length, Reply):
            return length
        checksum = _content_digest(headers.get("content-digest"))
        if isinstance(checksum, Reply):
            return checksum
        return Append(dialect, offset, length, complete, checksum, content_length, digest)
    length = _integer(headers.get("upload-length"))
    if isinstance(length, Reply):
        return length
    checksum = _tus_checksum(headers.get("upload-checksum"))
    if isinstance(checksum, Reply):
        return checksum
    return Append(dialect, offset, length, None, checksum, content_length, digest)


def append_problem(view: UploadView, append: Append, max_size: int | None) -> Reply | None:
    """Why this append cannot go ahead against the upload as it is (None: it can)."""
    dialect = append.dialect
    if view.concat == "final":
        return Reply(403, base_headers(dialect), b"a final upload cannot be patched\n")
    if view.complete and dialect is Dialect.IETF:
        return problem(400, "completed-upload", "the upload is already complete", dialect)
    if append.offset != view.offset:
        return mismatch_reply(view.offset, append.offset, dialect)
    length = view.length
    if append.length is not None:
        if length is not None and append.length != length:
            return _inconsistent(dialect, f"the upload's length is {length}, not {append.length}")
        if append.length < view.offset:
            return _inconsistent(dialect, "Upload-Length is below the bytes already received")
        if max_size is not None and append.length > max_size:
            return _too_large(append.length, Settings(max_size=max_size), dialect)
        length = append.length
    if length is not None and append.content_length is not None:
        if append.offset + append.content_length > length:
            return _inconsistent(
                dialect, f"{append.content_length} bytes at {append.offset} go past {length}"
            )
        if (
            dialect is Dialect.IETF
            and append.complete
            and append.offset + append.content_length != length
        ):
            return _inconsistent(dialect, "a complete upload must end at its Upload-Length")
    return None


def appended_reply(view: UploadView, dialect: Dialect) -> Reply:
    """204 after an append: the durable offset (and, IETF, whether the upload is complete)."""
    headers = [*base_headers(dialect), ("Upload-Offset", str(view.offset))]
    headers.extend(_expires(view))
    if dialect is Dialect.IETF:
        headers.append(("Upload-Complete", "?1" if view.complete else "?0"))
        return Reply(200 if view.complete else 204, tuple(headers))
    return Reply(204, tuple(headers))


def mismatch_reply(expected: int, provided: int, dialect: Dialect) -> Reply:
    """409: the client's offset is not the server's; nothing was changed."""
    if dialect is Dialect.IETF:
        return problem(
            409,
            "mismatching-upload-offset",
            f"the upload is at offset {expected}, not {provided}",
            dialect,
            {"expected-offset": expected, "provided-offset": provided},
        ).with_headers(("Upload-Offset", str(expected)))
    return Reply(
        409,
        base_headers(dialect),
        f"Upload-Offset {provided} differs from the upload's offset {expected}\n".encode(),
    )


def checksum_failed(dialect: Dialect) -> Reply:
    """460 (tus) / 400 (IETF): the body did not match its checksum and was discarded."""
    if dialect is Dialect.IETF:
        return problem(400, "", "the body does not match its Content-Digest", dialect)
    return Reply(CHECKSUM_FAILED, base_headers(dialect), b"checksum mismatch; nothing stored\n")


# -- offset retrieval --------------------------------------------------------------------------


def head_reply(view: UploadView, dialect: Dialect, settings: Settings) -> Reply:
    """The answer to HEAD on an upload URL."""
    headers = [*base_headers(dialect), ("Upload-Offset", str(view.offset))]
    if dialect is Dialect.IETF:
        headers.append(("Upload-Complete", "?1" if view.complete else "?0"))
        if view.length is not None:
            headers.append(("Upload-Length", str(view.length)))
        limit = upload_limit(settings)
        if limit:
            headers.append(("Upload-Limit", limit))
        return Reply(204, tuple(headers))
    if view.length is not None:
        headers.append(("Upload-Length", str(view.length)))
    elif view.concat != "final":
        headers.append(("Upload-Defer-Length", "1"))
    if view.metadata_header:
        headers.append(("Upload-Metadata", view.metadata_header))
    if view.concat == "partial":
        headers.append(("Upload-Concat", "partial"))
    elif view.concat == "final":
        headers.append(("Upload-Concat", "final;" + " ".join(view.part_urls)))
    headers.extend(_expires(view))
    return Reply(200, tuple(headers))


# -- errors and helpers ------------------------------------------------------------------------


def problem(
    status: int,
    kind: str,
    detail: str,
    dialect: Dialect,
    extra: Mapping[str, Any] | None = None,
) -> Reply:
    """A refusal: RFC 9457 problem details for the IETF dialect, plain text for tus."""
    if dialect is Dialect.TUS:
        return Reply(
            status,
            (*base_headers(dialect), ("Content-Type", "text/plain; charset=utf-8")),
            f"{detail}\n".encode(),
        )
    document: dict[str, Any] = {"title": detail}
    if kind:
        document["type"] = PROBLEMS + kind
    document.update(extra or {})
    return Reply(
        status,
        (*base_headers(dialect), ("Content-Type", PROBLEM_TYPE)),
        json.dumps(document).encode(),
    )


def cors_headers(
    origin: str | None, settings: Settings, *, preflight: bool
) -> tuple[tuple[str, str], ...]:
    """CORS headers for ``origin`` if it is allowed (none otherwise)."""
    if origin is None or not settings.cors_origins:
        return ()
    if "*" not in settings.cors_origins and origin not in settings.cors_origins:
        return ()
    allowed = "*" if "*" in settings.cors_origins else origin
    headers = [("Access-Control-Allow-Origin", allowed)]
    if allowed != "*":
        headers.append(("Vary", "Origin"))
    if preflight:
        headers += [
            ("Access-Control-Allow-Methods", "POST, HEAD, PATCH, DELETE, GET, OPTIONS"),
            ("Access-Control-Allow-Headers", REQUEST_HEADERS),
            ("Access-Control-Max-Age", "86400"),
        ]
    else:
        headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return tuple(headers)


def upload_id(path_rest: str) -> str | None:
    """The upload id in ``/files/<id>``'s last part, or None if it is not one of ours."""
    return path_rest if _UPLOAD_ID.fullmatch(path_rest) else None


def id_from_url(url: str) -> str | None:
    """The upload id a partial-upload URL (absolute or a path) names, or None."""
    return upload_id(url.rstrip("/").rsplit("/", 1)[-1])


def remote_name(metadata: Mapping[str, str]) -> str | None:
    """The destination name from tus metadata: ``relativePath`` (a path that ends with the
    file's name, as Uppy and ``resume upload`` send it), else ``filename``, else ``name``."""
    relative = metadata.get("relativePath")
    filename = metadata.get("filename") or metadata.get("name")
    if relative and relative not in ("null", "undefined"):
        relative = relative.strip("/")
        if filename and relative != filename and not relative.endswith("/" + filename):
            return f"{relative}/{filename}"
        return relative
    return filename or None


def wants_overwrite(metadata: Mapping[str, str]) -> bool:
    """``overwrite`` metadata of 1/true/yes: replace an existing file (as ``--overwrite``)."""
    return metadata.get("overwrite", "").strip().lower() in ("1", "true", "yes")


def body_checksum(algorithm: str) -> Any:
    """A fresh hasher for a body checksum (tus ``Upload-Checksum``) or digest (sha-256/512)."""
    if algorithm in DIGESTS:
        return DIGESTS[algorithm]()
    return new_hasher(algorithm)


def digest_matches(header: str, digests: Mapping[str, bytes]) -> bool:
    """Whether a ``Repr-Digest`` header agrees with the computed ``digests`` (by algorithm)."""
    parsed = _digest(header)
    if isinstance(parsed, Reply):
        return False
    return all(digests.get(algorithm) == value for algorithm, value in parsed)


def digest_algorithms(header: str) -> list[str]:
    """The algorithms of a ``Repr-Digest`` header that are checked by reading the file back
    (sha-256, sha-512; not :data:`FILE_DIGEST`, which the receiving machine checks)."""
    parsed = _digest(header)
    return [] if isinstance(parsed, Reply) else [a for a, _ in parsed if a in DIGESTS]


def claimed_file_checksum(header: str | None) -> str | None:
    """The :data:`FILE_DIGEST` member of a ``Repr-Digest`` header, as the hex digits resume's
    whole-file checksum is written in; None if it has none."""
    parsed = _digest(header) if header else []
    if isinstance(parsed, Reply):
        return None
    return next((value.hex() for a, value in parsed if a == FILE_DIGEST), None)


def merge_digests(old: str | None, new: str) -> str:
    """``new``'s members over ``old``'s (a later request may name the digest again)."""
    members: dict[str, str] = {}
    for header in (old, new):
        for member in (header or "").split(","):
            name = member.partition("=")[0].strip().lower()
            if name:
                members[name] = member.strip()
    return ", ".join(members.values())


def parse_range(header: str | None, size: int) -> tuple[int, int] | Reply | None:
    """A single ``bytes=a-b`` range as ``(start, end_exclusive)``; None for the whole file;
    416 when it cannot be satisfied. Several ranges are answered with the whole file."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        else:
            start, end = max(size - int(last), 0), size
    except ValueError:
        return None
    if start >= size or start >= end or start < 0:
        return Reply(416, (("Content-Range", f"bytes */{size}"),))
    return start, end


def http_date(unix_time: float) -> str:
    """An RFC 9110 date."""
    return email.utils.formatdate(unix_time, usegmt=True)


def _expires(view: UploadView) -> list[tuple[str, str]]:
    if view.expires is None or view.complete:
        return []
    return [("Upload-Expires", http_date(view.expires))]


def _parse_concat(value: str) -> tuple[str, tuple[str, ...]] | Reply:
    value = value.strip()
    if value == "partial":
        return "partial", ()
    kind, separator, rest = value.partition(";")
    if kind.strip() != "final" or not separator:
        return _bad("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    urls = tuple(rest.split())
    if not urls:
        return _bad("Upload-Concat: final names no partial uploads")
    return "final", urls


def _body_announced(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("0", "")
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _integer(value: str | None, dialect: Dialect = Dialect.TUS) -> int | Reply | None:
    if value is None:
        return None
    value = value.strip()
    if not _INTEGER.fullmatch(value) or int(value) > 2**63 - 1:
        return _bad(f"{value[:40]!r} is not a non-negative integer", dialect)
    return int(value)


def _sf_boolean(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"?1": True, "?0": False}.get(value.strip())


def _tus_checksum(value: str | None) -> tuple[str, bytes] | Reply | None:
    if value is None:
        return None
    try:
        algorithm, expected = parse_checksum_header(value)
    except TusProtocolError as exc:
        return _bad(f"Upload-Checksum: {exc}")
    if algorithm not in SERVER_CHECKSUMS or algorithm not in supported_checksums():
        return _bad(f"Upload-Checksum: unsupported algorithm {algorithm!r}")
    return algorithm, expected


def _content_digest(value: str | None) -> tuple[str, bytes] | Reply | None:
    if value is None:
        return None
    parsed = _digest(value)
    if isinstance(parsed, Reply):
        return problem(400, "", "Content-Digest: no sha-256 or sha-512 value", Dialect.IETF)
    return parsed[0]


def _digest(value: str) -> Sequence[tuple[str, bytes]] | Reply:
    """The sha-256, sha-512 and xxh3-128 members of an RFC 9530 digest dictionary (others are
    ignored)."""
    found = []
    for member in value.split(","):
        algorithm, _, raw = member.strip().partition("=")
        algorithm = algorithm.strip().lower()
        raw = raw.strip()
        if algorithm not in DIGESTS and algorithm != FILE_DIGEST:
            continue
        if len(raw) < 2 or raw[0] != ":" or raw[-1] != ":":
            return _bad("a digest must be a byte sequence (:base64:)", Dialect.IETF)
        try:
            decoded = base64.b64decode(raw[1:-1], validate=True)
        except (binascii.Error, ValueError):
            return _bad("a digest is not valid base64", Dialect.IETF)
        if algorithm == FILE_DIGEST and len(decoded) != FILE_DIGEST_BYTES:
            return _bad(f"a {FILE_DIGEST} digest is {FILE_DIGEST_BYTES} bytes", Dialect.IETF)
        found.append((algorithm, decoded))
    if not found:
        return _bad(f"no sha-256, sha-512 or {FILE_DIGEST} digest", Dialect.IETF)
    return found


def _bad(detail: str, dialect: Dialect = Dialect.TUS) -> Reply:
    return problem(400, "", detail, dialect)


def _inconsistent(dialect: Dialect, detail: str) -> Reply:
    if dialect is Dialect.IETF:
        return problem(400, "inconsistent-upload-length", detail, dialect)
    return problem(413 if "past" in detail else 400, "", detail, dialect)


def _too_large(length: int, settings: Settings, dialect: Dialect) -> Reply:
    return problem(
        413,
        "",
        f"{length} bytes is over the server's limit of {settings.max_size}",
        dialect,
    )


__all__ = [
    "EXTENSIONS",
    "INTEROP_VERSION",
    "PARTIAL_UPLOAD_TYPE",
    "Append",
    "Creation",
    "Dialect",
    "Reply",
    "Settings",
    "UploadView",
    "append_problem",
    "appended_reply",
    "base_headers",
    "checksum_failed",
    "cors_headers",
    "created_reply",
    "dialect_of",
    "effective_method",
    "head_reply",
    "mismatch_reply",
    "options_reply",
    "parse_append",
    "parse_creation",
    "parse_range",
    "problem",
    "remote_name",
    "upload_id",
]
