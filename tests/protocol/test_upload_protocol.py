"""Upload wire format: chunk headers, control messages, remote name rules."""

from __future__ import annotations

import pytest

from resume.errors import ProtocolError
from resume.protocol import frames
from resume.protocol.upload import (
    HEADER_SIZE,
    Begin,
    ChunkHeader,
    held_from_json,
    held_to_json,
    new_file_id,
    parse_chunk,
    remote_name_problem,
)


def test_chunk_header_round_trips_with_payload() -> None:
    """pack_into then parse gives back the header and exactly the payload bytes."""
    header = ChunkHeader(new_file_id(), 7, 7 * 4096, "0123456789abcdef")
    frame = bytearray(HEADER_SIZE + 5)
    frame[HEADER_SIZE:] = b"hello"
    header.pack(into=frame)
    parsed, payload = parse_chunk(bytes(frame))
    assert parsed == header
    assert bytes(payload) == b"hello"
    assert header.pack() == bytes(frame[:HEADER_SIZE])


@pytest.mark.parametrize(
    "frame", [b"", b"\x01" * (HEADER_SIZE - 1), b"\x02" + b"\x00" * HEADER_SIZE]
)
def test_short_or_unknown_binary_frames_are_protocol_errors(frame: bytes) -> None:
    """A truncated header or an unknown frame kind closes with 1002."""
    with pytest.raises(ProtocolError) as excinfo:
        parse_chunk(frame)
    assert excinfo.value.close_code == 1002


@pytest.mark.parametrize(
    ("text", "code"),
    [("not json", 1007), ("[1,2]", 1002), ('{"no": "type"}', 1002), (b"\x00binary", 1003)],
)
def test_bad_control_messages_carry_the_right_close_code(text: str | bytes, code: int) -> None:
    """Invalid JSON is 1007, a wrong shape 1002, binary where text is due 1003."""
    with pytest.raises(ProtocolError) as excinfo:
        frames.decode(text)
    assert excinfo.value.close_code == code


def test_begin_validates_its_fields() -> None:
    """Sizes must be integers (not booleans) and the file id 32 hex digits."""
    good = Begin(new_file_id(), "a/b.bin", 10, 4)
    assert Begin.parse(frames.decode(frames.encode(good.to_json()))) == good
    for bad in (
        {**good.to_json(), "size": True},
        {**good.to_json(), "size": -1},
        {**good.to_json(), "chunk_size": 0},
        {**good.to_json(), "file_id": "../../etc"},
        {**good.to_json(), "name": 5},
    ):
        with pytest.raises(ProtocolError):
            Begin.parse(bad)


def test_held_lists_round_trip_and_reject_garbage() -> None:
    """The [[index, checksum], ...] form parses back; malformed entries are refused."""
    held = {0: "aa", 5: "bb"}
    assert held_from_json({"type": "state", "held": held_to_json(held)}, "held") == held
    for bad in ([[0]], [["0", "aa"]], [[True, "aa"]], "nope", [[0, 1]]):
        with pytest.raises(ProtocolError):
            held_from_json({"type": "state", "held": bad}, "held")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "dir/",
        "nul\x00byte",
        "back\\slash",
        ".resume/server.db",
        "tab\tname",
        "x" * 256,
    ],
)
def test_names_that_could_escape_or_confuse_are_refused(name: str) -> None:
    """Absolute, '..', empty components, NUL, reserved and control characters are refused."""
    assert remote_name_problem(name) is not None


@pytest.mark.parametrize(
    "name", ["a.bin", "dir/sub/file.tar.gz", "ünïcode/ファイル", "..hidden", "a..b"]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    """Plain relative paths, unicode and dots inside names are fine."""
    assert remote_name_problem(name) is None
