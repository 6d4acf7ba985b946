"""Run the Alembic migrations from inside the application (no ini file needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

from resume.errors import SchemaOutOfDate


def migrations_dir() -> Path:
    """The Alembic script directory: inside the wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaOutOfDate(f"Alembic migrations not found next to {package}; broken install?")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at our migrations, sharing ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of `resume` knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the database to head; a no-op (no write lock taken) when it is already there.

    Runs inside one transaction that holds the write lock, so two processes opening a new
    database at once cannot both create the tables.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None and not _known(script, current):
        raise SchemaOutOfDate(
            f"database is at revision {current}, unknown to this version of resume "
            f"(head {head}); it was written by a newer release"
        )
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    return head


def check(engine: Engine) -> None:
    """Raise if the models hold changes no migration describes (``alembic check``)."""
    with engine.begin() as conn:
        command.check(alembic_config(conn))


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
