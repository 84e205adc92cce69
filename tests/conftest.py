"""Shared fixtures: a fakellm upstream per session, a fresh Keyfob data dir per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FakeLLM, KeyfobServer, cli, start_fakellm

OWNER = "owner"
OWNER_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def fakellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeLLM]:
    server = start_fakellm(tmp_path_factory.mktemp("fakellm"))
    yield server
    server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keyfob-data"
    d.mkdir()
    return d


@pytest.fixture
def owned_data_dir(data_dir: Path) -> Path:
    """A data dir whose owner exists (``keyfob init``)."""
    cli(data_dir, "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
    return data_dir


@pytest.fixture
def server(owned_data_dir: Path) -> Iterator[KeyfobServer]:
    """A running ``keyfob serve`` on a free loopback port, with an owner."""
    srv = KeyfobServer(owned_data_dir).start()
    yield srv
    srv.stop()
