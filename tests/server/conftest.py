"""Fixtures for the server tests: certificates, and the in-process server of the upload tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tls_certs import Certs, make_certs
from tests.transfer.conftest import client_store, server, start_server

__all__ = ["certs", "client_store", "server", "start_server"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, server and client certificates, and an unrelated CA (made once per session)."""
    directory: Path = tmp_path_factory.mktemp("certs")
    return make_certs(directory)
