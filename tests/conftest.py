"""Fixtures shared by every test: temporary state databases and a clean environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from resume.store import Store, open_store


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the real ~/.local/state or a RESUME_DB from the environment."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("RESUME_DB", raising=False)
    monkeypatch.delenv("RESUME_TOKEN", raising=False)
    monkeypatch.delenv("RESUME_SERVER_DB", raising=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", help="also run the long multi-node soaks (marker soak)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="a long soak: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a scratch PostgreSQL database, dropped after the test (tests/pg.py)."""
    from tests import pg

    pg.skip_or_fail()
    with pg.scratch_database() as url:
        yield url


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL for a fresh SQLite file in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """An open, migrated store on a fresh SQLite file."""
    with open_store(db_url) as s:
        yield s
