"""tus 1.0 headers, pure: capabilities, metadata, checksums, offsets, the status table."""

from __future__ import annotations

import base64
import hashlib

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from resume.protocol import tus


def test_tus_urls_are_http_and_https() -> None:
    """The CLI sends http(s) URLs to the tus client and everything else to the WebSocket one."""
    assert tus.is_tus_url("http://127.0.0.1/files/") and tus.is_tus_url("HTTPS://h/files/")
    assert not tus.is_tus_url("ws://127.0.0.1:8765") and not tus.is_tus_url("http")


def test_capabilities_parse_options_headers_case_insensitively() -> None:
    """Tus-Version, Tus-Extension, Tus-Max-Size and Tus-Checksum-Algorithm are all read."""
    caps = tus.Capabilities.from_headers(
        {
            "tus-version": "1.0.0, 0.2.2",
            "TUS-EXTENSION": "creation,Checksum , concatenation",
            "Tus-Max-Size": "1073741824",
            "Tus-Checksum-Algorithm": "md5,SHA1",
        }
    )
    assert caps.speaks_1_0 and caps.versions == ("1.0.0", "0.2.2")
    assert (
        caps.offers("checksum") and caps.offers("concatenation") and not caps.offers("termination")
    )
    assert caps.max_size == 2**30
    assert caps.checksum_algorithm() == "sha1"


@pytest.mark.parametrize(
    ("offered", "extension", "chosen"),
    [
        ("md5,sha1,sha256", True, "sha1"),
        ("sha256,md5", True, "sha256"),
        ("md5,xxh3,sha1", True, "xxh3"),
        ("crc32", True, None),
        ("sha1", False, None),  # algorithms listed without the extension are not used
    ],
)
def test_checksum_preference(offered: str, extension: bool, chosen: str | None) -> None:
    """xxh3 when listed, else sha1, sha256, md5; nothing the client cannot compute."""
    headers = {"Tus-Version": "1.0.0", "Tus-Checksum-Algorithm": offered}
    headers["Tus-Extension"] = "creation,checksum" if extension else "creation"
    assert tus.Capabilities.from_headers(headers).checksum_algorithm() == chosen


def test_a_malformed_max_size_is_a_protocol_error() -> None:
    """Tus-Max-Size must be a non-negative integer."""
    with pytest.raises(tus.TusProtocolError, match="Tus-Max-Size"):
        tus.Capabilities.from_headers({"Tus-Version": "1.0.0", "Tus-Max-Size": "-5"})


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True), st.text()))
def test_metadata_round_trips(metadata: dict[str, str]) -> None:
    """Any ASCII keys with any Unicode values survive encode then decode."""
    assert tus.decode_metadata(tus.encode_metadata(metadata)) == metadata


def test_metadata_encoding_matches_the_spec_example() -> None:
    """`key base64(value)` pairs joined by commas; a key may have no value."""
    assert tus.encode_metadata({"filename": "world_domination_plan.pdf"}) == (
        "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg=="
    )
    assert tus.decode_metadata("is_confidential,filename d29ybGQ=") == {
        "is_confidential": "",
        "filename": "world",
    }
    with pytest.raises(tus.TusProtocolError):
        tus.encode_metadata({"bad key": "x"})
    with pytest.raises(tus.TusProtocolError):
        tus.decode_metadata("filename ***")


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5", "sha512"])
def test_checksum_header_carries_the_base64_digest(algorithm: str) -> None:
    """`<algorithm> <base64 digest>`, and the receiving side parses it back."""
    data = b"tus checksum"
    header = tus.checksum_header(algorithm, data)
    expected = hashlib.new(algorithm, data).digest()
    assert header == f"{algorithm} {base64.b64encode(expected).decode()}"
    assert tus.parse_checksum_header(header) == (algorithm, expected)


def test_xxh3_is_the_64_bit_digest() -> None:
    """The `xxh3` algorithm is xxh3-64, big-endian, as resume's own chunks use."""
    assert tus.digest("xxh3", b"abc") == xxhash.xxh3_64(b"abc").digest()
    with pytest.raises(tus.TusProtocolError):
        tus.digest("crc32", b"abc")


def test_request_headers() -> None:
    """Creation, partial creation with a body, final concatenation and PATCH headers."""
    assert tus.base_headers("t") == {"Tus-Resumable": "1.0.0", "Authorization": "Bearer t"}
    assert tus.creation_headers(10, partial=True, with_body=True) == {
        "Upload-Length": "10",
        "Upload-Concat": "partial",
        "Content-Type": "application/offset+octet-stream",
    }
    assert tus.final_headers(["http://h/files/a", "http://h/files/b"])["Upload-Concat"] == (
        "final;http://h/files/a http://h/files/b"
    )
    assert tus.patch_headers(5, "sha1 xyz") == {
        "Upload-Offset": "5",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Checksum": "sha1 xyz",
    }


def test_offsets_are_read_strictly() -> None:
    """A missing, negative or non-numeric Upload-Offset is a protocol error."""
    assert tus.upload_offset({"Upload-Offset": "42"}) == 42
    assert tus.upload_length({"upload-length": "7"}) == 7 and tus.upload_length({}) is None
    for bad in ({}, {"Upload-Offset": "-1"}, {"Upload-Offset": "4e2"}, {"Upload-Offset": ""}):
        with pytest.raises(tus.TusProtocolError):
            tus.upload_offset(bad)


@pytest.mark.parametrize(
    ("status", "branch"),
    [
        (200, tus.Outcome.OK),
        (204, tus.Outcome.OK),
        (409, tus.Outcome.RESYNC),
        (460, tus.Outcome.RESEND),
        (404, tus.Outcome.GONE),
        (410, tus.Outcome.GONE),
        (423, tus.Outcome.RETRY),
        (429, tus.Outcome.RETRY),
        (500, tus.Outcome.RETRY),
        (503, tus.Outcome.RETRY),
        (501, tus.Outcome.FATAL),
        (401, tus.Outcome.FATAL),
        (403, tus.Outcome.FATAL),
        (413, tus.Outcome.FATAL),
        (412, tus.Outcome.FATAL),
        (400, tus.Outcome.FATAL),
    ],
)
def test_every_status_takes_its_branch(status: int, branch: tus.Outcome) -> None:
    """The status table of the client, one row per status it handles."""
    assert tus.outcome(status) is branch


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 10**7))
def test_covered_chunks_are_whole_chunks_below_the_offset(
    offset: int, size: int, chunk: int
) -> None:
    """Chunks counted as held end at or below the offset; the next one does not."""
    offset = min(offset, size)
    covered = tus.covered_chunks(offset, size, chunk)
    assert min(covered * chunk, size) <= offset
    if covered < -(-size // chunk):
        assert min((covered + 1) * chunk, size) > offset
