"""Fixtures for the interop tests: third-party tus peers as real processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.peers import (
    ListeningProcess,
    hostile_server,
    node_packages,
    node_problem,
    node_tus_server,
    tuspy_server,
)


@pytest.fixture(scope="session")
def node_peers() -> Path:
    """The installed Node packages (tus-js-client, @tus/server, @tus/file-store) and scripts.

    Skips only when node/npm are missing; a failing ``npm ci`` fails the tests.
    """
    problem = node_problem()
    if problem is not None:
        pytest.skip(problem)
    return node_packages()


@pytest.fixture
def tuspy(tmp_path: Path) -> Iterator[ListeningProcess]:
    """tuspyserver (PyPI) under uvicorn; its files in ``tmp_path / "tuspy"``."""
    with tuspy_server(tmp_path / "tuspy", tmp_path / "tuspy.log") as server:
        yield server


@pytest.fixture
def tus_node(node_peers: Path, tmp_path: Path) -> Iterator[ListeningProcess]:
    """@tus/server with @tus/file-store under node; its files in ``tmp_path / "tusnode"``."""
    with node_tus_server(node_peers, tmp_path / "tusnode", tmp_path / "tusnode.log") as server:
        yield server


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Callable[..., ListeningProcess]]:
    """Start fault-scripted tus servers; each is killed after the test."""
    started: list[ListeningProcess] = []

    def start(faults: dict[str, Any] | None = None, port: int = 0) -> ListeningProcess:
        n = len(started)
        server = hostile_server(
            tmp_path / f"hostile{n}", tmp_path / f"hostile{n}.log", faults, port
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
