"""The walking skeleton, as a person and an app developer live it: install, serve, link a
provider, register an app, sign in with OAuth (a real client library, the forms posted as
a browser would), call models with the official openai SDK, read usage, restart, revoke."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlparse

import openai
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from tests.browser import post_form
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli, ledger_rows

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect
MODEL = "fake/gpt-4o-mini"


def sign_in(server: KeyfobServer, client_id: str, cap_usd: str) -> tuple[OAuth2Session, dict]:
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, code_challenge_method="S256")
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(
        f"{server.url}/oauth/authorize", code_verifier=verifier
    )
    browser = requests.Session()
    login = browser.get(url, timeout=30)
    assert login.status_code == 200 and "/login" in login.url
    consent = post_form(
        browser, login, fill={"user": OWNER, "pass": OWNER_PASSWORD}, allow_redirects=True
    )
    assert consent.status_code == 200, consent.text[:500]
    assert "Demo App" in consent.text and "127.0.0.1" in consent.text
    approved = post_form(browser, consent, fill={"cap": cap_usd}, button="approve")
    assert approved.status_code == 303
    location = approved.headers["location"]
    assert location.startswith(REDIRECT)
    params = parse_qs(urlparse(location).query)
    assert params["state"] == [state]
    assert params["iss"] == [server.url]
    token = oauth.fetch_token(
        f"{server.url}/oauth/token", authorization_response=location, code_verifier=verifier
    )
    browser.close()
    assert token["token_type"].lower() == "bearer"
    assert token["access_token"].startswith("kfat_")
    assert token["refresh_token"].startswith("kfrt_")
    return oauth, token


def test_sign_in_call_meter_restart_revoke(server: KeyfobServer, fakellm: FakeLLM) -> None:
    data = server.data_dir
    cli(
        data,
        "providers",
        "add",
        "fake",
        "--base-url",
        fakellm.base_url,
        "-m",
        "gpt-4o-mini",
        KEYFOB_PROVIDER_KEY="sk-test-upstream-secret",
    )
    listed = cli(data, "providers", "list").stdout
    assert "fake" in listed and "sk-test-upstream-secret" not in listed
    added = cli(data, "apps", "add", "Demo App", "--redirect-uri", REDIRECT).stdout
    client_id = re.search(r"client_id: (\S+)", added).group(1)  # type: ignore[union-attr]

    oauth, token = sign_in(server, client_id, cap_usd="1")

    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=token["access_token"], max_retries=0
    )
    try:
        assert [m.id for m in client.models.list()] == [MODEL]

        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=50
        )
        reply = raw.parse()
        assert reply.choices[0].message.content == "Hi there! This is a mock response from fakellm."
        # fakellm reports 1 input and 11 output tokens; gpt-4o-mini costs $0.15 and $0.60
        # per million: 6.75 micro-USD, rounded up to 7.
        assert raw.headers["x-keyfob-cost-usd"] == "0.000007"
        assert raw.headers["x-keyfob-allowance-left-usd"] == "0.999993"
        assert raw.headers["x-keyfob-request-id"]

        chunks = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=50,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hi there! This is a mock response from fakellm."
    finally:
        client.close()

    rows = sorted(ledger_rows(data), key=lambda r: r["created_at"])
    assert [r["status"] for r in rows] == ["settled", "estimated"]
    first, second = rows
    assert (first["input_tokens"], first["output_tokens"], first["cost_micro_usd"]) == (1, 11, 7)
    assert first["model"] == MODEL and first["usage_source"] == "upstream"
    assert 0 < second["cost_micro_usd"] <= second["reserved_micro_usd"]

    usage = json.loads(cli(data, "usage", "--json").stdout)
    assert [(u["app"], u["model"], u["calls"]) for u in usage] == [("Demo App", MODEL, 2)]
    assert usage[0]["cost_micro_usd"] == 7 + second["cost_micro_usd"]

    # refresh rotation: the new pair works, the old refresh token is dead
    new = oauth.refresh_token(f"{server.url}/oauth/token", refresh_token=token["refresh_token"])
    assert new["refresh_token"] != token["refresh_token"]

    # Restart: owner, providers, grants, ledger and tokens survive.
    server.stop()
    server.start()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=new["access_token"], max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=50
        )
        assert raw.headers["x-keyfob-cost-usd"] == "0.000007"
        assert len(ledger_rows(data)) == 3

        cli(data, "apps", "revoke", "Demo App")
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=50
            )
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    finally:
        client.close()
    assert len(ledger_rows(data)) == 3  # the refused call left no trace in the ledger
