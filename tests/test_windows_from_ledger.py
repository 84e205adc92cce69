"""Windows are computed from the ledger (issue 10, invariant 1): a new or changed window
starts with what the ledger holds for its period, on every metering backend.

Attacked through ``AllowanceService`` with the grant edited the way the CLI, the web edit
page and the consent screen edit it (``GrantsRepo.set_policy`` / ``upsert``), with spend on
record and calls in flight: every window kind switched to every other and back, a cap
added, a per-model cap, a time-zone change, and a cap lowered while the caller still
holds the old grant. Backends: the serving process's write-back (SQLite, in memory), the
transactional SQLite path (the CLI, or any process that does not serve), and PostgreSQL
through SQLAlchemy (hosted).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import AllowanceExhausted, AllowanceService, Reservation
from keyfob.metering.types import Settlement
from keyfob.store import Store
from keyfob.store.records import Grant, Token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "fake/gpt-4o-mini"
OTHER = "fake/gpt-4o"
CAP = 10_000

#: Every spending window kind, as a limit of ``CAP``.
KINDS: dict[str, SpendLimit] = {
    "day": SpendLimit("day", CAP),
    "week": SpendLimit("week", CAP),
    "month": SpendLimit("month", CAP),
    "rolling": SpendLimit("rolling", CAP, seconds=7 * 24 * 3600),
}


@pytest.fixture(params=["writeback", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """One store per metering backend (the write-back is the serving process's)."""
    if request.param != "postgresql":
        s = await Store.open(
            f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", serving=request.param == "writeback"
        )
        if request.param == "writeback":
            assert s.hot is not None and s.hot.writeback is not None
        yield s
        await s.close()
        return
    name = f"keyfob_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        s = await Store.open(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
        try:
            yield s
        finally:
            await s.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def svc(store: Store) -> AsyncIterator[AllowanceService]:
    service = AllowanceService(store)
    yield service
    await service.notifier.drain()  # threshold webhooks in flight end before the store


async def grant_with(store: Store, policy: Policy, tz: str = "UTC") -> Grant:
    user = await store.users.create(f"u{secrets.token_hex(4)}", "x", timezone=tz)
    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id,
        client_id=client.id,
        models=[MODEL, OTHER],
        cap_micro_usd=policy.primary_cap_micro_usd,
        timezone=tz,
        policy_json=policy.to_json(),
    )
    await store.tokens.save(
        Token(f"tok-{grant.id}", "access", grant.id, client.id, "f", "", None, 0, 1e12, None, None)
    )
    return grant


async def edit(store: Store, grant: Grant, policy: Policy) -> Grant:
    """What ``keyfob apps policy`` and the web edit page do; returns the fresh grant."""
    time.sleep(0.002)  # a distinct updated_at, as two human edits have
    await store.grants.set_policy(
        grant.id, policy_json=policy.to_json(), cap_micro_usd=policy.primary_cap_micro_usd
    )
    fresh = await store.grants.get(grant.id)
    assert fresh is not None
    return fresh


async def reserve(
    svc: AllowanceService, grant: Grant, amount: int, model: str = MODEL
) -> Reservation:
    return await svc.reserve(
        grant=grant,
        token_hash=f"tok-{grant.id}",
        provider_id=None,
        model=model,
        endpoint="chat",
        streamed=False,
        amount_micro_usd=amount,
    )


async def spend(svc: AllowanceService, grant: Grant, amount: int, model: str = MODEL) -> None:
    r = await reserve(svc, grant, amount, model)
    await svc.settle(r, Settlement("settled", amount, "upstream"))


async def refused(svc: AllowanceService, grant: Grant, amount: int, model: str = MODEL) -> bool:
    try:
        r = await reserve(svc, grant, amount, model)
    except AllowanceExhausted:
        return True
    await svc.settle(r, Settlement("failed", 0, "none"))
    return False


async def test_every_window_kind_switched_both_ways_keeps_the_spend(
    store: Store, svc: AllowanceService
) -> None:
    """For every ordered pair of kinds: 6,000 spent under the first, switched to the
    second, only 4,000 more fit; switched back, nothing more fits. A call in flight
    across the switch is counted by the new window and settles into it."""
    for a, b in itertools.permutations(KINDS, 2):
        grant = await grant_with(store, Policy(limits=(KINDS[a],)))
        await spend(svc, grant, 5_000)
        in_flight = await reserve(svc, grant, 1_000)
        grant = await edit(store, grant, Policy(limits=(KINDS[b],)))
        assert await refused(svc, grant, 4_001), f"{a} -> {b} handed out money spent"
        await svc.settle(in_flight, Settlement("settled", 1_000, "upstream"))
        assert await refused(svc, grant, 4_001), f"{a} -> {b}: the call in flight was lost"
        await spend(svc, grant, 4_000)
        (state,) = await svc.limits(grant)
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (10_000, 0), (a, b)
        grant = await edit(store, grant, Policy(limits=(KINDS[a],)))
        assert await refused(svc, grant, 1), f"{a} -> {b} -> {a} forgot the spend under {b}"
        (state,) = await svc.limits(grant)
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (10_000, 0), (a, b, a)


