"""One suite for every metering backend (the serving process's write-back, SQLite
transactions, PostgreSQL's functions): the reserve/settle rules of ``metering.rules``
attacked the same way on each. Concurrency comes from many tasks and, where the backend
allows several processes on one database, several stores (as several gateways)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keyfob.allowance.plan import RATE_SPAN_S, bucket_width, buckets
from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    CredentialRevoked,
    GrantChanged,
    Limit,
    Refill,
    Refused,
    Reserved,
    Settlement,
    wallet_scope,
)
from keyfob.store import Store
from tests.backends import (
    RULE_BACKENDS,
    backend_store,
    configure,
    pg_database,
    request,
    seed,
    window_limit,
)

KEY = "month:2026-11"


@pytest.fixture(params=RULE_BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend_store(kind, tmp_path) as s:
        yield s


def rolling(grant_id: str, span: int, cap: int, now: float, prefix: str = "roll") -> Limit:
    return Limit(
        f"rolling:{span}",
        f"rolling {span}s",
        cap,
        buckets(grant_id, f"{prefix}:{span}:", span, now, None),
        "rolling",
        span_s=span,
        bucket_s=bucket_width(span),
    )


def settled(cost: int, tokens_in: int | None = None, tokens_out: int | None = None) -> Settlement:
    return Settlement("settled", cost, "upstream", tokens_in, tokens_out)


async def test_concurrent_reservations_never_exceed_the_cap(kind: str, tmp_path: Path) -> None:
    """200 tasks (over 4 stores where the backend allows several processes) race for a
    cap that fits 25 worst cases."""
    cap, worst, actual = 25_000, 1_000, 400
    async with _stores(kind, tmp_path, 1 if kind == "writeback" else 4) as stores:
        ids = await seed(stores[0], cap)
        limits = (window_limit(ids[2], KEY, cap),)

        async def call(i: int) -> bool:
            store = stores[i % len(stores)]
            r = await store.metering.reserve(request(ids, f"e{i}", worst, limits))
            if isinstance(r, Refused):
                return False
            assert isinstance(r, Reserved)
            await asyncio.sleep(0)
            await store.metering.settle(f"e{i}", settled(actual))
            return True

        admitted = sum(await asyncio.gather(*(call(i) for i in range(200))))
        spent, reserved = await stores[0].ledger.counter(ids[2], KEY)
        assert reserved == 0
        assert spent == admitted * actual <= cap
        assert admitted >= 25  # every worst case that fits was admitted
        assert len(await stores[0].ledger.entries(grant_id=ids[2], limit=1000)) == admitted


async def test_a_rolling_window_holds_under_concurrency(kind: str, tmp_path: Path) -> None:
    """A rolling limit sums many counters (its time buckets): 200 racing tasks over
    several stores never hold past its cap, and what they spent is what it counts."""
    cap, worst, actual = 20_000, 1_000, 600
    async with _stores(kind, tmp_path, 1 if kind == "writeback" else 4) as stores:
        ids = await seed(stores[0], cap)
        now = time.time()
        limits = (rolling(ids[2], 3600, cap, now),)

        async def call(i: int) -> bool:
            store = stores[i % len(stores)]
            r = await store.metering.reserve(request(ids, f"r{i}", worst, limits, now=now))
            if isinstance(r, Refused):
                return False
            await asyncio.sleep(0)
            await store.metering.settle(f"r{i}", settled(actual))
            return True

        admitted = sum(await asyncio.gather(*(call(i) for i in range(200))))
        [values] = await stores[0].ledger.values(limits, None)
        assert sum(v[1] for v in values) == 0
        assert sum(v[0] for v in values) == admitted * actual <= cap
        assert admitted >= cap // worst


async def test_settle_is_idempotent_and_revocation_refuses(store: Store) -> None:
    ids = await seed(store, 10_000)
    limits = (window_limit(ids[2], KEY, 10_000),)
    assert isinstance(await store.metering.reserve(request(ids, "a", 3_000, limits)), Reserved)
    await store.metering.settle("a", settled(1_000))
    assert await store.metering.settle("a", settled(1_000)) == ()
    assert await store.ledger.counter(ids[2], KEY) == (1_000, 0)

    assert isinstance(await store.metering.reserve(request(ids, "b", 3_000, limits)), Reserved)
    await store.grants.revoke(ids[2])
    with pytest.raises(CredentialRevoked):
        await store.metering.reserve(request(ids, "c", 3_000, limits))
    # the call in flight when the grant ended still settles: no lost usage
    await store.metering.settle("b", settled(500))
    assert await store.metering.reconcile_dead(started_before=time.time()) == 0
    assert await store.ledger.counter(ids[2], KEY) == (1_500, 0)


async def test_a_grant_that_does_not_exist_gets_no_ledger_row(store: Store) -> None:
    """No backend writes a ledger row for a grant it does not have (on PostgreSQL no
    foreign key says so since migration 0025: the reservation's own check must), nor
    for another grant's token."""
    ids = await seed(store, 10_000)
    other = await another_grant(store, ids, 10_000)
    for n, (grant_id, token) in enumerate((("no-such-grant", ids[3]), (ids[2], other[3]))):
        forged = (ids[0], ids[1], grant_id, token)
        limits = (window_limit(grant_id, KEY, 10_000),)
        with pytest.raises(CredentialRevoked):
            await store.metering.reserve(request(forged, f"x{n}", 100, limits))
        assert await store.ledger.entry(f"x{n}") is None
    assert await store.ledger.entries(limit=10) == []


async def test_dead_reservations_are_charged_once(store: Store) -> None:
    ids = await seed(store, 10_000)
    limits = (window_limit(ids[2], KEY, 10_000),)
    await store.metering.reserve(request(ids, "dead", 2_500, limits, streamed=True))
    assert await store.metering.reconcile_dead(started_before=time.time() + 1) == 1
    assert await store.metering.reconcile_dead(started_before=time.time() + 1) == 0
    entry = await store.ledger.entry("dead")
    assert entry is not None
    assert entry.status == "charged_reservation" and entry.needs_reconciliation
    assert entry.cost_micro_usd == 2_500
    assert await store.ledger.counter(ids[2], KEY) == (2_500, 0)


async def test_a_dead_instance_is_released_and_no_other(store: Store) -> None:
    """The reaper names dead instances: their calls are charged, a live one's are not."""
    ids = await seed(store, 10_000)
    limits = (window_limit(ids[2], KEY, 10_000),)
    await store.metering.reserve(request(ids, "dead1", 1_000, limits, instance_id="dead"))
    await store.metering.reserve(request(ids, "live1", 2_000, limits, instance_id="live"))
    assert await store.metering.reconcile_dead(instance_ids=["dead"]) == 1
    assert await store.metering.reconcile_dead(instance_ids=["dead"]) == 0
    live = await store.ledger.entry("live1")
    assert live is not None and live.status == "reserved"
    await store.metering.settle("live1", settled(700))
    assert await store.ledger.counter(ids[2], KEY) == (1_700, 0)


async def test_all_or_nothing(store: Store) -> None:
    """A call that fits one limit but not the next holds neither, and the refusal names
    the limit that refused with its state."""
    ids = await seed(store, 10_000)
    roomy = window_limit(ids[2], "month:2026-11", 10_000)
    tight = window_limit(ids[2], "day:2026-11-05", 1_500)
    assert isinstance(
        await store.metering.reserve(request(ids, "a", 1_000, (roomy, tight))), Reserved
    )
    refused = await store.metering.reserve(request(ids, "b", 1_000, (roomy, tight)))
    assert isinstance(refused, Refused)
    assert refused.label == "day:2026-11-05"
    assert (refused.window.cap_micro_usd, refused.window.reserved_micro_usd) == (1_500, 1_000)
    assert await store.ledger.counter(ids[2], roomy.key) == (0, 1_000)
    assert await store.ledger.entry("b") is None


async def test_rolling_buckets_refuse_and_free_with_time(store: Store) -> None:
    """Spend in a rolling window refuses until the bucket holding it leaves the span; the
    refusal says when (at most one bucket's width later than the exact moment)."""
    ids = await seed(store, 10**9)
    span, cap = 3600, 5_000
    t0 = time.time()
    got = await store.metering.reserve(
        request(ids, "a", 4_000, (rolling(ids[2], span, cap, t0),), now=t0)
    )
    assert isinstance(got, Reserved)
    await store.metering.settle("a", settled(4_000), now=t0)
    later = t0 + 600
    refused = await store.metering.reserve(
        request(ids, "b", 2_000, (rolling(ids[2], span, cap, later),), now=later)
    )
    assert isinstance(refused, Refused)
    assert refused.window.spent_micro_usd == 4_000
    assert refused.retry_at is not None
    assert t0 + span <= refused.retry_at <= t0 + span + bucket_width(span)
    free = refused.retry_at + 1
    got = await store.metering.reserve(
        request(ids, "c", 2_000, (rolling(ids[2], span, cap, free),), now=free)
    )
    assert isinstance(got, Reserved)


async def test_rates_count_calls_and_tokens(store: Store) -> None:
    ids = await seed(store, 10**9)
    now = time.time()

    def rates() -> tuple[Limit, Limit]:
        rpm = Limit(
            "requests_per_minute",
            "requests per minute",
            3,
            buckets(ids[2], "rpm:", RATE_SPAN_S, now, None),
            "rate",
            span_s=RATE_SPAN_S,
            bucket_s=bucket_width(RATE_SPAN_S),
        )
        tpm = Limit(
            "tokens_per_minute",
            "tokens per minute",
            1_000,
            buckets(ids[2], "tpm:", RATE_SPAN_S, now, None),
            "rate",
            span_s=RATE_SPAN_S,
            bucket_s=bucket_width(RATE_SPAN_S),
        )
        return rpm, tpm

    for i in range(3):
        got = await store.metering.reserve(request(ids, f"k{i}", 10, rates(), now=now, tokens=300))
        assert isinstance(got, Reserved)
    refused = await store.metering.reserve(request(ids, "k3", 10, rates(), now=now, tokens=10))
    assert isinstance(refused, Refused) and refused.label == "requests per minute"
    # settled calls count their real tokens: 3 x 300 held, one settles at 50
    await store.metering.settle("k0", settled(10, 20, 30), now=now)
    await store.metering.settle("k1", settled(10, 20, 30), now=now)
    refused = await store.metering.reserve(request(ids, "k4", 10, rates(), now=now, tokens=10))
    assert isinstance(refused, Refused) and refused.label == "requests per minute"
    [rpm_vals, tpm_vals] = await store.ledger.values(rates(), None)
    assert (sum(v[0] for v in rpm_vals), sum(v[1] for v in rpm_vals)) == (2, 1)
    assert (sum(v[0] for v in tpm_vals), sum(v[1] for v in tpm_vals)) == (100, 300)


async def test_the_wallet_holds_charges_and_refills(store: Store) -> None:
    """The wallet counter: a hold needs the balance, a settlement charges it and writes
    its history row, a monthly refill tops it up *to* its amount once per month."""
    ids = await seed(store, 10**9)
    user_id = ids[0]
    wallet = Limit(WALLET_KEY, "wallet", 0, (Counter(wallet_scope(user_id), WALLET_KEY),), "wallet")
    refused = await store.metering.reserve(request(ids, "w0", 100, (wallet,)))
    assert isinstance(refused, Refused) and refused.label == "wallet"
    await store.wallets.top_up(user_id, 1_000)
    got = await store.metering.reserve(request(ids, "w1", 800, (wallet,)))
    assert isinstance(got, Reserved)
    assert (got.windows[0].cap_micro_usd, got.windows[0].reserved_micro_usd) == (1_000, 800)
    refused = await store.metering.reserve(request(ids, "w2", 300, (wallet,)))
    assert isinstance(refused, Refused)
    await store.metering.settle("w1", settled(650))
    w = await store.wallets.get(user_id)
    assert (w.balance_micro_usd, w.reserved_micro_usd) == (350, 0)
    kinds = [
        (tx.kind, tx.amount_micro_usd, tx.balance_after_micro_usd)
        for tx in await store.wallets.history(user_id)
    ]
    assert ("charge", -650, 350) in kinds and ("topup", 1_000, 1_000) in kinds
    await store.wallets.set_monthly_refill(user_id, 2_000)
    refill = Refill(user_id, "month:2026-12")
    got = await store.metering.reserve(request(ids, "w3", 1_900, (wallet,), refill=refill))
    assert isinstance(got, Reserved)  # refilled to 2,000 first
    await store.metering.settle("w3", settled(1_900))
    got = await store.metering.reserve(request(ids, "w4", 200, (wallet,), refill=refill))
    assert isinstance(got, Refused)  # once per month: 100 left
    w = await store.wallets.get(user_id)
    assert w.balance_micro_usd == 100
    history = await store.wallets.history(user_id)
    assert sum(tx.amount_micro_usd for tx in history) == 100  # the history adds up


async def test_counters_are_computed_from_the_ledger_for_a_new_grant_version(store: Store) -> None:
    """A counter with a period, planned under a newer grant version than it was
    computed for (or missing, its period begun before that version), is computed from
    the ledger first: settled costs and open holds of its period count, older calls do
    not, and the calls in flight then settle into it."""
    ids = await seed(store, 10**9)
    start = time.time() - 100
    month = Limit(
        KEY, "month", 10_000, (Counter(ids[2], KEY, starts_at=start, ends_at=start + 10**6),)
    )
    old = window_limit(ids[2], "other", 10**9)
    await store.metering.reserve(request(ids, "before", 5_000, (old,), now=start - 50))
    await store.metering.settle("before", settled(5_000))
    await store.metering.reserve(request(ids, "in", 3_000, (old,), now=start + 10))
    await store.metering.settle("in", settled(2_000))
    await store.metering.reserve(request(ids, "open", 4_000, (old,), now=start + 20))
    basis = await _grant_version(store, ids[2])
    refused = await store.metering.reserve(request(ids, "x", 5_000, (month,), basis=basis))
    assert isinstance(refused, Refused)  # 2,000 settled + 4,000 held + 5,000 > 10,000
    assert (refused.window.spent_micro_usd, refused.window.reserved_micro_usd) == (2_000, 4_000)
    got = await store.metering.reserve(request(ids, "y", 4_000, (month,), basis=basis))
    assert isinstance(got, Reserved)
    await store.metering.settle("open", settled(1_000))  # settles into the computed month
    assert await store.ledger.counter(ids[2], KEY) == (3_000, 4_000)
    with pytest.raises(GrantChanged):
        await store.metering.reserve(request(ids, "z", 1, (month,), basis=basis - 1))


# -- helpers ---------------------------------------------------------------------------


async def _grant_version(store: Store, grant_id: str) -> float:
    """Edit the grant (as the CLI does) and return its new ``updated_at``."""
    from sqlalchemy import text

    basis = time.time()
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE grants SET updated_at = :b WHERE id = :g"), {"b": basis, "g": grant_id}
        )
    return basis


