"""Each allowance rule of a grant's policy, attacked through AllowanceService: several
windows at once (tightest wins), per-model caps, request and token rates, the per-call
ceiling, the wallet with its monthly refill, the wait and downgrade policies, and the
threshold webhooks (to a real HTTP receiver on loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from keyfob.allowance.plan import bucket_width
from keyfob.allowance.policy import Policy, PolicyError, SpendLimit, parse_duration
from keyfob.allowance.service import AllowanceExhausted, AllowanceService
from keyfob.metering.types import Settlement
from keyfob.store import Store
from keyfob.store.records import Grant, Token
from tests.backends import BACKENDS, backend_store

MODEL = "fake/gpt-4o-mini"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The rules hold on every metering backend."""
    async with backend_store(request.param, tmp_path) as s:
        yield s


async def grant_with(store: Store, policy: Policy) -> Grant:
    user = await store.users.create(f"u{time.monotonic_ns()}", "x", timezone="Europe/Paris")
    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id,
        client_id=client.id,
        models=[MODEL],
        cap_micro_usd=policy.primary_cap_micro_usd,
        timezone="Europe/Paris",
        policy_json=policy.to_json(),
    )
    await store.tokens.save(
        Token(
            f"tok-{grant.id}", "access", grant.id, client.id, "f", "", None, 0, 10**12, None, None
        )
    )
    return grant


async def reserve(
    svc: AllowanceService, grant: Grant, amount: int, model: str = MODEL, tokens: int | None = None
):  # type: ignore[no-untyped-def]
    return await svc.reserve(
        grant=grant,
        token_hash=f"tok-{grant.id}",
        provider_id=None,
        model=model,
        endpoint="chat",
        streamed=False,
        amount_micro_usd=amount,
        tokens_bound=tokens,
    )


def test_policy_round_trips_and_refuses_nonsense() -> None:
    p = Policy(
        limits=(
            SpendLimit("month", 5_000_000),
            SpendLimit("rolling", 1_000_000, 18000),
            SpendLimit("month", 100_000, model=MODEL),
        ),
        requests_per_minute=60,
        on_exhausted="wait",
        wait_max_s=5,
    )
    assert Policy.from_json(p.to_json()) == p
    assert parse_duration("5h") == 18000 and parse_duration("7d") == 604800
    for bad in (
        '{"limits": [{"period": "fortnight", "cap_micro_usd": 1}]}',
        '{"limits": [{"period": "rolling", "cap_micro_usd": 1, "seconds": 5}]}',
        '{"on_exhausted": "downgrade"}',
        '{"surprise": 1}',
        "[]",
        "{",
        '{"requests_per_minute": -1}',
        '{"wait_max_s": 100000}',
    ):
        with pytest.raises(PolicyError):
            Policy.from_json(bad)


def test_with_changes_edits_only_what_it_names() -> None:
    """The one edit every editor (CLI, limits page, consent) makes: the primary limit
    replaced in place, everything else kept, the result checked like any policy."""
    rolling = SpendLimit("rolling", 1_000_000, 18000)
    per_model = SpendLimit("month", 100_000, model=MODEL)
    p = Policy(
        limits=(SpendLimit("month", 5_000_000), rolling, per_model),
        requests_per_minute=60,
        webhook_url="https://hooks.example/k",
    )
    weekly = p.with_changes(SpendLimit("week", 2_000_000), old_window="month")
    assert weekly.limits == (SpendLimit("week", 2_000_000), rolling, per_model)
    assert (weekly.requests_per_minute, weekly.webhook_url) == (60, "https://hooks.example/k")
    assert weekly.primary_limit("week") == SpendLimit("week", 2_000_000)
    # a second grant-wide limit of the same period gives way to the one just set
    two = Policy(limits=(SpendLimit("day", 1), SpendLimit("month", 2)))
    assert two.with_changes(SpendLimit("month", 3), old_window="day").limits == (
        SpendLimit("month", 3),
    )
    assert Policy().with_changes(SpendLimit("day", 7)).limits == (SpendLimit("day", 7),)
    assert p.with_changes(tokens_per_minute=9).limits == p.limits
    for primary, fields in (
        (SpendLimit("rolling", 1, 3600), {}),
        (SpendLimit("month", 1, model=MODEL), {}),
        (None, {"surprise": 1}),
        (None, {"on_exhausted": "downgrade"}),  # no fallback model
        (None, {"requests_per_minute": -1}),
    ):
        with pytest.raises(PolicyError):
            p.with_changes(primary, **fields)
    assert p == Policy.from_json(p.to_json())  # the original is untouched