async def test_a_cap_added_beside_another_starts_with_the_ledger(
    store: Store, svc: AllowanceService
) -> None:
    """A monthly cap added to a weekly one (as ``keyfob apps policy --month`` does)."""
    grant = await grant_with(store, Policy(limits=(SpendLimit("week", 50_000),)))
    await spend(svc, grant, 8_000)
    grant = await edit(
        store, grant, Policy(limits=(SpendLimit("week", 50_000), SpendLimit("month", CAP)))
    )
    states = {s.key.split(":")[0]: s for s in await svc.limits(grant)}
    assert states["month"].spent_micro_usd == 8_000  # shown before any call, too
    assert await refused(svc, grant, 2_001)
    await spend(svc, grant, 2_000)
    assert await refused(svc, grant, 1)


async def test_a_per_model_cap_counts_only_its_model(store: Store, svc: AllowanceService) -> None:
    grant = await grant_with(store, Policy(limits=(SpendLimit("month", 100_000),)))
    await spend(svc, grant, 6_000, MODEL)
    await spend(svc, grant, 30_000, OTHER)
    per_model = SpendLimit("month", CAP, model=MODEL)
    grant = await edit(store, grant, Policy(limits=(SpendLimit("month", 100_000), per_model)))
    assert await refused(svc, grant, 4_001, MODEL)
    await spend(svc, grant, 4_000, MODEL)
    assert await refused(svc, grant, 1, MODEL)
    await spend(svc, grant, 50_000, OTHER)  # the other model is held by the grant cap only
    assert await refused(svc, grant, 10_001, OTHER)
    states = {s.key: s.spent_micro_usd for s in await svc.limits(grant)}
    assert sorted(states.values()) == [10_000, 90_000]


@pytest.mark.parametrize("kind", ["day", "week", "month"])
async def test_a_new_time_zone_keeps_the_spend(
    store: Store, svc: AllowanceService, kind: str
) -> None:
    """From UTC to UTC+14 and back (a consent that carries the person's new zone): the
    calendar period moves, and may get a new key; the spend in it is kept."""
    policy = Policy(limits=(SpendLimit(kind, CAP),))
    grant = await grant_with(store, policy, tz="UTC")
    await spend(svc, grant, 7_000)
    for tz in ("Pacific/Kiritimati", "UTC"):
        time.sleep(0.002)
        grant = await store.grants.upsert(
            user_id=grant.user_id,
            client_id=grant.client_id,
            models=[MODEL],
            cap_micro_usd=CAP,
            timezone=tz,
            policy_json=policy.to_json(),
        )
        assert await refused(svc, grant, 3_001), f"{kind} in {tz} handed out money spent"
    await spend(svc, grant, 3_000)
    assert await refused(svc, grant, 1)


async def test_a_lowered_cap_applies_to_the_next_reservation(
    store: Store, svc: AllowanceService
) -> None:
    """The caller still holds the grant as it was before the edit (a gateway's cache):
    the reservation notices the edit and refuses under the new cap."""
    grant = await grant_with(store, Policy(limits=(SpendLimit("month", 1_000_000),)))
    await spend(svc, grant, 1_000)
    stale = grant
    await edit(store, grant, Policy(limits=(SpendLimit("month", 2_000),)))
    with pytest.raises(AllowanceExhausted) as exc:
        await reserve(svc, stale, 1_001)
    assert exc.value.state.cap_micro_usd == 2_000
    r = await reserve(svc, stale, 1_000)  # what fits the new cap is still admitted
    await svc.settle(r, Settlement("settled", 1_000, "upstream"))
    with pytest.raises(AllowanceExhausted):
        await reserve(svc, stale, 1)


async def test_refusals_after_an_edit_keep_the_computed_window(
    store: Store, svc: AllowanceService
) -> None:
    """A refused call after an edit keeps the window it computed (no ledger scan per
    refusal), and the counter stays exact."""
    grant = await grant_with(store, Policy(limits=(SpendLimit("week", CAP),)))
    await spend(svc, grant, 9_000)
    grant = await edit(store, grant, Policy(limits=(SpendLimit("month", CAP),)))
    for _ in range(3):
        assert await refused(svc, grant, 2_000)
    (state,) = await svc.limits(grant)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (9_000, 0)
    await spend(svc, grant, 1_000)
    (state,) = await svc.limits(grant)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (10_000, 0)