class _stores:
    """``n`` stores on one database (gateways in separate processes); the write-back
    allows one, its owner."""

    def __init__(self, kind: str, tmp_path: Path, n: int) -> None:
        self.kind, self.tmp_path, self.n = kind, tmp_path, n
        self.stores: list[Store] = []
        self._pg: object = None

    async def __aenter__(self) -> list[Store]:
        if self.kind.startswith("postgresql"):
            self._pg = pg_database()
            url = await self._pg.__aenter__()  # type: ignore[attr-defined]
        else:
            url = f"sqlite+aiosqlite:///{self.tmp_path / 'k.db'}"
        for i in range(self.n):
            serving = self.kind == "writeback" and i == 0
            self.stores.append(await Store.open(url, migrate=i == 0, serving=serving))
            configure(self.stores[-1], self.kind)
        return self.stores

    async def __aexit__(self, *exc: object) -> None:
        for s in self.stores:
            await s.close()
        if self._pg is not None:
            await self._pg.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def test_computing_counters_while_calls_settle(kind: str, tmp_path: Path) -> None:
    """Calls in flight settle while other calls find their counters stale and compute
    them from the ledger (a grant edited under load), over several stores: no lock cycle
    between the computation and the settlements, and the counters end exact."""
    async with _stores(kind, tmp_path, 1 if kind == "writeback" else 4) as stores:
        ids = await seed(stores[0], 10**9)
        start = time.time() - 100
        month = Limit(
            KEY, "month", 10**9, (Counter(ids[2], KEY, starts_at=start, ends_at=start + 10**6),)
        )
        basis = await _grant_version(stores[0], ids[2])

        async def call(i: int, basis: float) -> None:
            store = stores[i % len(stores)]
            r = await store.metering.reserve(
                request(ids, f"s{basis}-{i}", 100, (month,), basis=basis)
            )
            assert isinstance(r, Reserved)
            await asyncio.sleep(0)
            await store.metering.settle(f"s{basis}-{i}", settled(40))

        for _round in range(3):  # each round: a new grant version, every counter stale
            await asyncio.gather(*(call(i, basis) for i in range(40)))
            basis = await _grant_version(stores[0], ids[2])
        [values] = await stores[0].ledger.values([month], basis)
        assert values == [(3 * 40 * 40, 0)]


