"""Storage behind one interface: the same repositories on SQLite and PostgreSQL.

Rooms above this package see only ``Store`` and the plain records of ``records.py``;
nothing outside ``store/`` writes SQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store.accounts import ProvidersRepo, UsersRepo
from keyfob.store.apps import ClientsRepo, CodesRepo, DeviceCodesRepo, GrantsRepo, TokensRepo
from keyfob.store.engine import create_engine
from keyfob.store.metering import MeteringRepo
from keyfob.store.migrate import upgrade
from keyfob.store.overruns import OverrunsRepo
from keyfob.store.reports import RefusalsRepo
from keyfob.store.sessions import SessionsRepo
from keyfob.store.sqlite_hot import SqliteHotPath
from keyfob.store.sqlite_oauth import InlineClientsRepo, InlineTokensRepo
from keyfob.store.wallets import WalletsRepo


def prepare_sqlite_file(url: str) -> str | None:
    """Create a SQLite file's folder (0700) and the file itself 0600 from the first byte:
    the database holds hashes and sealed credentials (SQLite gives its -wal and -shm
    files the same mode). Start-up only, so a blocking call is fine."""
    if not (url.startswith("sqlite") and ":///" in url):
        return None
    path = Path(url.split(":///", 1)[1])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return str(path)


@dataclass
class Store:
    engine: AsyncEngine
    users: UsersRepo
    providers: ProvidersRepo
    clients: ClientsRepo
    grants: GrantsRepo
    codes: CodesRepo
    tokens: TokensRepo
    metering: MeteringRepo
    wallets: WalletsRepo
    devices: DeviceCodesRepo
    refusals: RefusalsRepo
    sessions: SessionsRepo
    overruns: OverrunsRepo

    hot: SqliteHotPath | None = None

    @classmethod
    def from_engine(cls, engine: AsyncEngine, hot: SqliteHotPath | None = None) -> Store:
        """The repositories for this engine, chosen once: on a SQLite file the token and
        client lookups and the refresh rotation run on the inline connection."""
        return cls(
            engine,
            UsersRepo(engine),
            ProvidersRepo(engine),
            ClientsRepo(engine) if hot is None else InlineClientsRepo(engine, hot),
            GrantsRepo(engine),
            CodesRepo(engine),
            TokensRepo(engine) if hot is None else InlineTokensRepo(engine, hot),
            MeteringRepo(engine, hot),
            WalletsRepo(engine),
            DeviceCodesRepo(engine),
            RefusalsRepo(engine, hot),
            SessionsRepo(engine),
            OverrunsRepo(engine, hot),
            hot,
        )

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, serving: bool = False) -> Store:
        """Connect (creating the SQLite file's folder) and apply migrations.

        ``serving``: this process is the server of a SQLite database, so it meters in
        memory with a journal (``sqlite_writeback``); raises ``JournalBusy`` when another
        server already does. Every other opener (the CLI, scripts) stays transactional."""
        path = prepare_sqlite_file(url)
        engine = create_engine(url)
        if migrate:
            await upgrade(engine)
        hot = SqliteHotPath(path) if path is not None else None
        if hot is not None:
            if serving:
                try:
                    hot.own()
                except BaseException:
                    await hot.close()
                    await engine.dispose()
                    raise
            hot.start()
        return cls.from_engine(engine, hot)

    async def close(self) -> None:
        if self.hot is not None:
            await self.hot.close()
        await self.engine.dispose()


__all__ = ["Store"]
