"""Persistence of the partial uploads a ``--parallel`` tus transfer is cut into (client side).

A transfer's own upload URL lives in ``transfers.upload_url``; its chunks in ``chunks``, like
every transfer's. Statements are portable SQL through :mod:`resume.store.sql` (for a SQLite
file: the standard library's ``sqlite3``), so ``resume upload`` to a tus server does not import
SQLAlchemy either; the table is ``tus_parts`` of :mod:`resume.store.models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resume.store.sql import Database
from resume.store.states import utcnow


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One partial upload: chunks ``[first_chunk, end_chunk)`` of the file, and its URL."""

    part: int
    first_chunk: int
    end_chunk: int
    url: str | None


class TusPartRepository:
    """Reads and writes ``tus_parts``; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def parts(self, file_id: str) -> list[PartRecord]:
        """The parts of a transfer in order; empty for a transfer sent as one upload."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT part, first_chunk, end_chunk, url FROM tus_parts "
                "WHERE file_id = :file_id ORDER BY part",
                {"file_id": file_id},
            )
        return [
            PartRecord(row["part"], row["first_chunk"], row["end_chunk"], row["url"])
            for row in rows
        ]

    def replace(self, file_id: str, parts: Sequence[PartRecord]) -> None:
        """Set the layout of a transfer's parts (dropping any earlier one)."""
        now = utcnow()
        with self.db.transaction() as tx:
            tx.run("DELETE FROM tus_parts WHERE file_id = :file_id", {"file_id": file_id})
            if parts:
                tx.run_many(
                    "INSERT INTO tus_parts (file_id, part, first_chunk, end_chunk, url, "
                    "timestamp) VALUES (:file_id, :part, :first_chunk, :end_chunk, :url, :now)",
                    [
                        {
                            "file_id": file_id,
                            "part": p.part,
                            "first_chunk": p.first_chunk,
                            "end_chunk": p.end_chunk,
                            "url": p.url,
                            "now": now,
                        }
                        for p in parts
                    ],
                )

    def set_url(self, file_id: str, part: int, url: str) -> None:
        """Record the URL the server gave a part when it created it."""
        with self.db.transaction() as tx:
            tx.run(
                "UPDATE tus_parts SET url = :url, timestamp = :now "
                "WHERE file_id = :file_id AND part = :part",
                {"url": url, "now": utcnow(), "file_id": file_id, "part": part},
            )