async def test_lost_postgresql_connections_lose_nothing(tmp_path: Path) -> None:
    """PostgreSQL drops every connection of the database while calls run (a restart, a
    failover): reservations and settlements go on over new connections, and no
    reservation is left held or counted twice."""
    import asyncpg

    from tests.backends import PG_ADMIN

    async with _stores("postgresql", tmp_path, 1) as stores:
        store = stores[0]
        ids = await seed(store, 10**9)
        limits = (window_limit(ids[2], KEY, 10**9),)
        name = store.engine.url.database

        async def drop_all() -> None:
            admin = await asyncpg.connect(PG_ADMIN)
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
            finally:
                await admin.close()

        async def call(i: int) -> None:
            r = await store.metering.reserve(request(ids, f"l{i}", 100, limits))
            assert isinstance(r, Reserved)
            await asyncio.sleep(0.001 * (i % 5))
            await store.metering.settle(r.entry_id, settled(60))

        tasks = [asyncio.create_task(call(i)) for i in range(60)]
        for _ in range(3):
            await asyncio.sleep(0.01)
            await drop_all()
        await asyncio.gather(*tasks)
        rows = await store.ledger.entries(grant_id=ids[2], limit=1000)
        assert not [r for r in rows if r.status == "reserved"]
        spent = sum(r.cost_micro_usd or 0 for r in rows)
        assert len([r for r in rows if r.status == "settled"]) == 60
        assert await store.ledger.counter(ids[2], KEY) == (spent, 0) == (60 * 60, 0)


