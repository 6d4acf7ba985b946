"""PostgreSQL for tests: the server at ``$RESUME_TEST_POSTGRES`` (default: this machine's).

Every test that needs PostgreSQL gets a scratch database of its own, created on that server
and dropped afterwards (:func:`scratch_database`). Where no PostgreSQL answers, the tests skip
with a line saying why, unless ``RESUME_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns that
into a failure: CI must not skip them silently.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def base_url() -> str:
    """The SQLAlchemy URL of a database on the test server (used only to create others)."""
    return os.environ.get("RESUME_TEST_POSTGRES") or DEFAULT_URL


@functools.cache
def unavailable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'resume-ws[postgres]')"
    try:
        with psycopg.connect(_conninfo(base_url()), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL at {_safe(base_url())}: {first}"
    return None


def required() -> bool:
    """Whether a missing PostgreSQL is a failure rather than a skip (CI)."""
    return os.environ.get("RESUME_REQUIRE_POSTGRES", "") not in ("", "0")


def skip_or_fail() -> None:
    """Skip (or, with RESUME_REQUIRE_POSTGRES, fail) the calling test if PostgreSQL is away."""
    import pytest

    why = unavailable()
    if why is None:
        return
    if required():
        pytest.fail(f"RESUME_REQUIRE_POSTGRES is set but {why}")
    pytest.skip(why)


@contextlib.contextmanager
def scratch_database(prefix: str = "resume_test") -> Iterator[str]:
    """A new, empty database on the test server; yields its SQLAlchemy URL; dropped after."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _conninfo(base_url())
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _conninfo(url: str) -> str:
    from resume.store.notify import libpq_conninfo

    return libpq_conninfo(url)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
