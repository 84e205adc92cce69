"""``TokensRepo.rotate_refresh`` on both backends: SQLite's one inline transaction
(``sqlite_oauth.rotate_refresh_tx``) and PostgreSQL's one function call
(``pg_oauth.sql``'s ``keyfob_rotate_refresh``) must give the same outcome, with the same
exception, for every way a refresh can go (RFC 9700 4.14.2), let one of two racing
refreshes win (and end the family), and never let a successor outlive its grant, even
while the grant's end is being changed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from keyfob.oauth.grants import new_pair, token_ttls_s
from keyfob.settings import Settings
from keyfob.store import Store, schema
from keyfob.store.apps import (
    ClientsRepo,
    RefreshExpired,
    RefreshGrantEnded,
    RefreshReplayed,
    RotationRefused,
    Successors,
    TokensRepo,
)
from keyfob.store.engine import PoolOptions
from keyfob.store.pg_oauth import PgClientsRepo, PgTokensRepo
from keyfob.store.records import Token
from keyfob.store.sqlite_oauth import InlineClientsRepo, InlineTokensRepo
from tests.support import both_databases

SETTINGS = Settings()
pytestmark = both_databases


@pytest.fixture
async def store(tmp_path: Path, database_url: str | None) -> AsyncIterator[Store]:
    s = await Store.open(database_url or f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    yield s
    await s.close()


async def first_pair(store: Store, *, grant_ends: float | None = None) -> tuple[Token, Token]:
    """A grant and its first token pair, as the code exchange stores them."""
    user = await store.users.create(f"u{secrets.token_hex(3)}", "x", is_owner=True)
    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id, client_id=client.id, models=["p/m"], cap_micro_usd=10**6
    )
    if grant_ends is not None:
        await store.grants.set_expiry(grant.id, grant_ends, token_ttls_s=token_ttls_s(SETTINGS))
    records, _body = new_pair(
        SETTINGS,
        grant_id=grant.id,
        client_id=client.id,
        family_id=secrets.token_hex(8),
        scope="",
        resource=None,
        now=time.time(),
        not_after=grant_ends,
    )
    await store.tokens.save(*records)
    return records


def successors_of(refresh: Token, issued: list[float | None]) -> Successors:
    def make(grant_ends: float | None) -> tuple[Token, ...]:
        issued.append(grant_ends)
        records, _body = new_pair(
            SETTINGS,
            grant_id=refresh.grant_id,
            client_id=refresh.client_id,
            family_id=refresh.family_id,
            scope=refresh.scope,
            resource=refresh.resource,
            now=time.time(),
            not_after=grant_ends,
        )
        return records

    return make


async def rotate(store: Store, refresh: Token) -> tuple[Token, ...]:
    """Rotate ``refresh`` as read from the store now; the successors stored."""
    current = await store.tokens.get(refresh.token_hash)
    assert current is not None
    issued: list[float | None] = []
    made: list[tuple[Token, ...]] = []
    make = successors_of(current, issued)

    def keep(ends: float | None) -> tuple[Token, ...]:
        made.append(make(ends))
        return made[-1]

    await store.tokens.rotate_refresh(current, time.time(), keep)
    return made[-1]


async def live(store: Store, token: Token) -> bool:
    now = time.time()
    return await store.tokens.active_with_grant(token.token_hash, token.kind, now) is not None


async def test_the_backend_is_the_engines(store: Store, database_url: str | None) -> None:
    sqlite = database_url is None
    assert isinstance(store.tokens, InlineTokensRepo if sqlite else PgTokensRepo)
    assert isinstance(store.clients, InlineClientsRepo if sqlite else PgClientsRepo)


async def test_the_lookups_read_what_sqlalchemy_reads(store: Store) -> None:
    """The token endpoint's own reads (inline / asyncpg) give the reference's records."""
    access, refresh = await first_pair(store)
    for token in (access, refresh):
        assert await store.tokens.get(token.token_hash) == token
        assert await TokensRepo(store.engine).get(token.token_hash) == token
    assert await store.tokens.get("no-such-token") is None
    client = await ClientsRepo(store.engine).get(refresh.client_id)
    assert client is not None and await store.clients.get(client.id) == client
    assert await store.clients.get("kfapp_missing") is None


async def test_rotation_spends_the_token_and_stores_its_successors(store: Store) -> None:
    access, refresh = await first_pair(store)
    new_access, new_refresh = await rotate(store, refresh)
    spent = await store.tokens.get(refresh.token_hash)
    assert spent is not None and spent.used_at is not None
    assert await live(store, new_access) and await live(store, new_refresh)
    assert new_refresh.family_id == refresh.family_id
    assert await live(store, access)  # rotation does not end the old access token


async def test_a_replay_revokes_the_family(store: Store) -> None:
    access, refresh = await first_pair(store)
    new_access, new_refresh = await rotate(store, refresh)
    with pytest.raises(RefreshReplayed):
        await rotate(store, refresh)
    for token in (access, new_access, new_refresh):
        assert not await live(store, token)


async def test_a_replay_read_before_the_first_use_is_still_caught(store: Store) -> None:
    """Both holders read the token unused; the second to spend it loses and the family
    ends (the check is the conditional update, not the record read)."""
    _access, refresh = await first_pair(store)
    stale = await store.tokens.get(refresh.token_hash)
    assert stale is not None
    await rotate(store, refresh)
    with pytest.raises(RefreshReplayed):
        await store.tokens.rotate_refresh(stale, time.time(), successors_of(stale, []))


async def test_two_racing_refreshes_one_wins(store: Store) -> None:
    """Both read it unused and spend it at once: one gets successors, the other is the
    replay, and the family ends, the winner's successors with it."""
    access, refresh = await first_pair(store)
    outcomes = await asyncio.gather(
        rotate(store, refresh), rotate(store, refresh), return_exceptions=True
    )
    assert sum(isinstance(o, tuple) for o in outcomes) == 1, outcomes
    assert sum(isinstance(o, RefreshReplayed) for o in outcomes) == 1, outcomes
    won = next(o for o in outcomes if isinstance(o, tuple))
    for token in (access, *won):
        assert not await live(store, token)


