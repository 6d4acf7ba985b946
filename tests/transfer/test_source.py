"""Reading chunks, checksums and fingerprints of local files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from resume.errors import SourceChanged, SourceError
from resume.protocol.ledger import Ledger
from resume.transfer.source import ChunkSource, Fingerprint, chunk_checksum, file_checksum


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1_000_003))
    return path


async def test_chunks_reassemble_the_file(data_file: Path) -> None:
    """Reading every chunk in order gives back the file, with a header gap when asked."""
    ledger = Ledger(data_file.stat().st_size, 65_536)
    parts = []
    async with ChunkSource(data_file) as source:
        for i in range(ledger.chunk_count):
            buffer = await source.read(ledger.spec(i), prefix=5)
            assert bytes(buffer[:5]) == b"\0" * 5
            parts.append(bytes(buffer[5:]))
    assert b"".join(parts) == data_file.read_bytes()


async def test_file_checksum_is_xxh3_128_of_the_content(data_file: Path) -> None:
    """The whole-file checksum equals xxh3-128 over all bytes, whatever the buffer size."""
    expected = xxhash.xxh3_128_hexdigest(data_file.read_bytes())
    assert await file_checksum(data_file) == expected
    assert await file_checksum(data_file, buffer_size=4096) == expected


def test_chunk_checksum_detects_one_flipped_bit() -> None:
    """A single flipped bit changes the chunk checksum."""
    data = bytearray(os.urandom(4096))
    before = chunk_checksum(data)
    data[100] ^= 1
    assert chunk_checksum(data) != before


async def test_truncated_file_is_source_changed(data_file: Path) -> None:
    """A file shorter than its chunks say raises SourceChanged, not a short chunk."""
    ledger = Ledger(data_file.stat().st_size, 65_536)
    with data_file.open("r+b") as f:
        f.truncate(10)
    async with ChunkSource(data_file) as source:
        with pytest.raises(SourceChanged, match="shorter"):
            await source.read(ledger.spec(3))


def test_fingerprint_detects_edit_and_replace(data_file: Path, tmp_path: Path) -> None:
    """Same size with a new mtime, or a different file moved into place, both count as changed."""
    original = Fingerprint.of(data_file)
    original.check_against(data_file)
    with data_file.open("r+b") as f:
        f.write(b"x")
    os.utime(data_file, ns=(original.mtime_ns + 10**9, original.mtime_ns + 10**9))
    with pytest.raises(SourceChanged, match="modification time") as excinfo:
        original.check_against(data_file, restart_hint="use --restart")
    assert "--restart" in str(excinfo.value)

    other = tmp_path / "other.bin"
    other.write_bytes(data_file.read_bytes())
    os.utime(other, ns=(original.mtime_ns, original.mtime_ns))
    os.replace(other, data_file)
    with pytest.raises(SourceChanged, match="inode"):
        original.check_against(data_file)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    """Fingerprinting a path that does not exist says so plainly."""
    with pytest.raises(SourceError, match="no such file"):
        Fingerprint.of(tmp_path / "nope")
