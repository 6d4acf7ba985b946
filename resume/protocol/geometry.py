"""Where the chunks of a file lie: the one copy of this arithmetic. Sans-I/O.

Both ends cut a file the same way: chunk ``i`` starts at ``i * chunk_size`` and is
``chunk_size`` bytes long, except the last, which holds the rest; an empty file has no chunks.
The client ledger, the server's upload machine and every wire check use :class:`Geometry`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

MAX_FILE_SIZE = 2**63 - 1  # a signed 64-bit offset: what the store and the OS can hold
MAX_CHUNK_SIZE = 2**31 - 1
MAX_CHUNKS = 2**32  # the wire carries a chunk index in 32 bits


class GeometryError(ValueError):
    """A size, chunk size or chunk position that cannot be right."""


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """Where one chunk lies in the file."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a file of ``size`` bytes is cut into chunks of ``chunk_size``."""

    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_FILE_SIZE:
            raise GeometryError(f"file size must be 0..{MAX_FILE_SIZE}, got {self.size}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise GeometryError(f"chunk size must be 1..{MAX_CHUNK_SIZE}, got {self.chunk_size}")
        if self.count > MAX_CHUNKS:
            raise GeometryError(
                f"{self.size} bytes in chunks of {self.chunk_size} is over {MAX_CHUNKS} chunks"
            )

    @property
    def count(self) -> int:
        """How many chunks the file has."""
        return -(-self.size // self.chunk_size)

    def spec(self, index: int) -> ChunkSpec:
        """Offset and length of chunk ``index``."""
        self.check_index(index)
        offset = index * self.chunk_size
        return ChunkSpec(index, offset, min(self.chunk_size, self.size - offset))

    def check_index(self, index: int) -> None:
        """Raise :class:`GeometryError` unless ``index`` names a chunk of this file."""
        if not 0 <= index < self.count:
            raise GeometryError(f"chunk index {index} out of range 0..{self.count - 1}")

    def problem(self, index: int, offset: int, length: int) -> str | None:
        """Why a chunk claiming this place is not one of ours; None when it fits exactly."""
        if not 0 <= index < self.count:
            return f"chunk index {index} out of range 0..{self.count - 1}"
        spec = self.spec(index)
        if offset != spec.offset:
            return f"chunk {index} at offset {offset}, expected {spec.offset}"
        if length != spec.length:
            return f"chunk {index} has {length} bytes, expected {spec.length}"
        return None

    def contiguous(self, held: Container[int]) -> int:
        """How many leading chunks are in ``held``."""
        n = 0
        while n < self.count and n in held:
            n += 1
        return n

    def contiguous_offset(self, held: Container[int]) -> int:
        """Bytes from the start of the file covered by ``held`` without a hole."""
        return min(self.contiguous(held) * self.chunk_size, self.size)

    def bytes_in(self, indexes: Iterable[int]) -> int:
        """The total length of the chunks ``indexes``."""
        return sum(self.spec(i).length for i in indexes)


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has; an empty file has none."""
    return Geometry(size, chunk_size).count