async def test_a_settlement_lost_with_postgresql_is_replayed(tmp_path: Path) -> None:
    """A settlement commits without waiting for the WAL flush, for its own transaction
    only; when PostgreSQL loses it (a crash before the flush, imitated here by undoing
    the settlement and ending every connection, which a crash does too), the next
    metering call settles it again, exactly once however often connections are lost."""
    import asyncpg

    from tests.backends import PG_ADMIN

    async with _stores("postgresql", tmp_path, 1) as stores:
        store = stores[0]
        ids = await seed(store, 10**9)
        limits = (window_limit(ids[2], KEY, 10**9),)
        name = store.engine.url.database
        db = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
        try:
            async with db.transaction():
                await db.fetch(
                    "SELECT * FROM keyfob_settle('none', 'settled', "
                    + "0, 'upstream', 0, 0, 0, 0, false, 200, NULL, 0)"
                )
                assert await db.fetchval("SHOW synchronous_commit") == "off"
            assert await db.fetchval("SHOW synchronous_commit") == "on"  # its own only

            assert isinstance(
                await store.metering.reserve(request(ids, "e1", 100, limits)), Reserved
            )
            await store.metering.settle("e1", settled(60))
            assert await store.ledger.counter(ids[2], KEY) == (60, 0)
            async with db.transaction():  # as if the commit had never reached the disk
                await db.execute(
                    "UPDATE ledger SET status = 'reserved', cost_micro_usd = NULL, "
                    "settled_at = NULL WHERE id = 'e1'"
                )
                await db.execute(
                    "UPDATE counters SET spent = spent - 60, reserved = reserved + 100 "
                    "WHERE scope = $1 AND key = $2",
                    ids[2],
                    KEY,
                )
            for round_ in range(2):
                await db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                await asyncio.sleep(0.05)  # the client sees its connections close
                r = await store.metering.reserve(request(ids, f"n{round_}", 100, limits))
                assert isinstance(r, Reserved)
                assert await store.ledger.counter(ids[2], KEY) == (60, 100)
                await store.metering.settle(f"n{round_}", settled(0))
            [e1] = [e for e in await store.ledger.entries(grant_id=ids[2]) if e.id == "e1"]
            assert (e1.status, e1.cost_micro_usd) == ("settled", 60)
            assert not store.metering.replays.due  # type: ignore[attr-defined]
        finally:
            await db.close()