async def test_the_tightest_of_several_windows_wins(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(
        store,
        Policy(
            limits=(
                SpendLimit("month", 10_000),
                SpendLimit("day", 3_000),
                SpendLimit("rolling", 5_000, 5 * 3600),
            )
        ),
    )
    r = await reserve(svc, g, 2_000)
    await svc.settle(r, Settlement("settled", 2_000, "upstream"))
    with pytest.raises(AllowanceExhausted) as refused:
        await reserve(svc, g, 1_500)
    assert refused.value.label == "day" and refused.value.retry_at is not None
    assert refused.value.state.left_micro_usd == 1_000
    states = {s.label: s.left_micro_usd for s in await svc.limits(g)}
    assert states == {"month": 8_000, "day": 1_000, "rolling 5h": 3_000}


async def test_per_model_cap_only_binds_that_model(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(
        store,
        Policy(limits=(SpendLimit("month", 100_000), SpendLimit("month", 1_000, model=MODEL))),
    )
    with pytest.raises(AllowanceExhausted) as refused:
        await reserve(svc, g, 1_001)
    assert refused.value.label == f"month on {MODEL}"
    await reserve(svc, g, 50_000, model="local/gemma")


async def test_rates_and_the_per_call_ceiling(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(
        store,
        Policy(
            limits=(SpendLimit("month", 10**9),),
            requests_per_minute=3,
            tokens_per_minute=1_000,
            per_call_ceiling_micro_usd=5_000,
        ),
    )
    with pytest.raises(AllowanceExhausted) as ceiling:
        await reserve(svc, g, 5_001, tokens=10)
    assert ceiling.value.label == "per-call ceiling"
    with pytest.raises(AllowanceExhausted) as tokens:
        await reserve(svc, g, 10, tokens=1_001)
    assert tokens.value.label == "tokens per minute"
    for _ in range(3):
        await reserve(svc, g, 10, tokens=100)
    with pytest.raises(AllowanceExhausted) as rpm:
        await reserve(svc, g, 10, tokens=100)
    assert rpm.value.label == "requests per minute"
    # a rate counts in time buckets: the oldest, partly past, counts whole (refusing at
    # most one bucket early, never letting one call too many through)
    slack = bucket_width(60)
    assert rpm.value.retry_at is not None and rpm.value.retry_at - time.time() <= 60 + slack


async def test_wallet_is_drawn_and_refilled_monthly(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(store, Policy(limits=(SpendLimit("month", 10**9),), use_wallet=True))
    with pytest.raises(AllowanceExhausted) as empty:
        await reserve(svc, g, 1)
    assert empty.value.window.key == "wallet" and empty.value.retry_at is None
    await store.wallets.top_up(g.user_id, 1_000, "first top-up")
    r = await reserve(svc, g, 800)
    with pytest.raises(AllowanceExhausted):
        await reserve(svc, g, 300)  # 800 of the 1,000 are held
    assert await svc.settle(r, Settlement("settled", 250, "upstream")) == 750
    wallet = await store.wallets.get(g.user_id)
    assert (wallet.balance_micro_usd, wallet.reserved_micro_usd) == (750, 0)

    await store.wallets.set_monthly_refill(g.user_id, 5_000)
    await reserve(svc, g, 4_000)  # the first call of the month tops the wallet up to 5,000
    history = await store.wallets.history(g.user_id)
    assert [tx.kind for tx in reversed(history)] == ["topup", "charge", "refill"]
    assert history[0].amount_micro_usd == 4_250 and history[0].balance_after_micro_usd == 5_000


async def test_wait_holds_the_call_until_a_settlement_frees_room(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(
        store, Policy(limits=(SpendLimit("month", 1_000),), on_exhausted="wait", wait_max_s=10)
    )
    first = await reserve(svc, g, 900)

    async def settle_later() -> None:
        await asyncio.sleep(0.3)
        await svc.settle(first, Settlement("settled", 100, "upstream"))

    task = asyncio.create_task(settle_later())
    second = await reserve(svc, g, 800)
    await task
    assert second.waited_s >= 0.25

    quick = await grant_with(
        store, Policy(limits=(SpendLimit("month", 100),), on_exhausted="wait", wait_max_s=0.5)
    )
    started = time.monotonic()
    with pytest.raises(AllowanceExhausted):
        await reserve(svc, quick, 500)  # the month will not reset within half a second
    assert time.monotonic() - started < 2


async def test_downgrade_names_the_fallback_once(store: Store) -> None:
    svc = AllowanceService(store)
    g = await grant_with(
        store,
        Policy(
            limits=(SpendLimit("month", 100),),
            on_exhausted="downgrade",
            fallback_model="local/gemma",
        ),
    )
    with pytest.raises(AllowanceExhausted) as refused:
        await reserve(svc, g, 500)
    assert refused.value.fallback_model == "local/gemma"
    r = await svc.reserve(
        grant=g,
        token_hash=f"tok-{g.id}",
        provider_id=None,
        model="local/gemma",
        endpoint="chat",
        streamed=False,
        amount_micro_usd=0,
        downgraded_from=MODEL,
    )
    entry = await store.ledger.entry(r.entry_id)
    assert entry is not None and entry.downgraded_from == MODEL


async def test_threshold_webhooks_fire_once_each_and_are_signed(store: Store) -> None:
    received: list[tuple[dict[str, object], str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers["X-Keyfob-Signature"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        svc = AllowanceService(store, signing_key=b"k" * 32)
        g = await grant_with(
            store,
            Policy(
                limits=(SpendLimit("month", 1_000),), webhook_url=f"http://127.0.0.1:{port}/hook"
            ),
        )
        for cost in (400, 200, 100, 50, 250):  # 40%, 60%, 70%, 75%, 100%
            r = await reserve(svc, g, cost)
            await svc.settle(r, Settlement("settled", cost, "upstream"))
        await svc.notifier.drain()
        assert sorted(int(str(b["threshold_percent"])) for b, _ in received) == [50, 80, 100]
        secret = svc.notifier.grant_secret(g.id)
        for body, sig in received:
            raw = json.dumps(body, sort_keys=True).encode()
            assert sig == "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
    finally:
        await runner.cleanup()


async def test_a_call_straddling_the_month_boundary_is_charged_to_its_own_month(
    store: Store,
) -> None:
    """Reserved at 23:59:59 on 31 October (Paris), settled in November: the spend lands in
    October, where it was reserved, and November starts empty."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from keyfob.allowance.windows import calendar_month
    from keyfob.metering.types import Counter, Limit, ReserveRequest

    g = await grant_with(store, Policy.monthly(1_000))
    paris = ZoneInfo("Europe/Paris")
    before = datetime(2026, 10, 31, 23, 59, 59, tzinfo=paris).timestamp()
    after = before + 2
    october, november = calendar_month(before, g.timezone), calendar_month(after, g.timezone)
    assert (october.key, november.key) == ("month:2026-10", "month:2026-11")
    assert october.resets_at == november.starts_at
    oct_limit = Limit(october.key, "month", 1_000, (Counter(g.id, october.key),))
    r = await store.metering.reserve(
        ReserveRequest(
            "edge",
            f"tok-{g.id}",
            g.id,
            g.user_id,
            g.client_id,
            None,
            MODEL,
            "chat",
            True,
            900,
            before,
            (oct_limit,),
        )
    )
    assert not hasattr(r, "label")
    await store.metering.settle("edge", Settlement("settled", 700, "upstream"), now=after)
    old = await store.ledger.counter(g.id, october.key)
    new = await store.ledger.counter(g.id, november.key)
    assert old == (700, 0)
    assert new == (0, 0)