async def test_two_processes_racing_on_one_token_one_wins(
    store: Store, database_url: str | None, tmp_path: Path
) -> None:
    """The same race from two stores on one database (two processes: PostgreSQL's row
    lock decides; SQLite's CLI-style second opener writes through its own connection),
    many times over."""
    other = await Store.open(database_url or f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        _access, sibling = await first_pair(store)
        for _ in range(10):
            access, refresh = await first_pair_on(store, sibling)
            outcomes = await asyncio.gather(
                rotate(store, refresh), rotate(other, refresh), return_exceptions=True
            )
            assert sum(isinstance(o, tuple) for o in outcomes) == 1, outcomes
            assert sum(isinstance(o, RefreshReplayed) for o in outcomes) == 1, outcomes
            won = next(o for o in outcomes if isinstance(o, tuple))
            for token in (access, *won):
                assert not await live(store, token)
    finally:
        await other.close()


async def test_rotation_without_prepared_statements(
    database_url: str | None, tmp_path: Path
) -> None:
    """Behind PgBouncer in transaction pooling (``statement_cache_size=0``) the asyncpg
    path still rotates and still catches a replay."""
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    store = await Store.open(url, pool=PoolOptions(statement_cache_size=0))
    try:
        _access, refresh = await first_pair(store)
        head = refresh
        for _ in range(3):
            head = (await rotate(store, head))[1]
        with pytest.raises(RefreshReplayed):
            await rotate(store, refresh)
        assert not await live(store, head)
    finally:
        await store.close()


async def test_an_expired_token_is_refused_and_left_spent(store: Store) -> None:
    _access, refresh = await first_pair(store)
    current = await store.tokens.get(refresh.token_hash)
    assert current is not None
    issued: list[float | None] = []
    later = current.expires_at + 1
    with pytest.raises(RefreshExpired):
        await store.tokens.rotate_refresh(current, later, successors_of(current, issued))
    spent = await store.tokens.get(refresh.token_hash)
    assert spent is not None and spent.used_at is not None
    with pytest.raises(RefreshReplayed):  # spent: presenting it again is a replay
        await rotate(store, refresh)


async def test_a_revoked_grant_refuses_the_rotation(store: Store) -> None:
    _access, refresh = await first_pair(store)
    await store.grants.revoke(refresh.grant_id)
    with pytest.raises(RotationRefused) as refused:
        await rotate(store, refresh)
    # revoking a grant revokes its tokens: the token check comes first
    assert isinstance(refused.value, RefreshExpired)


async def test_a_grant_ended_without_its_tokens_refuses_the_rotation(store: Store) -> None:
    """Ending a grant ends its tokens in the same transaction, so only a grant row changed
    alone (an older process, a hand edit) gets this far: the grant is checked too."""
    _access, refresh = await first_pair(store)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(schema.grants)
            .where(schema.grants.c.id == refresh.grant_id)
            .values(expires_at=time.time() - 1)
        )
    with pytest.raises(RefreshGrantEnded):
        await rotate(store, refresh)
    spent = await store.tokens.get(refresh.token_hash)
    assert spent is not None and spent.used_at is not None


