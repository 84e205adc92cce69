"""429s the official SDKs handle well (gateway/refusals.py).

An exhausted allowance must not hang a client until the window resets (the Anthropic
SDK sleeps as long as ``Retry-After`` says) nor make it retry in vain (the OpenAI SDKs
retry a 429 twice by default): ``x-should-retry: false`` and no ``Retry-After``. A rate
limit, which frees within a minute, gets ``x-should-retry: true`` and a short
``Retry-After``. Each is checked with the SDK itself, default retries on, counting the
requests it really sent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import AllowanceExhausted
from keyfob.allowance.windows import Window
from keyfob.gateway import headers as h
from keyfob.gateway.refusals import RETRY_SOON_S, exhausted, retry_after_s
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import WindowState
from tests.support import FakeLLM, KeyfobServer, grant_token
from tests.test_gateway_openai import MODEL, link


async def _mint(data_dir: Path, policy: Policy) -> str:
    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        owner = await store.users.owner()
        assert owner is not None
        minted = await grant_token(
            store,
            user_id=owner.id,
            models=[MODEL],
            cap_micro_usd=policy.limits[0].cap_micro_usd if policy.limits else 0,
            policy_json=policy.to_json(),
        )
        return str(minted["token"])
    finally:
        await store.close()


def mint(server: KeyfobServer, fakellm: FakeLLM, policy: Policy) -> str:
    link(server.data_dir, "fake", fakellm.base_url)
    return asyncio.run(_mint(server.data_dir, policy))


class Counter:
    """Counts the requests an SDK really sends (its retries included)."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, request: Any) -> None:
        self.sent += 1


MONTHLY_5_MICRO = Policy(limits=(SpendLimit("month", 5),))


def test_anthropic_sdk_default_retries_returns_at_once_when_exhausted(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    token = mint(server, fakellm, MONTHLY_5_MICRO)
    counter = Counter()
    http = httpx2.Client(event_hooks={"request": [counter]})
    with anthropic.Anthropic(base_url=server.url, api_key=token, http_client=http) as c:
        assert c.max_retries == 2  # the SDK's default, left as apps leave it
        started = time.monotonic()
        with pytest.raises(anthropic.RateLimitError) as info:
            c.messages.create(
                model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "hello"}]
            )
        elapsed = time.monotonic() - started
    assert counter.sent == 1, "the SDK retried an exhausted allowance"
    assert elapsed < 2.0
    resp = info.value.response
    assert resp.headers["x-should-retry"] == "false"
    assert "retry-after" not in resp.headers and "retry-after-ms" not in resp.headers
    assert resp.headers[h.RESETS_AT].endswith("Z")  # the monthly reset is still told
    assert resp.headers[h.LEFT] == "0.000005"
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "resets at" in body["error"]["message"]


def test_openai_sdk_wastes_no_retries_when_exhausted(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    token = mint(server, fakellm, MONTHLY_5_MICRO)
    before = fakellm.request_count()
    counter = Counter()
    http = httpx2.Client(event_hooks={"request": [counter]})
    with openai.OpenAI(base_url=server.url + "/v1", api_key=token, http_client=http) as c:
        assert c.max_retries == 2
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=1000
            )
        elapsed = time.monotonic() - started
        # the Responses surface answers the same way
        with pytest.raises(openai.RateLimitError):
            c.responses.create(model=MODEL, input="hello", max_output_tokens=1000)
    assert counter.sent == 2, "the SDK retried an exhausted allowance"
    assert elapsed < 1.0  # the SDK's own backoff would take ~1.3 s
    assert fakellm.request_count() == before
    err = info.value
    assert err.code == "allowance_exhausted" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.response.headers


def test_rate_limit_says_retry_soon(server: KeyfobServer, fakellm: FakeLLM) -> None:
    """Requests per minute: the next call fits within a minute, so the 429 says when."""
    policy = Policy(limits=(SpendLimit("month", 1_000_000),), requests_per_minute=1)
    token = mint(server, fakellm, policy)
    with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as c:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.response.headers["x-should-retry"] == "true"
    assert 1 <= int(err.response.headers["Retry-After"]) <= RETRY_SOON_S
    assert "requests per minute" in err.message


