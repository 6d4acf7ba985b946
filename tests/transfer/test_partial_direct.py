"""PartialFile writes whole aligned pages with O_DIRECT and the rest through the page cache:
whatever the offsets and lengths, what is read back is exactly what was written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resume.transfer import partial as partial_module
from resume.transfer.partial import DIRECT_ALIGN, DIRECT_MIN, PartialFile

SIZE = 3 * 2**20 + 12345

writes = st.lists(
    st.tuples(
        st.integers(0, SIZE - 1),  # offset
        st.integers(1, 2 * DIRECT_MIN + 3 * DIRECT_ALIGN + 7),  # length
        st.integers(0, 255),  # fill seed
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(writes)
def test_reads_back_what_was_written_at_any_offsets(tmp_path_factory, plan) -> None:
    path: Path = tmp_path_factory.mktemp("direct") / "f.part"
    partial = PartialFile(path, SIZE)
    partial.create()
    expected = bytearray(SIZE)
    try:
        for offset, length, seed in plan:
            length = min(length, SIZE - offset)
            data = bytes((seed + i * 7) % 256 for i in range(length))
            partial.write(offset, memoryview(data))
            expected[offset : offset + length] = data
        partial.sync()
    finally:
        partial.close()
    assert path.read_bytes() == bytes(expected)


def test_large_aligned_writes_really_go_direct(tmp_path: Path) -> None:
    """On a file system that takes O_DIRECT, a big write opens the direct descriptor (so the
    property test above exercises that path, not only the page cache)."""
    if not partial_module.DIRECT_IO:
        pytest.skip("RESUME_DIRECT_IO=0")
    partial = PartialFile(tmp_path / "g.part", 4 * 2**20)
    partial.create()
    try:
        partial.write(1000, os.urandom(2**20))
        if not partial.direct:
            pytest.skip("this file system refuses O_DIRECT (tmpfs?)")
        assert partial.direct_fd >= 0
    finally:
        partial.close()
