"""The consent page (what it shows, what the app may suggest) and the grant edit page,
in process. Policy fields other than cap, window and models survive both."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import policy_of
from tests.oauth_app import InProcess, checked, hidden, pkce

WEB = "https://app.example/cb"


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", models=("m1", "m2", "m3")) as app:
        yield app


def test_consent_shows_app_host_history_and_suggestion(kf: InProcess) -> None:
    cid, _ = kf.register([WEB], name="Writer <b>")
    _, challenge = pkce()
    browser = kf.logged_in()
    url = kf.authorize_url(
        cid,
        WEB,
        challenge,
        keyfob_cap_usd="2.50",
        keyfob_window="week",
        keyfob_models="fake/m2 fake/m3 other/x",
    )
    page = browser.consent_page(url)
    assert "Writer &lt;b&gt;" in page.text and "<b>" not in page.text.split("<main")[1][:200]
    assert "app.example" in page.text
    assert "first time" in page.text
    assert "up to <strong>$2.50</strong>" in page.text and "per <strong>week</strong>" in page.text
    assert checked(page.text) == ["fake/m2", "fake/m3"]
    assert "Not linked, so not offered: other/x" in page.text
    assert '<option value="week" selected>' in page.text
    browser.decide(page, cap_usd="4", window="week")
    again = browser.consent_page(url)
    assert "already allowed" in again.text
    grant = kf.run(kf.store.grants.active_for, kf.owner.id, cid)
    assert grant is not None
    kf.run(kf.store.grants.revoke, grant.id)
    assert "revoked it" in browser.consent_page(url).text


@pytest.mark.parametrize(
    ("name", "value"),
    [("keyfob_window", "year"), ("keyfob_cap_usd", "-1"), ("keyfob_models", "a  b")],
)
def test_bad_suggestions_are_redirected_errors(kf: InProcess, name: str, value: str) -> None:
    cid, _ = kf.register([WEB])
    _, challenge = pkce()
    kf.logged_in()
    answer = kf.client.get(kf.authorize_url(cid, WEB, challenge, **{name: value}))
    assert answer.status_code == 302 and "error=invalid_request" in answer.headers["location"]


def test_person_may_raise_the_suggested_cap(kf: InProcess) -> None:
    cid, _ = kf.register([WEB])
    _, challenge = pkce()
    browser = kf.logged_in()
    browser.approve(
        kf.authorize_url(cid, WEB, challenge, keyfob_cap_usd="1"), cap_usd="20", window="day"
    )
    grant = kf.run(kf.store.grants.active_for, kf.owner.id, cid)
    assert grant is not None and grant.cap_micro_usd == 20_000_000
    assert policy_of(grant).limits == (SpendLimit("day", 20_000_000),)


def rich_policy() -> Policy:
    return Policy(
        limits=(
            SpendLimit("month", 10_000_000),
            SpendLimit("rolling", 3_000_000, seconds=5 * 3600),
            SpendLimit("month", 1_000_000, model="fake/m1"),
        ),
        requests_per_minute=30,
        use_wallet=True,
        webhook_url="https://hooks.example/k",
    )


def seed_grant(kf: InProcess, cid: str) -> str:
    grant = kf.run(
        kf.store.grants.upsert,
        user_id=kf.owner.id,
        client_id=cid,
        models=["fake/m1"],
        cap_micro_usd=10_000_000,
        timezone="UTC",
        policy_json=rich_policy().to_json(),
    )
    return grant.id


def test_edit_page_keeps_other_policy_fields(kf: InProcess) -> None:
    cid, _ = kf.register([WEB], name="Editor")
    grant_id = seed_grant(kf, cid)
    kf.logged_in()
    dashboard = kf.client.get("/")
    assert f"/grants/{grant_id}/edit" in dashboard.text
    page = kf.client.get(f"/grants/{grant_id}/edit")
    assert page.status_code == 200 and 'value="10"' in page.text
    assert checked(page.text) == ["fake/m1"]
    answer = kf.client.post(
        f"/grants/{grant_id}/edit",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "cap_usd": "7.25",
            "window": "week",
            "models": ["fake/m2", "fake/m3"],
        },
    )
    assert answer.status_code == 303
    grant = kf.run(kf.store.grants.get, grant_id)
    assert grant is not None
    assert grant.models == ("fake/m2", "fake/m3") and grant.window == "week"
    policy = policy_of(grant)
    expected = dataclasses.replace(
        rich_policy(),
        limits=(SpendLimit("week", 7_250_000), *rich_policy().limits[1:]),
    )
    assert policy == expected
    assert grant.cap_micro_usd == 7_250_000


def test_reconsent_keeps_other_policy_fields(kf: InProcess) -> None:
    cid, _ = kf.register([WEB])
    grant_id = seed_grant(kf, cid)
    _, challenge = pkce()
    kf.logged_in().approve(kf.authorize_url(cid, WEB, challenge), cap_usd="3")
    grant = kf.run(kf.store.grants.get, grant_id)
    assert grant is not None
    policy = policy_of(grant)
    assert policy.limits[0] == SpendLimit("month", 3_000_000)
    assert policy.limits[1:] == rich_policy().limits[1:]
    assert policy.requests_per_minute == 30 and policy.use_wallet
    assert policy.webhook_url == "https://hooks.example/k"


def test_edit_page_refusals(kf: InProcess) -> None:
    cid, _ = kf.register([WEB])
    grant_id = seed_grant(kf, cid)
    assert kf.client.get(f"/grants/{grant_id}/edit").status_code == 303  # not logged in
    kf.logged_in()
    page = kf.client.get(f"/grants/{grant_id}/edit")
    token = hidden(page.text, "csrf_token")
    for data, status in (
        ({"cap_usd": "1", "window": "month"}, 403),
        ({"csrf_token": token, "cap_usd": "abc", "window": "month"}, 400),
        ({"csrf_token": token, "cap_usd": "1", "window": "year"}, 400),
        ({"csrf_token": token, "cap_usd": "1", "window": "month", "models": "x/y"}, 400),
    ):
        assert kf.client.post(f"/grants/{grant_id}/edit", data=data).status_code == status
    assert kf.client.get("/grants/nope/edit").status_code == 404
    grant = kf.run(kf.store.grants.get, grant_id)
    assert grant is not None and policy_of(grant) == rich_policy()


def test_the_summary_describes_the_form_and_each_period_says_when_it_resets(
    kf: InProcess,
) -> None:
    """Without JavaScript the summary cannot follow the form: it says it describes the
    form as filled in, and the person's choice (here: another period, cap and model) is
    what the grant gets."""
    cid, _ = kf.register([WEB], name="Story Writer")
    _, challenge = pkce()
    browser = kf.logged_in()
    page = browser.consent_page(kf.authorize_url(cid, WEB, challenge, keyfob_window="month"))
    assert (
        "Story Writer may spend up to $5.00 per month on this model, as filled in below; "
        "what you choose there is what applies" in page.text
    )
    for value, words in (
        ("day", "day (resets every midnight)"),
        ("week", "week (resets Monday at midnight)"),
        ("month", "month (resets on the 1st at midnight)"),
    ):
        assert re.search(
            rf'<option value="{value}"( selected)?>{re.escape(words)}</option>', page.text
        )
    assert "current period you choose" in page.text and "calendar month" not in page.text
    answer = browser.decide(page, cap_usd="1.25", window="day", models=["fake/m2", "fake/m3"])
    assert answer.status_code == 303
    grant = kf.run(kf.store.grants.active_for, kf.owner.id, cid)
    assert grant is not None and sorted(grant.models) == ["fake/m2", "fake/m3"]
    assert policy_of(grant).limits == (SpendLimit("day", 1_250_000),)


def test_an_empty_model_list_is_refused_by_its_field(kf: InProcess) -> None:
    cid, _ = kf.register([WEB], name="Picky")
    _, challenge = pkce()
    browser = kf.logged_in()
    page = browser.consent_page(kf.authorize_url(cid, WEB, challenge))
    refused = browser.decide(page, models=[])
    assert refused.status_code == 400
    assert '<fieldset aria-describedby="models-error">' in refused.text
    error = re.search(r'<p class="field-error" id="models-error">([^<]+)</p>', refused.text)
    assert error is not None and "model" in error.group(1).lower()
    assert 'id="cap-error"' not in refused.text
    assert kf.run(kf.store.grants.active_for, kf.owner.id, cid) is None  # nothing granted
    # the form is shown again with the request still valid: choosing a model now works
    again = browser.decide(refused, models=["fake/m1"])
    assert again.status_code == 303 and "code=" in again.headers["location"]