async def another_grant(
    store: Store, ids: tuple[str, str, str, str], cap: int
) -> tuple[str, str, str, str]:
    """``seed``'s person with one more app, grant and live token."""
    from keyfob.store.records import Token

    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=ids[0], client_id=client.id, models=["m"], cap_micro_usd=cap
    )
    token = f"tok-{grant.id}"
    await store.tokens.save(
        Token(token, "access", grant.id, client.id, "fam", "", None, 0, 1e12, None, None)
    )
    return ids[0], client.id, grant.id, token


async def test_batches_of_many_grants_keep_every_rule(tmp_path: Path) -> None:
    """PostgreSQL sends the common case's ops that overlap together (``pg_batch``):
    400 calls over 8 grants, each grant's cap fitting 40 worst cases, race through one
    process: the ops went several to a round trip, no two batches deadlocked (counters
    are locked in one order), and each grant holds its own cap and its own spend."""
    async with backend_store("postgresql", tmp_path) as store:
        cap, worst, actual = 40_000, 1_000, 300
        first = await seed(store, cap)
        grants = [first, *[await another_grant(store, first, cap) for _ in range(7)]]
        batches = store.metering.batches  # type: ignore[attr-defined]
        trips0, ops0 = batches.round_trips, batches.ops

        async def call(i: int) -> tuple[str, bool]:
            ids = grants[i % len(grants)]
            limits = (window_limit(ids[2], KEY, cap),)
            r = await store.metering.reserve(request(ids, f"b{i}", worst, limits))
            if isinstance(r, Refused):
                return ids[2], False
            await asyncio.sleep(0.001 * (i % 3))
            await store.metering.settle(f"b{i}", settled(actual))
            return ids[2], True

        done = await asyncio.gather(*(call(i) for i in range(400)))
        trips, ops = batches.round_trips - trips0, batches.ops - ops0
        admitted = sum(ok for _g, ok in done)
        assert admitted >= 320  # those refused at first may fit once others settled
        assert ops >= 400 + 320 and trips < ops / 4, (trips, ops)  # each settled as it was reserved
        for _user, _client, grant_id, _token in grants:
            admitted = sum(ok for g, ok in done if g == grant_id)
            assert admitted >= cap // worst
            assert await store.ledger.counter(grant_id, KEY) == (admitted * actual, 0)
            assert admitted * actual <= cap


