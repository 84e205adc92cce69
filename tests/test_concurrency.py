"""Invariant 1, no overspend: 50 simultaneous calls against an allowance that fits only
some of them. Settled spend stays within the cap, and every refused call was refused
before the upstream saw it (the upstream's own request counter proves it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from keyfob.context import Keyfob
from keyfob.providers.linking import link_provider
from keyfob.settings import Settings
from tests.support import FakeLLM, KeyfobServer, ledger_rows, mint_token

MODEL = "fake/gpt-4o-mini"


async def link_fake(data_dir: Path, fakellm: FakeLLM) -> None:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        await link_provider(
            kf,
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url=fakellm.base_url,
            api_key="sk-test-upstream-key",
            models=["gpt-4o-mini"],
        )
    finally:
        await kf.close()


async def fire(url: str, token: str, calls: int, stream: bool) -> tuple[int, int, list[str]]:
    ok = refused = 0
    problems: list[str] = []
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key=token, max_retries=0, timeout=60
    ) as client:

        async def one() -> None:
            nonlocal ok, refused
            try:
                if stream:
                    chunks = await client.chat.completions.create(
                        model=MODEL,
                        max_tokens=1000,
                        stream=True,
                        messages=[{"role": "user", "content": "hello"}],
                    )
                    async for _ in chunks:
                        pass
                else:
                    await client.chat.completions.create(
                        model=MODEL,
                        max_tokens=1000,
                        messages=[{"role": "user", "content": "hello"}],
                    )
                ok += 1
            except openai.RateLimitError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                if "allowance" not in str(body).lower():
                    problems.append(str(body))
                refused += 1

        await asyncio.gather(*(one() for _ in range(calls)))
    return ok, refused, problems


# worst case 605 micro-USD a call: 700 admits at most 14 plain calls (each settles at 7),
# 1,500 at most two streams in flight at once
@pytest.mark.parametrize(("cap_micro_usd", "stream"), [(700, False), (1_500, True)])
def test_fifty_simultaneous_calls_never_overspend(
    server: KeyfobServer, fakellm: FakeLLM, cap_micro_usd: int, stream: bool
) -> None:
    asyncio.run(link_fake(server.data_dir, fakellm))
    minted = mint_token(server.data_dir, [MODEL], cap_micro_usd)
    before = fakellm.request_count()

    ok, refused, problems = asyncio.run(fire(server.url, minted["token"], 50, stream))

    upstream_seen = fakellm.request_count() - before
    assert problems == []
    assert ok + refused == 50
    assert refused > 0, "the cap was meant to refuse some calls"
    assert upstream_seen == ok, "a refused call reached the upstream"
    rows = [r for r in ledger_rows(server.data_dir) if r["grant_id"] == minted["grant_id"]]
    assert len(rows) == ok, "refused calls must not be in the ledger"
    # fakellm reports usage on plain calls only; streams are counted by Keyfob
    assert all(r["status"] == ("estimated" if stream else "settled") for r in rows)
    assert all(0 < r["cost_micro_usd"] <= r["reserved_micro_usd"] for r in rows)
    spent = sum(r["cost_micro_usd"] for r in rows)
    assert spent <= cap_micro_usd
    if not stream:
        assert spent == 7 * ok  # 1 x $0.15 + 11 x $0.60 per MTok = 6.75 -> 7 micro-USD
