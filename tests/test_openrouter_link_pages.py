"""Linking OpenRouter from the dashboard: the PKCE flow through the person's browser,
against a local fake of openrouter.ai, then the linked key serving a call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from keyfob.providers.linking import decrypt_key
from tests.fake_upstream import OPENROUTER_KEY, FakeUpstream
from tests.gateway_inproc import mint, sdk
from tests.oauth_app import InProcess, hidden

LINK = "/providers/openrouter/link"
CALLBACK = "/providers/openrouter/callback"


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def app(tmp_path: Path, up: FakeUpstream) -> Iterator[InProcess]:
    with InProcess(
        tmp_path / "data",
        models=(),
        openrouter_auth_url=up.url("or"),
        openrouter_api_url=up.url("or/api/v1"),
    ) as inproc:
        yield inproc


def start(app: InProcess, **form: str) -> tuple[str, str]:
    """Post the link form; returns OpenRouter's URL and the code_challenge in it."""
    browser = app.logged_in()
    page = browser.http.get(LINK)
    assert page.status_code == 200 and 'name="limit_usd"' in page.text
    answer = browser.http.post(LINK, data={"csrf_token": hidden(page.text, "csrf_token"), **form})
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    return location, parse_qs(urlsplit(location).query)["code_challenge"][0]


def test_link_openrouter_from_the_dashboard(app: InProcess, up: FakeUpstream) -> None:
    dashboard = app.logged_in().http.get("/")
    assert f'href="{LINK}"' in dashboard.text
    location, challenge = start(app, name="openrouter", limit_usd="5")
    parts, query = urlsplit(location), parse_qs(urlsplit(location).query)
    assert location.startswith(up.url("or") + "/auth?")
    assert query["callback_url"] == [app.url + CALLBACK]
    assert query["code_challenge_method"] == ["S256"]
    assert "verifier" not in parts.query
    up.codes["the-code"] = challenge
    done = app.client.get(CALLBACK + "?code=the-code")
    assert done.status_code == 303 and done.headers["location"] == "/"
    [exchange] = [s.body for s in up.seen if s.path == "/or/api/v1/auth/keys"]
    assert exchange["limit"] == 5.0 and exchange["code_challenge_method"] == "S256"
    provider = app.run(app.store.providers.by_name, app.owner.id, "openrouter")
    assert provider is not None
    assert (provider.kind, provider.credential_kind) == ("openrouter", "openrouter_key")
    assert provider.base_url == up.url("or/api/v1")
    assert provider.models == ("openai/gpt-4o-mini",)  # discovered from the fake's list
    assert app.run(decrypt_key, app.app.state.kf, provider) == OPENROUTER_KEY
    page = app.client.get("/")
    assert "Linked openrouter" in page.text and OPENROUTER_KEY not in page.text
    listed = app.client.get("/providers")
    assert "openrouter" in listed.text and OPENROUTER_KEY not in listed.text
    # the verifier was used once: the same callback again is refused
    again = app.client.get(CALLBACK + "?code=the-code")
    assert again.status_code == 400 and OPENROUTER_KEY not in again.text

    # the linked key serves calls, sent as OpenRouter expects it
    app.run(
        app.store.providers.set_price,
        provider.id,
        "openai/gpt-4o-mini",
        input_micro_usd_per_mtok=150_000,
        output_micro_usd_per_mtok=600_000,
    )
    token = mint(app, ["openrouter/openai/gpt-4o-mini"])
    with sdk(app, token) as c:
        answer = c.chat.completions.create(
            model="openrouter/openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "or answer 0"
    [call] = [s for s in up.seen if s.path == "/or/api/v1/chat/completions"]
    assert call.headers["Authorization"] == f"Bearer {OPENROUTER_KEY}"
    assert call.headers["X-Title"] == "Keyfob" and call.body["model"] == "openai/gpt-4o-mini"


def test_refusals(app: InProcess, up: FakeUpstream) -> None:
    # not signed in: to the login page, nothing started
    assert app.client.get(LINK).status_code == 303
    browser = app.logged_in()
    page = browser.http.get(LINK)
    csrf = hidden(page.text, "csrf_token")
    assert browser.http.post(LINK, data={"limit_usd": "5"}).status_code == 403  # no CSRF
    bad = browser.http.post(LINK, data={"csrf_token": csrf, "limit_usd": "-1"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text
    big = browser.http.post(LINK, data={"csrf_token": csrf, "name": "x" * 70_000})
    assert big.status_code == 413
    # a callback nobody started
    assert app.client.get(CALLBACK + "?code=the-code").status_code == 400
    # OpenRouter refuses a code that is not bound to this session's verifier
    _, challenge = start(app)
    up.codes["their-code"] = "not-" + challenge
    refused = app.client.get(CALLBACK + "?code=their-code")
    assert refused.status_code == 502 and "OpenRouter did not issue a key" in refused.text
    assert app.run(app.store.providers.list, app.owner.id) == []
    # no code at all
    start(app)
    assert app.client.get(CALLBACK).status_code == 400