async def test_one_ops_error_in_a_batch_is_its_own(tmp_path: Path) -> None:
    """A batch that fails for one op's sake (here a reservation under an entry id the
    ledger already has) is sent again op by op: that op fails alone, every other call
    in it is reserved and settled as if it had been sent alone."""
    import asyncpg

    async with backend_store("postgresql", tmp_path) as store:
        ids = await seed(store, 10**9)
        limits = (window_limit(ids[2], KEY, 10**9),)
        assert isinstance(await store.metering.reserve(request(ids, "dup", 100, limits)), Reserved)
        await store.metering.settle("dup", settled(50))
        batches = store.metering.batches  # type: ignore[attr-defined]
        trips0 = batches.round_trips
        names = [f"ok{i}" for i in range(6)] + ["dup"] + [f"ok{i}" for i in range(6, 12)]
        got = await asyncio.gather(
            *(store.metering.reserve(request(ids, n, 100, limits)) for n in names),
            return_exceptions=True,
        )
        assert batches.round_trips - trips0 < len(names)  # some went together
        [failed] = [(n, g) for n, g in zip(names, got, strict=True) if isinstance(g, Exception)]
        assert failed[0] == "dup"
        assert isinstance(failed[1], asyncpg.exceptions.UniqueViolationError)
        assert all(isinstance(g, Reserved) for n, g in zip(names, got, strict=True) if n != "dup")
        await asyncio.gather(*(store.metering.settle(n, settled(40)) for n in names if n != "dup"))
        assert await store.ledger.counter(ids[2], KEY) == (50 + 12 * 40, 0)


