"""Invariant 1 under random interleavings (Hypothesis, stateful), on every metering
backend, with and without a rolling window: reservations, settlements, refunds, wallet
top-ups and clock moves across a month boundary. Settled spend never exceeds any cap of
any window, and each window's remaining amount is exactly what a simple model of the
rules says (a rolling window counts the whole of every time bucket that overlaps it)."""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from keyfob.allowance.plan import bucket_width, buckets
from keyfob.allowance.windows import calendar_month
from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    Limit,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
    wallet_scope,
)
from keyfob.store import Store
from keyfob.store.records import Token
from tests.backends import BACKENDS, pg_database

ROLLING_S = 5 * 3600
START = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()  # month ends in 4 hours
ids = itertools.count()


@dataclass
class Entry:
    id: str
    amount: int
    created_at: float
    month: str
    open: bool = True
    cost: int = 0


@pytest.mark.parametrize("with_rolling", [True, False], ids=["rolling", "calendar"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_no_overspend_under_random_interleavings(
    kind: str, with_rolling: bool, tmp_path: Path
) -> None:
    runner = asyncio.Runner()
    pg = pg_database() if kind == "postgresql" else None
    url = (
        runner.run(pg.__aenter__())
        if pg is not None
        else f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    )
    store = runner.run(Store.open(url, serving=kind == "writeback"))
    width = bucket_width(ROLLING_S)

    async def new_grant(wallet_balance: int) -> tuple[str, str]:
        n = next(ids)
        user = await store.users.create(f"user{n}", "x")
        client = await store.clients.add(
            name=f"app{n}", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
        )
        grant = await store.grants.upsert(
            user_id=user.id, client_id=client.id, models=["m"], cap_micro_usd=0
        )
        await store.tokens.save(
            Token(f"tok{n}", "access", grant.id, client.id, "f", "", None, 0, 10**12, None, None)
        )
        if wallet_balance:
            await store.wallets.top_up(user.id, wallet_balance)
        return user.id, grant.id

    class Allowance(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.now = START
            self.entries: list[Entry] = []
            self.month_cap = 0
            self.rolling_cap = 0
            self.wallet: int | None = None
            self.wallet_reserved = 0
            self.user_id = self.grant_id = self.token = ""

        @rule(
            month_cap=st.integers(0, 60_000),
            rolling_cap=st.integers(0, 40_000),
            wallet=st.one_of(st.none(), st.integers(1, 50_000)),
        )
        @precondition(lambda self: not self.grant_id)
        def open_grant(self, month_cap: int, rolling_cap: int, wallet: int | None) -> None:
            self.month_cap, self.rolling_cap, self.wallet = month_cap, rolling_cap, wallet
            self.user_id, self.grant_id = runner.run(new_grant(wallet or 0))
            self.token = f"tok{next(ids) - 1}"

        def month_key(self) -> str:
            return calendar_month(self.now, "UTC").key

        def month_used(self, key: str) -> tuple[int, int]:
            es = [e for e in self.entries if e.month == key]
            return sum(e.cost for e in es if not e.open), sum(e.amount for e in es if e.open)

        def rolling_used(self) -> int:
            """What the rolling window counts: every call whose time bucket overlaps the
            last ``ROLLING_S`` seconds (the oldest bucket whole)."""
            first = math.floor((self.now - ROLLING_S) / width)
            return sum(
                e.amount if e.open else e.cost
                for e in self.entries
                if math.floor(e.created_at / width) >= first
            )

        def exactly_rolling(self) -> int:
            return sum(
                e.amount if e.open else e.cost
                for e in self.entries
                if e.created_at > self.now - ROLLING_S
            )

        @rule(amount=st.integers(1, 20_000))
        @precondition(lambda self: bool(self.grant_id))
        def reserve(self, amount: int) -> None:
            key = self.month_key()
            spent, held = self.month_used(key)
            fits = spent + held + amount <= self.month_cap and (
                not with_rolling or self.rolling_used() + amount <= self.rolling_cap
            )
            if self.wallet is not None:
                fits = fits and self.wallet - self.wallet_reserved >= amount
            entry_id = f"e{next(ids)}"
            limits: list[Limit] = []
            if with_rolling:
                limits.append(
                    Limit(
                        f"rolling:{ROLLING_S}",
                        "rolling",
                        self.rolling_cap,
                        buckets(self.grant_id, f"roll:{ROLLING_S}:", ROLLING_S, self.now, None),
                        "rolling",
                        span_s=ROLLING_S,
                        bucket_s=width,
                    )
                )
            limits.append(Limit(key, "month", self.month_cap, (Counter(self.grant_id, key),)))
            if self.wallet is not None:
                scope = wallet_scope(self.user_id)
                limits.append(
                    Limit(WALLET_KEY, "wallet", 0, (Counter(scope, WALLET_KEY),), "wallet")
                )
            result = runner.run(
                store.metering.reserve(
                    ReserveRequest(
                        entry_id,
                        self.token,
                        self.grant_id,
                        self.user_id,
                        "",
                        None,
                        "m",
                        "chat",
                        False,
                        amount,
                        self.now,
                        tuple(limits),
                    )
                )
            )
            assert isinstance(result, Reserved) == fits, (result, fits)
            assert isinstance(result, Reserved | Refused)
            if fits:
                self.entries.append(Entry(entry_id, amount, self.now, key))
                if self.wallet is not None:
                    self.wallet_reserved += amount

        @rule(data=st.data(), refund=st.booleans())
        @precondition(lambda self: any(e.open for e in self.entries))
        def settle(self, data: st.DataObject, refund: bool) -> None:
            entry = data.draw(st.sampled_from([e for e in self.entries if e.open]))
            cost = 0 if refund else data.draw(st.integers(0, entry.amount))
            runner.run(
                store.metering.settle(
                    entry.id, Settlement("settled", cost, "upstream"), now=self.now
                )
            )
            entry.open, entry.cost = False, cost
            if self.wallet is not None:
                self.wallet_reserved -= entry.amount
                self.wallet -= cost

        @rule(amount=st.integers(1, 30_000))
        @precondition(lambda self: self.wallet is not None)
        def top_up(self, amount: int) -> None:
            runner.run(store.wallets.top_up(self.user_id, amount))
            assert self.wallet is not None
            self.wallet += amount

        @rule(seconds=st.integers(1, 6 * 3600))
        def advance_clock(self, seconds: int) -> None:
            self.now += seconds

        @invariant()
        def windows_are_exact_and_within_caps(self) -> None:
            if not self.grant_id:
                return
            for key in {e.month for e in self.entries}:
                state = runner.run(store.ledger.counter(self.grant_id, key))
                spent, held = self.month_used(key)
                assert state == (spent, held)
                assert spent + held <= self.month_cap
            if with_rolling:
                assert self.exactly_rolling() <= self.rolling_used() <= self.rolling_cap
            if self.wallet is not None:
                wallet = runner.run(store.wallets.get(self.user_id))
                assert wallet.balance_micro_usd == self.wallet >= 0
                assert wallet.reserved_micro_usd == self.wallet_reserved
                assert wallet.balance_micro_usd >= wallet.reserved_micro_usd

    try:
        run_state_machine_as_test(
            Allowance, settings=settings(max_examples=40, stateful_step_count=30, deadline=None)
        )
    finally:
        runner.run(store.close())
        if pg is not None:
            runner.run(pg.__aexit__(None, None, None))
        runner.close()
