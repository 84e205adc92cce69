"""Storage behind one interface: the same repositories on SQLite and PostgreSQL.

Rooms above this package see only ``Store`` and the plain records of ``records.py``;
nothing outside ``store/`` writes SQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.metering.backend import MeteringBackend
from keyfob.settings import normalise_database_url
from keyfob.store.accounts import ProvidersRepo, UsersRepo
from keyfob.store.apps import ClientsRepo, CodesRepo, DeviceCodesRepo, GrantsRepo, TokensRepo
from keyfob.store.engine import PoolOptions, create_engine
from keyfob.store.instances import InstancesRepo
from keyfob.store.metering.reads import LedgerReads
from keyfob.store.metering.sqlite_tx import SqliteMetering
from keyfob.store.migrate import upgrade
from keyfob.store.overruns import OverrunsRepo
from keyfob.store.people import PeopleRepo
from keyfob.store.reports import RefusalsRepo
from keyfob.store.sessions import SessionsRepo
from keyfob.store.setup_tokens import SetupTokensRepo
from keyfob.store.sqlite_hot import SqliteHotPath
from keyfob.store.sqlite_oauth import InlineClientsRepo, InlineTokensRepo
from keyfob.store.wallets import WalletsRepo

if TYPE_CHECKING:  # asyncpg is imported only when a PostgreSQL store opens
    from keyfob.store.metering.pg_connections import Connections


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
    #: Reserve and settle (the one backend chosen when the store opened).
    metering: MeteringBackend
    #: What pages, exports and APIs read of the ledger and the counters.
    ledger: LedgerReads
    wallets: WalletsRepo
    devices: DeviceCodesRepo
    refusals: RefusalsRepo
    sessions: SessionsRepo
    overruns: OverrunsRepo
    instances: InstancesRepo
    people: PeopleRepo
    setup_tokens: SetupTokensRepo

    hot: SqliteHotPath | None = None

    @classmethod
    def from_engine(
        cls,
        engine: AsyncEngine,
        metering: MeteringBackend,
        hot: SqliteHotPath | None = None,
        pg: Connections | None = None,
    ) -> Store:
        """The repositories for this engine, chosen once: the metering backend, and the
        token endpoint's client and token lookups and the refresh rotation on the SQLite
        file's inline connection (``hot``) or on PostgreSQL's asyncpg connections
        (``pg``, the metering backend's); SQLAlchemy otherwise."""
        clients: ClientsRepo = ClientsRepo(engine)
        tokens: TokensRepo = TokensRepo(engine)
        if hot is not None:
            clients, tokens = InlineClientsRepo(engine, hot), InlineTokensRepo(engine, hot)
        elif pg is not None:
            from keyfob.store.pg_oauth import PgClientsRepo, PgTokensRepo

            clients, tokens = PgClientsRepo(engine, pg), PgTokensRepo(engine, pg)
        return cls(
            engine,
            UsersRepo(engine),
            ProvidersRepo(engine),
            clients,
            GrantsRepo(engine),
            CodesRepo(engine),
            tokens,
            metering,
            LedgerReads(engine),
            WalletsRepo(engine),
            DeviceCodesRepo(engine),
            RefusalsRepo(engine, hot),
            SessionsRepo(engine),
            OverrunsRepo(engine, hot),
            InstancesRepo(engine),
            PeopleRepo(engine),
            SetupTokensRepo(engine),
            hot,
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        serving: bool = False,
        pool: PoolOptions | None = None,
    ) -> Store:
        """Connect (creating the SQLite file's folder), apply migrations (under an advisory
        lock on PostgreSQL, ``store/migrate.py``), and choose the metering backend once.

        ``serving``: this process is the server of a SQLite database, so it meters in
        memory with a journal (``store.metering.writeback``); raises ``JournalBusy`` when
        another server already does. Every other SQLite opener (the CLI, scripts) meters
        with one transaction per call. PostgreSQL meters with one function call per call
        on a pool of its own (``pool.metering`` connections), which also carries the token
        endpoint's lookups and refresh rotation (``pg_oauth``); ``pool``: pool sizes
        (settings)."""
        url = normalise_database_url(url)
        path = prepare_sqlite_file(url)
        engine = create_engine(url, pool)
        if migrate:
            await upgrade(engine)
        if path is None:
            from keyfob.store.metering.postgres import PostgresMetering

            try:
                opts = pool or PoolOptions()
                pg = await PostgresMetering.open(
                    url,
                    min_size=1,
                    max_size=opts.metering,
                    statement_cache_size=opts.statement_cache_size,
                    durability="disk" if opts.reservation_durability == "disk" else "commit",
                )
            except BaseException:
                await engine.dispose()
                raise
            return cls.from_engine(engine, pg, pg=pg.pool)
        hot = SqliteHotPath(path)
        metering: MeteringBackend = SqliteMetering(hot)
        if serving:
            from keyfob.store.metering.writeback import WriteBack, WriteBackMetering

            try:
                wb = WriteBack(hot.inline, path)
            except BaseException:
                await hot.close()
                await engine.dispose()
                raise
            hot.writeback = wb
            metering = WriteBackMetering(wb, SqliteMetering(hot))
        hot.start()
        return cls.from_engine(engine, metering, hot)

    async def close(self) -> None:
        await self.metering.close()
        if self.hot is not None:
            await self.hot.close()
        await self.engine.dispose()


__all__ = ["Store"]
