"""Run the Alembic migrations from inside the application (no ini file needed).

Alembic (and SQLAlchemy, for a SQLite file) is imported only when a database actually needs
migrating: every `resume` command opens the store, and importing them costs more than the rest
of a quick command. :func:`ensure_head` asks the database its revision with plain SQL first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from resume.errors import SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import Connection, Engine

    from resume.store import Store

# The newest revision in migrations/versions; a test keeps the two equal.
HEAD_REVISION = "0010"


def migrations_dir() -> Path:
    """The Alembic script directory: inside the wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaOutOfDate(f"Alembic migrations not found next to {package}; broken install?")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at our migrations, sharing ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    """The migration scripts as Alembic sees them."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this version of `resume` knows, read from the scripts."""
    head = script_directory().get_current_head()
    assert head is not None, "no migrations found"
    return head


def ensure_head(store: Store) -> None:
    """Migrate ``store`` to head unless it is there already (checked without Alembic)."""
    with store.db.transaction() as tx:
        tables = tx.rows(
            "SELECT count(*) AS n FROM sqlite_master WHERE name = 'alembic_version'"
            if store.url.startswith("sqlite")
            else "SELECT count(*) AS n FROM information_schema.tables "
            "WHERE table_name = 'alembic_version'"
        )
        if tables[0]["n"]:
            rows = tx.rows("SELECT version_num FROM alembic_version")
            if rows and rows[0]["version_num"] == HEAD_REVISION:
                return
    from resume.store.engine import make_engine
    from resume.store.errors import store_errors

    if not store.readonly:
        with store_errors():
            upgrade(store.engine)
        return
    # A reader (`resume status`) may open a database another process is creating right now.
    # Its read transaction could never become the migration's write transaction (SQLite says
    # "locked" at once): migrate through a writer, which waits its turn and then finds the
    # schema at head.
    writer = make_engine(store.url)
    try:
        with store_errors():
            upgrade(writer)
    finally:
        writer.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as conn:
        return _revision_on(conn)


def upgrade(engine: Engine) -> str:
    """Bring the database to head; a no-op (no write lock, no Alembic) when it is there.

    Runs inside one transaction that holds the write lock (SQLite) or an advisory lock
    (PostgreSQL), and reads the revision again under it: several processes or server nodes
    opening a new database at once migrate it once; the others wait, then find it at head.
    """
    if current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION
    from alembic import command

    from resume.store.shared import xact_lock

    script = script_directory()
    head = script.get_current_head()
    with engine.begin() as conn:
        xact_lock(conn, "resume.migrate")
        current = _revision_on(conn)
        if current == HEAD_REVISION:
            return current
        if current is not None and not _known(script, current):
            raise SchemaOutOfDate(
                f"database is at revision {current}, unknown to this version of resume "
                f"(head {head}); it was written by a newer release"
            )
        command.upgrade(alembic_config(conn), "head")
    return head or HEAD_REVISION


def _revision_on(conn: Connection) -> str | None:
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check(engine: Engine) -> None:
    """Raise if the models hold changes no migration describes (``alembic check``)."""
    from alembic import command

    with engine.begin() as conn:
        command.check(alembic_config(conn))


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
