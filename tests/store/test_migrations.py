"""Alembic migrations: models and revisions agree, upgrades are idempotent and race-free."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from resume.errors import SchemaOutOfDate
from resume.store import migrate, open_store
from resume.store.engine import make_engine


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    """`alembic check` finds nothing the models have that the migrations lack."""
    with open_store(db_url) as store:
        migrate.check(store.engine)


def test_open_creates_the_schema_with_the_seed_columns(db_url: str) -> None:
    """file_id, offset, checksum and timestamp exist per transfer and per chunk."""
    with open_store(db_url) as store:
        inspector = inspect(store.engine)
        transfer_cols = {c["name"] for c in inspector.get_columns("transfers")}
        chunk_cols = {c["name"] for c in inspector.get_columns("chunks")}
    assert {
        "file_id",
        "offset",
        "checksum",
        "timestamp",
        "state",
        "size",
        "mtime_ns",
    } <= transfer_cols
    assert {"file_id", "chunk_index", "offset", "checksum", "timestamp", "state"} <= chunk_cols


def test_sqlite_runs_in_wal_mode_with_foreign_keys(db_url: str) -> None:
    """The pragmas the state rules ask for are set on every connection."""
    with open_store(db_url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    """Reopening an up-to-date database changes nothing."""
    with open_store(db_url) as store:
        first = migrate.current_revision(store.engine)
    with open_store(db_url) as store:
        assert migrate.current_revision(store.engine) == first == migrate.head_revision()


def test_concurrent_first_opens_do_not_race(tmp_path: Path) -> None:
    """Eight threads opening a brand-new database at once all succeed on one schema."""
    db = tmp_path / "race.db"
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store(db).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_database_from_a_newer_release_is_refused(db_url: str) -> None:
    """An unknown revision is a clear SchemaOutOfDate, not a crash or a silent downgrade."""
    open_store(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num='9999_future'")
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match="newer release"):
        open_store(db_url)


def test_downgrade_to_base_and_back(db_url: str) -> None:
    """Every revision's downgrade works, so a bad release can be rolled back."""
    from alembic import command

    engine = make_engine(db_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    assert migrate.current_revision(engine) is None
    assert migrate.upgrade(engine) == migrate.head_revision()
    engine.dispose()


def test_head_constant_matches_the_newest_migration() -> None:
    """The fast path that skips Alembic compares against the real newest revision."""
    assert migrate.head_revision() == migrate.HEAD_REVISION
