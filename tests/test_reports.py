"""The dashboard's ledger queries (store/reports.py) on SQLite and PostgreSQL: per-day
spend folds into the person's own calendar days (a +05:30 zone too), stacked by app or
model, and agrees with the per-grant totals; refused calls are coalesced."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest

from keyfob.store import Store
from keyfob.store import schema as t
from keyfob.store.reports import daily_spend, grant_calls, grant_totals, spend_by_grant

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each engine (bucket flooring differs between them)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
        return
    name = f"keyfob_test_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def _seed(store: Store) -> tuple[str, str]:
    user = await store.users.create("u", "x")
    a = await store.clients.add(name="Alpha", redirect_uris=[], is_public=True, secret_hash=None)
    b = await store.clients.add(name="Beta", redirect_uris=[], is_public=True, secret_hash=None)
    ga = await store.grants.upsert(user_id=user.id, client_id=a.id, models=[], cap_micro_usd=1)
    gb = await store.grants.upsert(user_id=user.id, client_id=b.id, models=[], cap_micro_usd=1)
    rows = [
        # 18:00 UTC is 23:30 in Kolkata (Dec 1); 18:45 UTC is 00:15 there (Dec 2)
        (ga.id, a.id, "p/m1", _at("2026-12-01T18:00:00"), "settled", 100, 0),
        (ga.id, a.id, "p/m2", _at("2026-12-01T18:45:00"), "settled", 200, 0),
        (gb.id, b.id, "p/m1", _at("2026-12-02T10:00:00"), "reserved", None, 50),
        (gb.id, b.id, "p/m1", _at("2026-12-02T11:00:00"), "failed", None, 70),
    ]
    async with store.engine.begin() as conn:
        for i, (gid, cid, model, at, status, cost, reserved) in enumerate(rows):
            await conn.execute(
                t.ledger.insert().values(
                    id=f"e{i}",
                    grant_id=gid,
                    user_id=user.id,
                    client_id=cid,
                    model=model,
                    endpoint="chat",
                    streamed=False,
                    status=status,
                    reserved_micro_usd=reserved,
                    cost_micro_usd=cost,
                    window_keys_json=json.dumps([]),
                    created_at=at,
                )
            )
    return user.id, ga.id


def test_days_follow_the_persons_zone_and_totals_agree(store_url: str) -> None:
    async def go() -> None:
        store = await Store.open(store_url)
        try:
            user_id, alpha = await _seed(store)
            kolkata = await daily_spend(
                store.engine,
                user_id=user_id,
                timezone="Asia/Kolkata",
                first_day=date(2026, 11, 30),
                last_day=date(2026, 12, 3),
                by="app",
            )
            assert kolkata.values == {
                (date(2026, 12, 1), "Alpha"): 100,
                (date(2026, 12, 2), "Alpha"): 200,
                (date(2026, 12, 2), "Beta"): 50,  # in flight: counted at its hold
            }
            assert kolkata.keys == ["Alpha", "Beta"] and len(kolkata.days) == 4
            utc = await daily_spend(
                store.engine,
                user_id=user_id,
                timezone="UTC",
                first_day=date(2026, 12, 1),
                last_day=date(2026, 12, 2),
                by="model",
            )
            assert utc.values == {
                (date(2026, 12, 1), "p/m1"): 100,
                (date(2026, 12, 1), "p/m2"): 200,
                (date(2026, 12, 2), "p/m1"): 50,
            }
            per_grant = await spend_by_grant(store.engine, user_id, since=0)
            assert sum(per_grant.values()) == utc.total() == kolkata.total() == 350
            assert (await grant_totals(store.engine, alpha))["cost_micro_usd"] == 300
            first = await grant_calls(store.engine, alpha, limit=1)
            rest = await grant_calls(
                store.engine, alpha, before=(first[0].created_at, first[0].id), limit=5
            )
            assert [e.id for e in first + rest] == ["e1", "e0"]
            # refusals within a minute of one grant, limit and model share a row
            for at, count in ((1000.0, 1), (1030.0, 2), (1100.0, 1)):
                await store.refusals.record(
                    user_id=user_id,
                    grant_id=alpha,
                    client_id="c",
                    model="p/m1",
                    limit_label="month",
                    window_key="month:2026-12",
                    needed_micro_usd=5,
                    left_micro_usd=1,
                    retry_at=None,
                    count=count,
                    now=at,
                )
            recent = await store.refusals.recent(user_id)
            assert [(r.count, r.last_at) for r in recent] == [(1, 1100.0), (3, 1030.0)]
        finally:
            await store.close()

    asyncio.run(go())
