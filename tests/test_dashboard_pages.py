"""The person's dashboard in process (issue 14): what each app cost, every limit, the
calls and their CSV, revoke with confirmation, limits editing with errors by field,
refused calls, providers (tested before linking, prices, removal), wallet, settings,
error pages. Every figure a page shows is checked against the ledger."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import policy_of
from keyfob.allowance.windows import calendar_week
from keyfob.money import format_usd, usd_summary
from keyfob.providers.connection import in_words
from keyfob.store.records import Grant
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import link, mint, sdk
from tests.oauth_app import InProcess, checked, hidden, pkce
from tests.support import free_port

MODEL = "up/gpt-4o-mini"


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def app(tmp_path: Path, up: FakeUpstream) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as kf:
        link(kf, "up", up.url("up") + "/v1", models=["gpt-4o-mini"], price=(150_000, 600_000))
        yield kf


def grant_of(app: InProcess, name: str) -> Grant:
    names = {c.id: c.name for c in app.run(app.store.clients.list)}
    grants = app.run(app.store.grants.list, app.owner.id, include_revoked=True)
    [grant] = [g for g in grants if names[g.client_id] == name]
    return grant


def calls(app: InProcess, token: str, n: int) -> None:
    with sdk(app, token) as client:
        for i in range(n):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=20
            )


def ledger_cost(app: InProcess, grant_id: str, since: float = 0.0) -> int:
    entries = app.run(app.store.ledger.entries, grant_id=grant_id, limit=10_000)
    return sum(
        (e.cost_micro_usd or 0) if e.status != "reserved" else e.reserved_micro_usd
        for e in entries
        if e.created_at >= since
    )


def post(app: InProcess, path: str, page_text: str, **data: object) -> object:
    return app.client.post(path, data={"csrf_token": hidden(page_text, "csrf_token"), **data})


def test_week_cost_of_an_app_from_the_overview_matches_the_ledger(app: InProcess) -> None:
    token = mint(app, [MODEL], client_name="Story Writer")
    calls(app, token, 3)
    grant = grant_of(app, "Story Writer")
    app.logged_in()
    overview = app.client.get("/")
    assert overview.status_code == 200
    week_link = re.search(
        r'<a href="(/grants/[0-9a-f]+\?range=week)" data-span="week"[^>]*>([^<]+)</a>',
        overview.text,
    )
    assert week_link is not None
    week = app.client.get(week_link.group(1))
    shown = re.search(r'data-cost-micro="(\d+)">([^<]+)<', week.text)
    assert shown is not None
    expected = ledger_cost(app, grant.id, calendar_week(time.time(), "UTC").starts_at)
    assert expected > 0
    assert int(shown.group(1)) == expected
    assert unescape(shown.group(2)) == usd_summary(expected) == unescape(week_link.group(2))
    assert "This week" in week.text and "3 calls" in week.text
    assert "access does not end by itself" in week.text
    # every limit is shown with its window and reset time; the chart has the app
    assert "/ month" in overview.text and "resets 2" in overview.text
    assert "<svg" in overview.text and "Story Writer" in overview.text


def test_app_page_lists_calls_and_exports_them(app: InProcess) -> None:
    token = mint(app, [MODEL], client_name="Exporter")
    calls(app, token, 2)
    grant = grant_of(app, "Exporter")
    app.logged_in()
    page = app.client.get(f"/grants/{grant.id}?range=all")
    entries = app.run(app.store.ledger.entries, grant_id=grant.id)
    assert page.text.count('data-label="Model">up/gpt-4o-mini') == 2
    for e in entries:
        assert f"${format_usd(e.cost_micro_usd or 0).rstrip('0')}" in page.text or (
            usd_summary(e.cost_micro_usd or 0) in page.text
        )
    export = app.client.get(f"/grants/{grant.id}/calls.csv?range=all")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == 2 and {r["model"] for r in rows} == {MODEL}
    total = sum(int(r["cost_usd"].replace(".", "")) for r in rows)
    assert total == ledger_cost(app, grant.id)
    bad = app.client.get(f"/grants/{grant.id}?range=custom&since=yesterday")
    assert bad.status_code == 200 and "Enter a start date." in bad.text


def test_revoke_asks_first_and_keeps_the_history(app: InProcess) -> None:
    token = mint(app, [MODEL], client_name="Leaver")
    calls(app, token, 1)
    grant = grant_of(app, "Leaver")
    app.logged_in()
    confirm = app.client.get(f"/grants/{grant.id}/revoke")
    assert confirm.status_code == 200 and "Revoke <em>Leaver</em>?" in confirm.text
    assert app.client.post(f"/grants/{grant.id}/revoke").status_code in (403, 415)
    assert app.run(app.store.grants.get, grant.id).revoked_at is None  # type: ignore[union-attr]
    done = post(app, f"/grants/{grant.id}/revoke", confirm.text)
    assert done.status_code == 303  # type: ignore[attr-defined]
    overview = app.client.get("/")
    assert "Revoked Leaver" in overview.text and 'id="revoked-h"' in overview.text
    history = app.client.get(f"/grants/{grant.id}?range=all")
    assert history.status_code == 200 and "revoked" in history.text
    assert 'data-label="Model">up/gpt-4o-mini' in history.text
    assert app.client.get(f"/grants/{grant.id}/edit").status_code == 404
    assert app.client.get("/grants/nope").status_code == 404


def test_every_limit_is_editable_and_errors_sit_by_their_field(app: InProcess) -> None:
    mint(app, [MODEL], client_name="Tuner")
    grant = grant_of(app, "Tuner")
    app.logged_in()
    page = app.client.get(f"/grants/{grant.id}/edit")
    assert page.status_code == 200 and checked(page.text) == [MODEL]
    form = {
        "models": [MODEL],
        "cap_usd": "8",
        "window": "week",
        "limit_rows": "3",
        "lim_period_0": "rolling",
        "lim_span_0": "5h",
        "lim_cap_0": "1.5",
        "lim_model_0": "",
        "lim_period_1": "month",
        "lim_cap_1": "0.25",
        "lim_model_1": MODEL,
        "lim_period_2": "",
        "rpm": "10",
        "tpm": "",
        "ceiling": "0.5",
        "on_exhausted": "wait",
        "wait_max_s": "20",
        "fallback_model": "",
        "wallet_shown": "1",
        "use_wallet": "1",
        "webhook_url": "https://hooks.example/x",
    }
    saved = post(app, f"/grants/{grant.id}/edit", page.text, **form)
    assert saved.status_code == 303  # type: ignore[attr-defined]
    policy = policy_of(app.run(app.store.grants.get, grant.id))  # type: ignore[arg-type]
    assert policy == Policy(
        limits=(
            SpendLimit("week", 8_000_000),
            SpendLimit("rolling", 1_500_000, seconds=5 * 3600),
            SpendLimit("month", 250_000, model=MODEL),
        ),
        requests_per_minute=10,
        per_call_ceiling_micro_usd=500_000,
        on_exhausted="wait",
        wait_max_s=20.0,
        use_wallet=True,
        webhook_url="https://hooks.example/x",
    )
    assert "Saved the limits of Tuner" in app.client.get(f"/grants/{grant.id}").text
    again = app.client.get(f"/grants/{grant.id}/edit")
    assert 'value="5h"' in again.text and 'value="0.25"' in again.text
    for changes, field in (
        ({"cap_usd": "0"}, "cap_usd"),
        ({"cap_usd": "lots"}, "cap_usd"),
        ({"models": []}, "models"),
        ({"lim_span_0": "forever"}, "lim_0"),
        ({"on_exhausted": "downgrade", "fallback_model": ""}, "fallback_model"),
        ({"rpm": "many"}, "rpm"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
    ):
        bad = post(app, f"/grants/{grant.id}/edit", again.text, **{**form, **changes})
        assert bad.status_code == 400, changes  # type: ignore[attr-defined]
        assert f'id="{field}-error"' in bad.text, changes  # type: ignore[attr-defined]
    assert policy_of(app.run(app.store.grants.get, grant.id)) == policy  # type: ignore[arg-type]


def test_refused_calls_are_listed_with_the_reason(app: InProcess) -> None:
    token = mint(app, [MODEL], client_name="Greedy", cap_micro_usd=5)
    with sdk(app, token) as client, pytest.raises(Exception, match="allowance exhausted"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
        )
    app.logged_in()
    deadline = time.monotonic() + 5
    while "Greedy</a>" not in (text := app.client.get("/").text):
        assert time.monotonic() < deadline, "the refusal was not recorded"
        time.sleep(0.05)
    row = text.split('id="refused-h"')[1]
    assert MODEL in row and "limit “month” had &lt; $0.01 left" in row


def test_linking_tests_the_provider_first_and_flags_unpriced_models(
    app: InProcess, up: FakeUpstream
) -> None:
    app.logged_in()
    page = app.client.get("/providers/new")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    answer = post(app, "/providers/new", page.text, name="dead", base_url=dead, api_key="sk-x")
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert 'id="base_url-error"' in answer.text  # type: ignore[attr-defined]
    assert "nothing answers at 127.0.0.1" in answer.text  # type: ignore[attr-defined]
    assert "sk-x" not in answer.text  # type: ignore[attr-defined]
    assert app.run(app.store.providers.by_name, app.owner.id, "dead") is None
    wrong = post(app, "/providers/new", page.text, name="w", base_url=up.url("up") + "/v1")
    assert "no model list" in wrong.text  # type: ignore[attr-defined]
    anyway = post(app, "/providers/new", page.text, name="dead", base_url=dead, link_anyway="1")
    assert anyway.status_code == 303  # type: ignore[attr-defined]
    linked = post(
        app,
        "/providers/new",
        page.text,
        name="orish",
        base_url=up.url("or/api/v1"),
        models="mystery-model-9000",
    )
    assert linked.status_code == 303  # type: ignore[attr-defined]
    shown = app.client.get(linked.headers["location"])  # type: ignore[attr-defined]
    assert "Linked orish with 1 model" in shown.text
    assert "does not list mystery-model-9000" in shown.text
    assert "No price is known for mystery-model-9000" in shown.text
    listing = app.client.get("/providers")
    assert "No price is known for mystery-model-9000" in listing.text


def test_prices_can_be_overridden_and_providers_removed(app: InProcess) -> None:
    app.logged_in()
    [provider] = app.run(app.store.providers.list, app.owner.id)[1:]  # "up" (after "fake")
    page = app.client.get(f"/providers/{provider.id}")
    assert "$0.15 in · $0.60 out" in page.text
    form = page.text.split('id="prices"')[1]
    ok = post(
        app,
        f"/providers/{provider.id}/prices",
        form,
        model="gpt-4o-mini",
        input="0.2",
        output="0.8",
        action="save",
    )
    assert ok.status_code == 303  # type: ignore[attr-defined]
    prices = app.run(app.store.providers.prices, provider.id)
    assert prices["gpt-4o-mini"].input_micro_usd_per_mtok == 200_000
    assert "$0.20 in · $0.80 out" in app.client.get("/providers").text
    bad = post(
        app, f"/providers/{provider.id}/prices", form, model="gpt-4o-mini", input="x", output="1"
    )
    assert bad.status_code == 303  # type: ignore[attr-defined]
    assert "was not saved" in app.client.get(f"/providers/{provider.id}").text
    mint(app, [MODEL], client_name="User of up")
    confirm = app.client.get(f"/providers/{provider.id}/remove")
    assert "User of up" in confirm.text
    gone = post(app, f"/providers/{provider.id}/remove", confirm.text)
    assert gone.status_code == 303  # type: ignore[attr-defined]
    assert app.run(app.store.providers.get, provider.id) is None
    assert "Removed up" in app.client.get("/providers").text


def test_wallet_top_up_and_refill(app: InProcess) -> None:
    app.logged_in()
    page = app.client.get("/wallet")
    bad = post(app, "/wallet/topup", page.text, amount="ten")
    assert bad.status_code == 400 and 'id="amount-error"' in bad.text  # type: ignore[attr-defined]
    post(app, "/wallet/topup", page.text, amount="10", note="December")
    post(app, "/wallet/refill", page.text, refill="20")
    after = app.client.get("/wallet")
    assert "Added $10.00; the balance is $10.00." in after.text
    assert 'id="balance">$10.00<' in after.text and "December" in after.text
    wallet = app.run(app.store.wallets.get, app.owner.id)
    assert wallet.monthly_refill_micro_usd == 20_000_000
    post(app, "/wallet/refill", page.text, refill="")
    assert "Monthly refill turned off" in app.client.get("/wallet").text


def test_settings_time_zone_default_cap_password_and_sessions(app: InProcess) -> None:
    app.logged_in()
    page = app.client.get("/settings")
    bad = post(app, "/settings/preferences", page.text, timezone="Mars/Base", default_cap="2")
    assert 'id="timezone-error"' in bad.text  # type: ignore[attr-defined]
    post(app, "/settings/preferences", page.text, timezone="Europe/Paris", default_cap="7")
    owner = app.run(app.store.users.get, app.owner.id)
    assert owner is not None and owner.timezone == "Europe/Paris"
    # the default cap is what consent offers when the app suggests none
    cid, _ = app.register(["https://app.example/cb"], name="Quiet")
    _, challenge = pkce()
    consent = app.client.get(app.authorize_url(cid, "https://app.example/cb", challenge))
    assert 'name="cap_usd" value="7"' in consent.text
    wrong = post(
        app,
        "/settings/password",
        page.text,
        current_password="nope",
        new_password="another long one",
        new_password_confirm="another long one",
    )
    assert 'id="current_password-error"' in wrong.text  # type: ignore[attr-defined]
    old_cookie = app.client.cookies.get("keyfob_session")
    from tests.conftest import OWNER_PASSWORD

    changed = post(
        app,
        "/settings/password",
        page.text,
        current_password=OWNER_PASSWORD,
        new_password="another long one",
        new_password_confirm="another long one",
    )
    assert changed.status_code == 303  # type: ignore[attr-defined]
    assert app.client.get("/").status_code == 200  # this browser stays in
    new_cookie = app.client.cookies.get("keyfob_session")
    app.client.cookies.clear()
    app.client.cookies.set("keyfob_session", old_cookie or "")
    assert app.client.get("/").status_code == 302  # the session from before is over
    app.client.cookies.clear()
    app.client.cookies.set("keyfob_session", new_cookie or "")
    page = app.client.get("/settings")
    out = post(app, "/settings/logout-everywhere", page.text)
    assert out.headers["location"].startswith("/login")  # type: ignore[attr-defined]
    app.client.cookies.clear()
    app.client.cookies.set("keyfob_session", new_cookie or "")
    assert app.client.get("/").status_code == 302


def test_error_pages_say_what_to_do_and_apis_stay_plain(app: InProcess) -> None:
    missing = app.client.get("/no/such/page", headers={"accept": "text/html"})
    assert missing.status_code == 404 and "Page not found" in missing.text
    assert "start again from the overview" in missing.text and "<style>" in missing.text
    api = app.client.get("/v1/no-such-endpoint")
    assert api.status_code == 404 and "<html" not in api.text
    icon = app.client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    app.logged_in()
    nothing = app.client.get("/grants/0123")
    assert nothing.status_code == 404 and "Go back to the overview" in nothing.text


def test_consent_shows_prices_free_local_and_disables_unpriced(app: InProcess) -> None:
    odd = app.run(
        app.store.providers.add,
        user_id=app.owner.id,
        name="odd",
        kind="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        credential_envelope=None,
        models=["mystery-model-9000"],
    )
    cid, _ = app.register(["https://app.example/cb"], name="Story Writer")
    _, challenge = pkce()
    app.logged_in()
    text = app.client.get(app.authorize_url(cid, "https://app.example/cb", challenge)).text
    assert 'aria-label="Main"' not in text  # no menu on the consent page
    assert re.search(r"fake/m1</label>\s*<span[^>]*>—\s*free", text)
    assert "$0.15 in · $0.60 out per 1M tokens" in text
    assert re.search(r'value="odd/mystery-model-9000" disabled', text)
    assert "no price — cannot be metered" in text and f"/providers/{odd.id}#prices" in text
    assert "verified" in text
    assert "Story Writer may spend up to $5.00 per month on this model" in text
    assert checked(text) == ["fake/m1"]  # the cheapest (free) one only
    base = {
        "csrf_token": hidden(text, "csrf_token"),
        "request_id": hidden(text, "request_id"),
        "action": "approve",
        "window": "month",
    }
    zero = app.client.post("/oauth/authorize", data={**base, "cap_usd": "0", "models": [MODEL]})
    assert zero.status_code == 400 and 'id="cap-error"' in zero.text
    unpriced = app.client.post(
        "/oauth/authorize",
        data={**base, "cap_usd": "1", "models": ["odd/mystery-model-9000"]},
    )
    assert unpriced.status_code == 400 and "cannot be metered" in unpriced.text


def test_connection_errors_read_as_words() -> None:
    words, field = in_words(
        "cannot list models: ClientConnectorDNSError", "https://nope.example/v1"
    )
    assert "cannot find the host nope.example" in words and field == "base_url"
    words, field = in_words("listing models answered HTTP 401", "https://api.x/v1", 401)
    assert "refused the API key" in words and field == "api_key"
    assert "Error" not in in_words("cannot list models: ClientConnectorError", "http://h:1")[0]


def test_openrouter_link_failures_read_as_words() -> None:
    from keyfob.web.openrouter import openrouter_failure

    dns = openrouter_failure(
        "OpenRouter key exchange failed (ClientConnectorDNSError)",
        "https://openrouter.ai/api/v1",
        None,
    )
    assert "cannot find the host openrouter.ai" in dns and "ClientConnector" not in dns
    assert "expired or been used" in openrouter_failure("refused (HTTP 400)", "https://x", 400)


def test_server_error_page_for_people_plain_text_for_apis() -> None:
    import asyncio

    from starlette.requests import Request

    from keyfob.web.errors import server_error

    def request(path: str) -> Request:
        return Request(
            {
                "type": "http",
                "method": "GET",
                "path": path,
                "query_string": b"",
                "headers": [(b"accept", b"text/html")],
            }
        )

    page = asyncio.run(server_error(request("/wallet"), RuntimeError("boom")))
    body = bytes(page.body).decode()
    assert page.status_code == 500 and "Something went wrong" in body and "boom" not in body
    assert "Try again in a moment" in body
    api = asyncio.run(server_error(request("/v1/chat/completions"), RuntimeError("boom")))
    assert api.status_code == 500 and bytes(api.body) == b"Internal Server Error"


def test_access_end_and_answer_length_are_editable_on_the_limits_page(app: InProcess) -> None:
    token = mint(app, [MODEL], client_name="Ender")
    grant = grant_of(app, "Ender")
    app.logged_in()
    page = app.client.get(f"/grants/{grant.id}/edit")
    assert "as now: never" in page.text and 'name="output_limit"' in page.text
    base = {"models": [MODEL], "cap_usd": "5", "window": "month"}
    for changes, field in (
        ({"expires": "soon"}, "expires"),
        ({"expires": "30"}, "expires"),  # below the 60 s minimum
        ({"output_limit": "maybe", "fit_floor": "256"}, "output_limit"),
        ({"output_limit": "fit", "fit_floor": "0"}, "fit_floor"),
    ):
        bad = post(app, f"/grants/{grant.id}/edit", page.text, **base, **changes)
        assert bad.status_code == 400, changes  # type: ignore[attr-defined]
        assert f'id="{field}-error"' in bad.text, changes  # type: ignore[attr-defined]
    saved = post(
        app,
        f"/grants/{grant.id}/edit",
        page.text,
        **base,
        expires="3600",
        output_limit="refuse",
        fit_floor="512",
    )
    assert saved.status_code == 303  # type: ignore[attr-defined]
    stored = app.run(app.store.grants.get, grant.id)
    assert stored is not None and stored.expires_at is not None
    assert 3500 < stored.expires_at - time.time() <= 3600
    policy = policy_of(stored)
    assert (policy.output_limit, policy.fit_floor_tokens) == ("refuse", 512)
    # "keep" leaves the end alone; choosing "never" lifts it
    again = app.client.get(f"/grants/{grant.id}/edit")
    assert "as now: never" not in again.text
    post(app, f"/grants/{grant.id}/edit", again.text, **base, expires="keep")
    assert app.run(app.store.grants.get, grant.id).expires_at == stored.expires_at  # type: ignore[union-attr]
    post(app, f"/grants/{grant.id}/edit", again.text, **base, expires="0")
    assert app.run(app.store.grants.get, grant.id).expires_at is None  # type: ignore[union-attr]
    # the token still works after the end is lifted
    assert (
        app.client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
