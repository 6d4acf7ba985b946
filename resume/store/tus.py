"""Persistence of the partial uploads a ``--parallel`` tus transfer is cut into (client side).

A transfer's own upload URL lives in ``transfers.upload_url``; its chunks in ``chunks``, like
every transfer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select, update

from resume.store.errors import store_errors
from resume.store.models import TusPart, utcnow


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One partial upload: chunks ``[first_chunk, end_chunk)`` of the file, and its URL."""

    part: int
    first_chunk: int
    end_chunk: int
    url: str | None


class TusPartRepository:
    """Reads and writes ``tus_parts``; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def parts(self, file_id: str) -> list[PartRecord]:
        """The parts of a transfer in order; empty for a transfer sent as one upload."""
        query = (
            select(TusPart.part, TusPart.first_chunk, TusPart.end_chunk, TusPart.url)
            .where(TusPart.file_id == file_id)
            .order_by(TusPart.part)
        )
        with store_errors(), self.engine.begin() as conn:
            return [PartRecord(*row) for row in conn.execute(query)]

    def replace(self, file_id: str, parts: Sequence[PartRecord]) -> None:
        """Set the layout of a transfer's parts (dropping any earlier one)."""
        now = utcnow()
        with store_errors(), self.engine.begin() as conn:
            conn.execute(delete(TusPart).where(TusPart.file_id == file_id))
            if parts:
                conn.execute(
                    TusPart.__table__.insert(),
                    [
                        {
                            "file_id": file_id,
                            "part": p.part,
                            "first_chunk": p.first_chunk,
                            "end_chunk": p.end_chunk,
                            "url": p.url,
                            "timestamp": now,
                        }
                        for p in parts
                    ],
                )

    def set_url(self, file_id: str, part: int, url: str) -> None:
        """Record the URL the server gave a part when it created it."""
        with store_errors(), self.engine.begin() as conn:
            conn.execute(
                update(TusPart)
                .where(TusPart.file_id == file_id, TusPart.part == part)
                .values(url=url, timestamp=utcnow())
            )
