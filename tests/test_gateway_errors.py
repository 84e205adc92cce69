"""Refusals and failures on the OpenAI surface: OpenAI-shaped, right status, right ledger.

Client mistakes are 4xx with no ledger row; upstream failures pass their status through
(with Retry-After on 429) and settle as "failed" at no cost when the upstream did no work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keyfob.context import Keyfob
from keyfob.gateway import headers as h
from keyfob.settings import Settings
from keyfob.tokens import new_id
from tests.support import FakeLLM, KeyfobServer, free_port, ledger_rows, mint_token, start_fakellm
from tests.test_gateway_openai import MODEL, client, link

FAILING_YAML = """\
version: 1
defaults:
  fallback: deterministic_echo
rules:
  - name: upstream_500
    when:
      messages_contain: "please-fail-500"
    respond:
      status: 500
      error: "Internal error (mock)"
  - name: upstream_429
    when:
      messages_contain: "please-rate-limit"
    respond:
      status: 429
      error: "Rate limit exceeded (mock)"
"""


@pytest.fixture(scope="module")
def failing_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeLLM]:
    """A second fakellm whose rules fail on a word in the prompt (Keyfob does not forward
    client headers upstream, so the header-scripted scenarios cannot be reached)."""
    srv = start_fakellm(tmp_path_factory.mktemp("failing-llm"), FAILING_YAML)
    yield srv
    srv.stop()


def post(
    server: KeyfobServer,
    token: str | None,
    content: bytes | None = None,
    json_body: Any = None,
    **headers: str,
) -> httpx.Response:
    hdrs = dict(headers)
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    return httpx.post(
        server.url + "/v1/chat/completions",
        content=content,
        json=json_body,
        headers=hdrs,
        timeout=30,
    )


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code


@pytest.fixture
def token(server: KeyfobServer, fakellm: FakeLLM) -> str:
    link(server.data_dir, "fake", fakellm.base_url)
    return str(mint_token(server.data_dir, models=[MODEL], cap_micro_usd=1_000_000)["token"])


def test_bad_requests_are_4xx_and_leave_no_ledger_row(
    server: KeyfobServer, token: str, fakellm: FakeLLM
) -> None:
    before = fakellm.request_count()
    ok_msgs = [{"role": "user", "content": "hello"}]
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"content": b"{not json"}, 400, "invalid_json"),
        ({"content": b"\xff\xfe\x00garbage"}, 400, "invalid_json"),
        ({"json_body": [1, 2, 3]}, 400, "invalid_json"),
        ({"json_body": {"messages": ok_msgs}}, 400, "missing_required_parameter"),
        ({"json_body": {"model": 5, "messages": ok_msgs}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": []}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": ["hi"]}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": ok_msgs, "stream": "yes"}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": ok_msgs, "max_tokens": -1}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": ok_msgs, "max_tokens": True}}, 400, None),
        ({"json_body": {"model": MODEL, "messages": ok_msgs, "n": 99}}, 400, None),
        ({"json_body": {"model": "fake/gpt-4o", "messages": ok_msgs}}, 404, "model_not_found"),
        ({"json_body": {"model": "nope", "messages": ok_msgs}}, 404, "model_not_found"),
        ({"content": b"{" + b" " * (5 * 1024 * 1024) + b"}"}, 413, "request_too_large"),
    ]
    for kwargs, status, code in cases:
        assert_openai_error(post(server, token, **kwargs), status, code)
    assert ledger_rows(server.data_dir) == []
    assert fakellm.request_count() == before


def test_tokens_missing_invalid_and_revoked(server: KeyfobServer, token: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    for bad in (None, "kfat_not-a-real-token", "sk-something", "kfrt_refresh"):
        resp = post(server, bad, json_body=body)
        assert_openai_error(resp, 401, "invalid_api_key")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    with client(server, "kfat_nope") as c, pytest.raises(openai.AuthenticationError):
        c.models.list()

    minted = mint_token(server.data_dir, models=[MODEL], cap_micro_usd=1_000_000)
    assert post(server, minted["token"], json_body=body).status_code == 200

    async def revoke() -> None:
        kf = await Keyfob.open(Settings(data_dir=server.data_dir))
        try:
            await kf.store.grants.revoke(minted["grant_id"])
        finally:
            await kf.close()

    asyncio.run(revoke())
    resp = post(server, minted["token"], json_body=body)  # at once: re-checked in reserve
    assert_openai_error(resp, 401)
    time.sleep(1.1)
    assert_openai_error(post(server, minted["token"], json_body=body), 401)
    assert len(ledger_rows(server.data_dir)) == 1


def test_upstream_500_and_429_pass_through(server: KeyfobServer, failing_llm: FakeLLM) -> None:
    link(server.data_dir, "flaky", failing_llm.base_url)
    tok = mint_token(server.data_dir, models=["flaky/gpt-4o-mini"], cap_micro_usd=10**6)["token"]
    with client(server, tok) as c:
        with pytest.raises(openai.InternalServerError) as e500:
            c.chat.completions.create(
                model="flaky/gpt-4o-mini",
                max_tokens=10,
                messages=[{"role": "user", "content": "please-fail-500"}],
            )
        assert e500.value.status_code == 500
        assert "Internal error (mock)" in e500.value.message
        assert e500.value.response.headers[h.COST] == "0.000000"
        with pytest.raises(openai.RateLimitError) as e429:
            # fakellm scripts statuses on non-streamed calls only
            c.chat.completions.create(
                model="flaky/gpt-4o-mini",
                max_tokens=10,
                messages=[{"role": "user", "content": "please-rate-limit"}],
            )
        assert "Rate limit exceeded (mock)" in e429.value.message
    rows = sorted(ledger_rows(server.data_dir), key=lambda r: r["created_at"])
    assert [(r["status"], r["cost_micro_usd"], r["upstream_status"]) for r in rows] == [
        ("failed", 0, 500),
        ("failed", 0, 429),
    ]
    assert rows[0]["id"] == e500.value.response.headers[h.REQUEST_ID]


def test_upstream_down_is_502_and_free(server: KeyfobServer) -> None:
    link(server.data_dir, "down", f"http://127.0.0.1:{free_port()}/v1")
    tok = mint_token(server.data_dir, models=["down/gpt-4o-mini"], cap_micro_usd=10**6)["token"]
    for stream in (False, True):
        resp = post(
            server,
            tok,
            json_body={
                "model": "down/gpt-4o-mini",
                "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert_openai_error(resp, 502, "upstream_unreachable")
        assert resp.headers[h.COST] == "0.000000"
        assert resp.headers[h.LEFT] == "1.000000"
    rows = ledger_rows(server.data_dir)
    assert [(r["status"], r["cost_micro_usd"]) for r in rows] == [("failed", 0)] * 2
    assert all(r["needs_reconciliation"] is False for r in rows)


def test_forbidden_credential_is_never_sent_upstream(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    """A credential stored before a rule existed (bypassing link_provider) is still refused."""
    forbidden = "sk-ant-oat01-" + "x" * 60

    async def smuggle(data_dir: Path) -> None:
        kf = await Keyfob.open(Settings(data_dir=data_dir))
        try:
            owner = await kf.store.users.owner()
            assert owner is not None
            pid = new_id()
            await kf.store.providers.add(
                user_id=owner.id,
                name="smuggled",
                kind="openai_compatible",
                base_url=fakellm.base_url,
                provider_id=pid,
                models=["gpt-4o-mini"],
                credential_envelope=kf.vault.encrypt(forbidden, context=pid),
            )
        finally:
            await kf.close()

    asyncio.run(smuggle(server.data_dir))
    tok = mint_token(server.data_dir, models=["smuggled/gpt-4o-mini"], cap_micro_usd=10**6)
    before = fakellm.request_count()
    resp = post(
        server,
        tok["token"],
        json_body={
            "model": "smuggled/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello"}],
        },
    )
    assert_openai_error(resp, 403, "credential_forbidden_by_terms")
    assert "code.claude.com legal-and-compliance" in resp.json()["error"]["message"]
    assert forbidden not in resp.text
    assert fakellm.request_count() == before
    assert ledger_rows(server.data_dir) == []
    assert forbidden not in server.log()


def test_unknown_price_is_400(server: KeyfobServer, fakellm: FakeLLM) -> None:
    link(server.data_dir, "odd", fakellm.base_url, models=["totally-unpriced-model-xyz"])
    tok = mint_token(
        server.data_dir, models=["odd/totally-unpriced-model-xyz"], cap_micro_usd=10**6
    )["token"]
    resp = post(
        server,
        tok,
        json_body={
            "model": "odd/totally-unpriced-model-xyz",
            "messages": [{"role": "user", "content": "hello"}],
        },
    )
    assert_openai_error(resp, 400, "model_price_unknown")
    assert "keyfob providers price" in resp.json()["error"]["message"]


def test_upstream_error_mapping() -> None:
    from keyfob.gateway.upstream_errors import upstream_error

    key = "sk-proj-" + "z" * 30
    body = b'{"error": {"message": "Incorrect API key provided: ' + key.encode() + b'"}}'
    err = upstream_error(401, body, api_key=key, retry_after=None, provider_name="oa")
    assert err.status == 502 and err.code == "provider_auth_failed"
    assert key not in err.message
    err = upstream_error(
        429,
        b'{"error": {"message": "slow down", "code": "rate_limit"}}',
        api_key=None,
        retry_after="7",
        provider_name="oa",
    )
    assert (err.status, err.code, err.headers["Retry-After"]) == (429, "rate_limit", "7")
    err = upstream_error(503, b"<html>garbage", api_key=None, retry_after=None, provider_name="oa")
    assert err.status == 503 and "HTTP 503" in err.message
