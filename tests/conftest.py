"""Shared fixtures: a fakellm upstream per session, a fresh Keyfob data dir per test, and
the database a test's Keyfob runs on (SQLite unless the test asks for both engines)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import FakeLLM, KeyfobServer, cli, start_fakellm

# CLI tables (Rich) take the terminal's width; pytest-xdist's workers have none, and a
# narrow default would cut the names and ids the tests look for
os.environ.setdefault("COLUMNS", "200")

OWNER = "owner"
OWNER_PASSWORD = "correct horse battery staple"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _in_own_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to the end in a loop of its own thread: a sync fixture must not touch
    the loop of the test it serves (async tests, Starlette's portal)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (Keyfob's own SQLite file in its data dir) or, for ``@both_databases`` tests'
    PostgreSQL run, the URL of a database created for this test and dropped after it."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    name = f"keyfob_test_{secrets.token_hex(6)}"
    _in_own_loop(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _in_own_loop(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


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
