"""A grant's fallback chain: the next model serves a call whose upstream failed before
answering (503, 429, refused connection, no first byte), each attempt on the ledger,
each model re-quoted and re-reserved, never a model the grant does not allow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from keyfob.allowance.policy import Policy, PolicyError
from keyfob.gateway import headers as h
from keyfob.gateway.fallback import falls_back, next_models
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import ledger, link, mint, sdk
from tests.oauth_app import InProcess
from tests.support import free_port

HI = [{"role": "user", "content": "hi"}]
#: $1 per million tokens in and out: one micro-USD per token.
PRICE = (1_000_000, 1_000_000)
ALL = ["down/m", "busy/m", "ok/m", "dead/m", "slow/m"]


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def app(tmp_path: Path, up: FakeUpstream) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", models=(), upstream_first_byte_timeout_s=0.5) as inproc:
        for name in ("down", "busy", "ok", "slow"):
            link(inproc, name, up.url(f"{name}/v1"), models=["m"], price=PRICE)
        link(inproc, "ok2", up.url("ok2/v1"), models=["big"], price=(100_000_000, 100_000_000))
        link(inproc, "dead", f"http://127.0.0.1:{free_port()}/v1", models=["m"], price=PRICE)
        yield inproc


def test_policy_chain_rules() -> None:
    assert Policy.from_json('{"fallback_chain": ["a/b"]}').fallback_chain == ("a/b",)
    assert "fallback_chain" not in Policy().to_json()
    for bad in (
        '["a/b", "a/b"]',
        '["nomodel"]',
        '"a/b"',
        "[" + ",".join(f'"a/b{i}"' for i in range(9)) + "]",
    ):
        with pytest.raises(PolicyError):
            Policy.from_json(f'{{"fallback_chain": {bad}}}')
    assert next_models(("a/m", "b/m", "c/m"), "b/m", {"b/m"}) == ["c/m"]
    assert next_models(("a/m", "b/m"), "x/m", {"x/m", "a/m"}) == ["b/m"]
    assert [s for s in (200, 400, 404, 429, 500, 503, 529) if falls_back(s)] == [429, 500, 503, 529]


def test_503_then_429_then_served(app: InProcess, up: FakeUpstream) -> None:
    token = mint(app, ALL, fallback_chain=("busy/m", "ok/m"))
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(model="down/m", messages=HI, max_tokens=5)
    done = raw.parse()
    assert done.choices[0].message.content == "ok answer 0"
    assert raw.headers[h.FALLBACK_FROM] == "down/m"
    rows = ledger(app)
    served = rows[raw.headers[h.REQUEST_ID]]
    assert (served["model"], served["status"], served["downgraded_from"]) == (
        "ok/m",
        "settled",
        "down/m",
    )
    assert raw.headers[h.COST] == f"0.{served['cost_micro_usd']:06d}"
    failed = sorted(
        (r["model"], r["status"], r["cost_micro_usd"])
        for r in rows.values()
        if r["id"] != served["id"]
    )
    assert failed == [("busy/m", "failed", 0), ("down/m", "failed", 0)]
    # each attempt was reserved for its own model and every hold is released
    assert all(r["reserved_micro_usd"] > 0 for r in rows.values())
    assert {b["model"] for b in up.bodies("ok")} == {"m"}


def test_chain_skips_models_the_grant_does_not_allow(app: InProcess, up: FakeUpstream) -> None:
    before = len(up.bodies("busy"))
    token = mint(app, ["down/m", "ok/m"], fallback_chain=("busy/m", "ok/m"))
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(model="down/m", messages=HI)
    assert raw.parse().choices[0].message.content == "ok answer 0"
    assert len(up.bodies("busy")) == before  # never called: not in the grant


def test_no_chain_fails_as_before(app: InProcess) -> None:
    token = mint(app, ALL)
    with sdk(app, token) as c, pytest.raises(openai.InternalServerError) as err:
        c.chat.completions.create(model="down/m", messages=HI)
    assert err.value.status_code == 503
    assert h.FALLBACK_FROM not in err.value.response.headers


def test_last_failure_is_answered_when_the_chain_runs_out(app: InProcess) -> None:
    token = mint(app, ALL, fallback_chain=("busy/m",))
    with sdk(app, token) as c, pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="down/m", messages=HI)
    assert err.value.response.headers[h.FALLBACK_FROM] == "down/m"
    statuses = sorted((r["model"], r["status"]) for r in ledger(app).values())
    assert statuses == [("busy/m", "failed"), ("down/m", "failed")]


def test_refused_connection_falls_back_on_a_stream(app: InProcess) -> None:
    token = mint(app, ALL, fallback_chain=("ok/m",))
    with (
        sdk(app, token) as c,
        c.chat.completions.with_streaming_response.create(
            model="dead/m", messages=HI, stream=True
        ) as resp,
    ):
        assert resp.headers[h.FALLBACK_FROM] == "dead/m"
        text = "".join(ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices)
    assert text == "ok answer 0"
    rows = sorted((r["model"], r["status"]) for r in ledger(app).values())
    assert rows == [("dead/m", "failed"), ("ok/m", "settled")]


def test_timeout_before_first_byte_charges_and_falls_back(app: InProcess) -> None:
    token = mint(app, ALL, fallback_chain=("ok/m",))
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(model="slow/m", messages=HI, max_tokens=5)
    assert raw.parse().choices[0].message.content == "ok answer 0"
    by_model = {r["model"]: r for r in ledger(app).values()}
    # the slow upstream may have worked: its reservation is charged, flagged to reconcile
    slow = by_model["slow/m"]
    assert slow["status"] == "charged_reservation" and slow["needs_reconciliation"]
    assert by_model["ok/m"]["status"] == "settled"


def test_a_fallback_the_allowance_cannot_cover_ends_the_chain(
    app: InProcess, up: FakeUpstream
) -> None:
    before = len(up.bodies("ok2"))
    # the requested model's worst case fits $0.001; the fallback's (100x the price) does not
    token = mint(app, ["down/m", "ok2/big"], cap_micro_usd=1_000, fallback_chain=("ok2/big",))
    with sdk(app, token) as c, pytest.raises(openai.InternalServerError) as err:
        c.chat.completions.create(model="down/m", messages=HI, max_tokens=5)
    assert err.value.status_code == 503
    assert len(up.bodies("ok2")) == before
    [row] = ledger(app).values()
    assert (row["model"], row["status"], row["cost_micro_usd"]) == ("down/m", "failed", 0)
