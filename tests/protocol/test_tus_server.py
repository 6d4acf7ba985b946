"""The pure tus / IETF-draft server core: any header values give a parsed request or a reply,
never an exception; the append checks refuse exactly what would break the offset rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resume.protocol import tus_server as tus
from resume.protocol.tus_server import Append, Dialect, Reply, Settings, UploadView

HEADER_NAMES = [
    "upload-length",
    "upload-defer-length",
    "upload-metadata",
    "upload-concat",
    "upload-offset",
    "upload-checksum",
    "content-type",
    "content-length",
    "upload-complete",
    "repr-digest",
    "content-digest",
    "tus-resumable",
    "upload-draft-interop-version",
    "transfer-encoding",
]
headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES), st.text(max_size=60), max_size=len(HEADER_NAMES)
)


@given(headers, st.sampled_from(list(Dialect)))
def test_creation_parsing_never_raises(values: dict[str, str], dialect: Dialect) -> None:
    result = tus.parse_creation(values, dialect, Settings(max_size=2**30))
    assert isinstance(result, Reply | tus.Creation)
    if isinstance(result, Reply):
        assert 400 <= result.status < 500


@given(headers, st.sampled_from(list(Dialect)))
def test_append_parsing_never_raises(values: dict[str, str], dialect: Dialect) -> None:
    result = tus.parse_append(values, dialect)
    assert isinstance(result, Reply | Append)
    if isinstance(result, Append):
        assert result.offset >= 0


@given(st.text(max_size=40), st.sampled_from(["GET", "PATCH", "POST", "OPTIONS"]))
def test_dialect_is_tus_ietf_or_a_refusal(version: str, method: str) -> None:
    result = tus.dialect_of(method, {"tus-resumable": version})
    if version.strip() == "1.0.0":
        assert result is Dialect.TUS
    else:
        assert isinstance(result, Reply) and result.status == 412
        assert ("Tus-Version", "1.0.0") in result.headers


@given(
    offset=st.integers(0, 100),
    provided=st.integers(0, 100),
    length=st.one_of(st.none(), st.integers(0, 100)),
    body=st.one_of(st.none(), st.integers(0, 50)),
)
def test_an_append_is_allowed_only_at_the_offset_and_within_the_length(
    offset: int, provided: int, length: int | None, body: int | None
) -> None:
    view = UploadView("a" * 32, offset, length, complete=False)
    problem = tus.append_problem(view, Append(Dialect.TUS, provided, content_length=body), None)
    if provided != offset:
        assert problem is not None and problem.status == 409
    elif length is not None and body is not None and offset + body > length:
        assert problem is not None and problem.status == 413
    else:
        assert problem is None


def test_a_mismatch_in_the_draft_names_both_offsets() -> None:
    reply = tus.mismatch_reply(5, 2, Dialect.IETF)
    assert reply.status == 409
    assert b'"expected-offset": 5' in reply.body and b'"provided-offset": 2' in reply.body


@given(st.text(max_size=30), st.integers(0, 1000))
def test_ranges_are_within_the_file_or_refused(header: str, size: int) -> None:
    result = tus.parse_range(header, size)
    if isinstance(result, tuple):
        start, end = result
        assert 0 <= start < end <= size
    elif isinstance(result, Reply):
        assert result.status == 416


def test_remote_names_from_metadata() -> None:
    assert tus.remote_name({"filename": "a.txt"}) == "a.txt"
    assert tus.remote_name({"filename": "a.txt", "relativePath": "d/a.txt"}) == "d/a.txt"
    assert tus.remote_name({"filename": "a.txt", "relativePath": "d"}) == "d/a.txt"
    assert tus.remote_name({"filename": "a.txt", "relativePath": "null"}) == "a.txt"
    assert tus.remote_name({"name": "b"}) == "b"
    assert tus.remote_name({}) is None