async def test_a_batch_with_a_reservation_waits_for_the_disk(tmp_path: Path) -> None:
    """keyfob_meter_many's settlements alone commit without waiting for the WAL flush
    (as keyfob_settle_one), but a batch that holds a reservation commits waiting for it,
    the session's own setting put back, so no call goes upstream before it is on disk."""
    import asyncpg

    from tests.backends import PG_ADMIN

    async with backend_store("postgresql", tmp_path) as store:
        user_id, client_id, grant_id, token = await seed(store, 10**9)
        name = store.engine.url.database
        db = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
        nulls: list[None] = [None]

        def op(kind: int, entry: str) -> list[Any]:
            reserve = kind == 1
            return [
                [kind], [entry], [grant_id], [KEY], [time.time()],
                nulls if reserve else ["settled"], nulls if reserve else [10],
                nulls if reserve else ["upstream"], nulls, nulls, nulls, nulls,
                nulls if reserve else [False], nulls, nulls,
                [token] if reserve else nulls, [grant_id] if reserve else nulls,
                [user_id] if reserve else nulls, [client_id] if reserve else nulls, nulls,
                ["m"] if reserve else nulls, ["chat"] if reserve else nulls,
                [False] if reserve else nulls, [100] if reserve else nulls, nulls, nulls,
                nulls, nulls, nulls, [1e12] if reserve else nulls,
                [10**9] if reserve else nulls, [100] if reserve else nulls,
            ]  # fmt: skip

        many = "SELECT * FROM keyfob_meter_many(" + ", ".join(f"${i}" for i in range(1, 33)) + ")"
        try:
            async with db.transaction():
                row = await db.fetchrow(many, *op(1, "w1"))
                assert row is not None and row["o_reserved"] == [100]
                assert await db.fetchval("SHOW synchronous_commit") == "on"
            async with db.transaction():
                row = await db.fetchrow(many, *op(0, "w1"))
                assert row is not None and row["o_spent"] == [10]
                assert await db.fetchval("SHOW synchronous_commit") == "off"  # its own only
            assert await db.fetchval("SHOW synchronous_commit") == "on"
        finally:
            await db.close()


async def test_a_settlement_waiting_for_company_is_written_alone_soon(tmp_path: Path) -> None:
    """A settlement nobody awaits, sent while another round trip of the process is on its
    way, waits for a reservation to go with; with none coming it is still written within
    ``SETTLE_WAIT_S`` (plus a round trip), without any read to hurry it."""
    import asyncpg

    from keyfob.metering import pending
    from keyfob.store.metering.pg_batch import SETTLE_WAIT_S
    from tests.backends import PG_ADMIN

    async with backend_store("postgresql", tmp_path) as store:
        ids = await seed(store, 10**9)
        limits = (window_limit(ids[2], KEY, 10**9),)
        assert isinstance(await store.metering.reserve(request(ids, "s1", 100, limits)), Reserved)
        db = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{store.engine.url.database}")
        try:
            flying = asyncio.ensure_future(store.metering.reserve(request(ids, "s2", 100, limits)))
            await asyncio.sleep(0)  # s2's round trip is on its way
            unawaited = pending.UNAWAITED.set(True)
            try:
                settling = asyncio.ensure_future(store.metering.settle("s1", settled(70)))
            finally:
                pending.UNAWAITED.reset(unawaited)
            assert isinstance(await flying, Reserved)
            started = time.monotonic()
            while await db.fetchval("SELECT status FROM ledger WHERE id = 's1'") == "reserved":
                assert time.monotonic() - started < SETTLE_WAIT_S + 1.0
                await asyncio.sleep(0.0005)
            await settling
            assert await db.fetchval("SELECT cost_micro_usd FROM ledger WHERE id = 's1'") == 70
        finally:
            await db.close()
