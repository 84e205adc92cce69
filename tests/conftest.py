"""Shared fixtures: a fakellm upstream per session, a fresh Keyfob data dir per test."""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="session")
def owned_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir made by ``keyfob init`` (migrations, keys, the owner's argon2 hash),
    copied for every test that needs an owner: a copy costs milliseconds, an init
    seconds."""
    template = tmp_path_factory.mktemp("owned-template") / "keyfob-data"
    template.mkdir()
    cli(template, "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
    return template


@pytest.fixture
def owned_data_dir(data_dir: Path, owned_template: Path) -> Path:
    """A data dir whose owner exists (a private copy of the ``keyfob init`` template)."""
    shutil.copytree(owned_template, data_dir, dirs_exist_ok=True)
    return data_dir


@pytest.fixture
def server(owned_data_dir: Path) -> Iterator[KeyfobServer]:
    """A running ``keyfob serve`` on a free loopback port, with an owner."""
    srv = KeyfobServer(owned_data_dir).start()
    yield srv
    srv.stop()
