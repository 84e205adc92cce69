"""Keyfob's own API for apps (quote, allowance, usage export) and the exhaustion policies
end to end over a real server: downgrade to the person's local model."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import httpx
import openai

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.context import Keyfob
from keyfob.providers.linking import link_provider
from keyfob.settings import Settings
from tests.support import FakeLLM, KeyfobServer, ledger_rows, mint_token
from tests.test_concurrency import MODEL, link_fake

HELLO = {"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}


def api(server: KeyfobServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_quote_names_worst_case_expected_cost_and_the_refusing_limit(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    asyncio.run(link_fake(server.data_dir, fakellm))
    roomy = mint_token(server.data_dir, [MODEL], 1_000_000, "roomy")
    tight = mint_token(server.data_dir, [MODEL], 500, "tight")
    with api(server, roomy["token"]) as c:
        q = c.post("/v1/keyfob/quote", json=HELLO).json()
        # bound: 16 + 8 + 5 bytes = 29 input tokens, 1000 output: 29 x 0.15 + 1000 x 0.60
        assert q["worst_case"] == {
            "input_tokens": 29,
            "output_tokens": 1000,
            "cost_usd": "0.000605",
        }
        assert q["allowed"] is True and q["refused_by"] is None
        assert q["expected"]["output_basis"] == "bound / 4"
        assert c.post("/v1/chat/completions", json=HELLO).status_code == 200
        again = c.post("/v1/keyfob/quote", json=HELLO).json()
        assert again["expected"]["output_basis"] == "recent calls"
        assert again["expected"]["output_tokens"] == 11
        assert c.post("/v1/keyfob/quote", content=b"{nope").status_code == 400
        assert c.post(
            "/v1/keyfob/quote",
            json={"model": "nope/x", "messages": [{"role": "user", "content": "hi"}]},
        ).status_code in (400, 404)
        limits = c.get("/v1/keyfob/allowance").json()["limits"]
        assert [(x["limit"], x["spent_usd"]) for x in limits] == [("month", "0.000007")]
    with api(server, tight["token"]) as c:
        q = c.post("/v1/keyfob/quote", json=HELLO).json()
        assert q["allowed"] is False and q["refused_by"] == "month" and q["retry_at"]
    before = fakellm.request_count()
    with api(server, tight["token"]) as c:
        assert c.post("/v1/chat/completions", json=HELLO).status_code == 429
    assert fakellm.request_count() == before


def test_usage_api_json_and_csv_and_the_owner_export_needs_a_session(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    asyncio.run(link_fake(server.data_dir, fakellm))
    minted = mint_token(server.data_dir, [MODEL], 1_000_000, "reporter")
    with api(server, minted["token"]) as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=HELLO).status_code == 200
        data = c.get("/v1/keyfob/usage", params={"by": "model,day"}).json()["data"]
        assert len(data) == 1 and data[0]["calls"] == 3 and data[0]["cost_micro_usd"] == 21
        text = c.get("/v1/keyfob/usage", params={"format": "csv"}).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows[0]["app"] == "reporter" and rows[0]["cost_usd"] == "0.000021"
        assert c.get("/v1/keyfob/usage", params={"by": "weather"}).status_code == 400
        assert c.get("/v1/keyfob/usage", params={"since": "yesterday"}).status_code == 400
    assert httpx.get(f"{server.url}/api/usage", timeout=10).status_code == 401


async def _downgrade_setup(data_dir: Path, fakellm: FakeLLM, grant_id: str) -> None:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        await link_provider(
            kf,
            user_id=owner.id,
            name="local",
            kind="openai_compatible",
            base_url=fakellm.base_url,
            api_key=None,
            models=["gpt-4o-mini"],
            is_local=True,
        )
        policy = Policy(
            limits=(SpendLimit("month", 100),),
            on_exhausted="downgrade",
            fallback_model="local/gpt-4o-mini",
        )
        await kf.store.grants.set_policy(
            grant_id,
            policy_json=policy.to_json(),
            cap_micro_usd=100,
            models=[MODEL, "local/gpt-4o-mini"],
        )
    finally:
        await kf.close()


def test_downgrade_serves_the_local_fallback_and_says_so(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    asyncio.run(link_fake(server.data_dir, fakellm))
    minted = mint_token(server.data_dir, [MODEL], 100, "frugal")
    asyncio.run(_downgrade_setup(server.data_dir, fakellm, minted["grant_id"]))
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=minted["token"], max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(**HELLO)  # type: ignore[arg-type]
        assert raw.headers["x-keyfob-downgraded-to"] == "local/gpt-4o-mini"
        assert raw.headers["x-keyfob-cost-usd"] == "0.000000"
        assert raw.parse().choices[0].message.content
    (row,) = [r for r in ledger_rows(server.data_dir) if r["grant_id"] == minted["grant_id"]]
    assert row["model"] == "local/gpt-4o-mini" and row["downgraded_from"] == MODEL
    assert row["cost_micro_usd"] == 0


def test_quote_uses_the_reservations_output_bound_and_fit(tmp_path: Path) -> None:
    """gpt-4o-mini's shipped maximum output is 16,384 tokens, not the 4,096 default: a
    body without a limit is quoted at 16,384, as the call is reserved; on a cap too small
    for that, the quote fits the limit exactly as the call is fitted."""
    from tests.adversarial_upstream import AdversarialUpstream, Behaviour
    from tests.gateway_inproc import link, mint
    from tests.oauth_app import InProcess

    up = AdversarialUpstream()
    up.configure("oai", Behaviour(price=(150_000, 600_000), natural_tokens=50))
    body = {"model": "oai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    try:
        with InProcess(tmp_path / "data", models=()) as app:
            link(app, "oai", up.url("oai"), models=["gpt-4o-mini"], kind="openai_compatible",
                 api_key="sk-" + "q" * 40, price=(150_000, 600_000))  # fmt: skip
            for cap, lowered in ((1_000_000, False), (5_000, True)):
                token = mint(app, ["oai/gpt-4o-mini"], cap_micro_usd=cap)
                auth = {"Authorization": f"Bearer {token}"}
                q = app.client.post("/v1/keyfob/quote", json=body, headers=auth).json()
                call = app.client.post("/v1/chat/completions", json=body, headers=auth)
                assert call.status_code == 200, call.text
                assert q["allowed"] is True
                # the quote is the reservation, to the micro-dollar
                assert call.headers["x-keyfob-reserved-usd"] == q["worst_case"]["cost_usd"]
                sent = up.of("oai")[-1].body["max_tokens"]
                assert q["output_limit"]["max_tokens"] == sent == q["worst_case"]["output_tokens"]
                if not lowered:
                    assert sent == 16_384 and q["output_limit"]["lowered_from"] is None
                else:
                    assert 256 <= sent < 16_384
                    assert q["output_limit"]["lowered_from"] == 16_384
                    assert call.headers["x-keyfob-max-tokens-lowered-from"] == "16384"
            # the app's own limit is not fitted ("auto"): quoted as refused, as called
            token = mint(app, ["oai/gpt-4o-mini"], cap_micro_usd=5_000)
            auth = {"Authorization": f"Bearer {token}"}
            own = {**body, "max_tokens": 16_000}
            q = app.client.post("/v1/keyfob/quote", json=own, headers=auth).json()
            assert q["allowed"] is False and q["output_limit"]["lowered_from"] is None
            refused = app.client.post("/v1/chat/completions", json=own, headers=auth)
            assert refused.status_code == 429
    finally:
        up.close()