def test_anthropic_surface_rate_limit_says_retry_soon(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    """The same on /v1/messages, in Anthropic's error shape (the SDK would sleep the
    Retry-After, at most a minute, and try again)."""
    policy = Policy(limits=(SpendLimit("month", 1_000_000),), requests_per_minute=1)
    token = mint(server, fakellm, policy)
    counter = Counter()
    http = httpx2.Client(event_hooks={"request": [counter]})
    with anthropic.Anthropic(base_url=server.url, api_key=token, http_client=http) as c:
        c.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "a"}])
        raw = httpx.post(
            server.url + "/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "b"}]},
        )
    assert raw.status_code == 429
    assert raw.headers["x-should-retry"] == "true"
    assert 0 < int(raw.headers["retry-after"]) <= RETRY_SOON_S
    assert raw.json()["error"]["type"] == "rate_limit_error"
    assert counter.sent == 1


# --- the rule, unit by unit ---------------------------------------------------------------

NOW = 1_800_000_000.0


def _exc(
    key: str = "month:2027-01",
    cap: int = 100,
    spent: int = 100,
    reserved: int = 0,
    needed: int = 50,
    retry_at: float | None = None,
    resets_at: float = NOW + 30 * 86400,
    label: str = "",
) -> AllowanceExhausted:
    return AllowanceExhausted(
        Window(key, NOW - 86400, resets_at),
        WindowState(key, cap, spent, reserved),
        needed,
        label=label,
        retry_at=retry_at,
    )


def test_a_month_away_is_never_a_retry_after() -> None:
    exc = _exc(retry_at=NOW + 30 * 86400)
    assert retry_after_s(exc, NOW) is None
    err = exhausted(exc, NOW)
    assert err.headers["x-should-retry"] == "false" and "Retry-After" not in err.headers
    assert err.headers[h.RESETS_AT] == "2027-02-14T08:00:00Z"


def test_no_reset_at_all_says_so() -> None:
    err = exhausted(_exc(key="wallet", resets_at=NOW, label="wallet"), NOW)
    assert "does not reset by itself" in err.message
    assert h.RESETS_AT not in err.headers and err.headers["x-should-retry"] == "false"


def test_soon_is_a_retry_after() -> None:
    assert retry_after_s(_exc(retry_at=NOW + 0.2), NOW) == 1
    assert retry_after_s(_exc(retry_at=NOW + RETRY_SOON_S), NOW) == RETRY_SOON_S
    assert retry_after_s(_exc(retry_at=NOW + RETRY_SOON_S + 1), NOW) is None
    err = exhausted(_exc(key="rolling:300", retry_at=NOW + 12.5), NOW)
    assert (err.headers["Retry-After"], err.headers["x-should-retry"]) == ("13", "true")


def test_money_held_by_calls_in_flight_may_free() -> None:
    """What a ``wait`` policy waits for: calls in flight settle below their worst case."""
    assert retry_after_s(_exc(spent=40, reserved=60, needed=50), NOW) == 2
    # even if every call in flight cost nothing, this one would not fit
    assert retry_after_s(_exc(spent=60, reserved=30, needed=50), NOW) is None


def test_a_per_call_ceiling_never_says_retry() -> None:
    exc = _exc(key="per_call_ceiling", label="per-call ceiling", retry_at=NOW)
    assert retry_after_s(exc, NOW) is None


def test_tokens_per_minute_too_big_for_any_minute() -> None:
    exc = _exc(key="tokens_per_minute", cap=1000, spent=0, needed=5000, label="tokens per minute")
    err = exhausted(exc, NOW)
    assert err.code == "rate_limit_exceeded" and err.type == "tokens"
    assert err.headers["x-should-retry"] == "false"
    assert h.LEFT not in err.headers  # a count of tokens is not money
