"""An HTTP response as the HTTP clients return it, whichever library read it.

Plain ``http://`` requests are read with h11 (:mod:`resume.net.bulk`), ``https://`` and proxied
ones with httpx; both come back as a :class:`Response`, so callers never see either library's
types (and a run that only speaks plain HTTP never imports httpx: ~90 ms of its start).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field


class Headers(Mapping[str, str]):
    """Response headers; names match case-insensitively, repeated ones are joined by ", "."""

    __slots__ = ("_values",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self._values!r})"


@dataclass(frozen=True, slots=True)
class Response:
    """Status, headers and the whole body of one response."""

    status_code: int
    headers: Headers = field(default_factory=Headers)
    content: bytes = b""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")