async def test_successors_never_outlive_the_grant(store: Store) -> None:
    ends = time.time() + 600
    _access, refresh = await first_pair(store, grant_ends=ends)
    current = await store.tokens.get(refresh.token_hash)
    assert current is not None
    issued: list[float | None] = []
    await store.tokens.rotate_refresh(current, time.time(), successors_of(current, issued))
    assert issued == [pytest.approx(ends)]  # the builder was told the grant's end


async def test_a_grant_end_moved_after_the_read_caps_the_successors(store: Store) -> None:
    """The token (and its grant's end) read, then the end brought forward before the
    rotation: the successors are built for the new end, and stored so."""
    ends = time.time() + 3600
    _access, refresh = await first_pair(store, grant_ends=ends)
    current = await store.tokens.get(refresh.token_hash)
    assert current is not None
    sooner = time.time() + 600
    await store.grants.set_expiry(refresh.grant_id, sooner, token_ttls_s=token_ttls_s(SETTINGS))
    issued: list[float | None] = []
    made: list[tuple[Token, ...]] = []
    make = successors_of(current, issued)
    await store.tokens.rotate_refresh(
        current, time.time(), lambda e: made.append(make(e)) or made[-1]
    )
    assert issued[-1] == pytest.approx(sooner)
    for token in made[-1]:
        stored = await store.tokens.get(token.token_hash)
        assert stored is not None and stored.expires_at <= sooner


async def test_rotations_racing_an_expiry_change_never_outlive_the_grant(store: Store) -> None:
    """Eight chains rotate while the grant's end is brought forward step by step: every
    live token ends by the grant's final end (the rotation and the change of end are
    ordered by the grant's row, never interleaved)."""
    first = time.time() + 7200
    _access, refresh = await first_pair(store, grant_ends=first)
    heads = [refresh]
    for _ in range(7):
        _a, r = await first_pair_on(store, refresh, first)
        heads.append(r)
    stop = asyncio.Event()

    async def chain(head: Token) -> None:
        # bounded, and yielding: a rotation that completes without suspending (the
        # SQLite server's inline path) would otherwise starve ``shorten`` for ever
        for _ in range(500):
            if stop.is_set():
                return
            head = (await rotate(store, head))[1]
            await asyncio.sleep(0)

    async def shorten() -> float:
        ends = first
        for _ in range(15):
            ends -= 60
            await store.grants.set_expiry(
                refresh.grant_id, ends, token_ttls_s=token_ttls_s(SETTINGS)
            )
            await asyncio.sleep(0.01)
        stop.set()
        return ends

    chains = [asyncio.create_task(chain(h)) for h in heads]
    final = await shorten()
    await asyncio.gather(*chains)
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                schema.tokens.select().where(
                    schema.tokens.c.grant_id == refresh.grant_id,
                    schema.tokens.c.revoked_at.is_(None),
                )
            )
        ).all()
    assert len(rows) > 16  # the chains did rotate meanwhile
    assert max(r.expires_at for r in rows) <= final


async def first_pair_on(
    store: Store, sibling: Token, grant_ends: float | None = None
) -> tuple[Token, Token]:
    """Another family's first pair on ``sibling``'s grant (another code exchange)."""
    records, _body = new_pair(
        SETTINGS,
        grant_id=sibling.grant_id,
        client_id=sibling.client_id,
        family_id=secrets.token_hex(8),
        scope="",
        resource=None,
        now=time.time(),
        not_after=grant_ends,
    )
    await store.tokens.save(*records)
    return records
