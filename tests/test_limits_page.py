"""An app's limits page as a person's browser submits it: every field as rendered (text
inputs, ticked boxes, the selected option of each list), with one change. Removing a
limit row keeps every other limit as it was."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import policy_of
from tests.gateway_inproc import link
from tests.oauth_app import InProcess
from tests.support import grant_token

MODEL = "up/gpt-4o-mini"


class _Form(HTMLParser):
    """The fields a browser would send for the page's form posting to ``action``."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action = action
        self.inside = False
        self.select: str | None = None
        self.first_option: tuple[str, str] | None = None
        self.chosen = False
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields.append((name, a.get("value", "on")))
            else:
                self.fields.append((name, a.get("value", "")))
        elif tag == "select" and name:
            self.select, self.first_option, self.chosen = name, None, False
        elif tag == "option" and self.select:
            value = a.get("value", "")
            if self.first_option is None:
                self.first_option = (self.select, value)
            if "selected" in a:
                self.fields.append((self.select, value))
                self.chosen = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self.select:
            if not self.chosen and self.first_option is not None:
                self.fields.append(self.first_option)  # a list shows its first option
            self.select = None
        elif tag == "form":
            self.inside = False


def form_fields(html: str, action: str) -> list[tuple[str, str]]:
    parser = _Form(action)
    parser.feed(html)
    assert parser.fields, f"no form posting to {action}"
    return parser.fields


def as_data(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Repeated names (the ticked models) as lists, the way httpx sends form data."""
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return data


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as kf:
        link(kf, "up", "http://127.0.0.1:9/v1", models=["gpt-4o-mini"], price=(150_000, 600_000))
        kf.logged_in()
        yield kf


def test_removing_a_limit_row_keeps_the_others(app: InProcess) -> None:
    policy = Policy(
        limits=(
            SpendLimit("month", 5_000_000),
            SpendLimit("rolling", 1_500_000, seconds=5 * 3600),
            SpendLimit("week", 250_000, model=MODEL),
        ),
        requests_per_minute=10,
    )
    minted = app.run(
        grant_token,
        app.store,
        user_id=app.owner.id,
        models=[MODEL],
        cap_micro_usd=5_000_000,
        policy_json=policy.to_json(),
        client_name="Trimmer",
    )
    grant_id = minted["grant_id"]
    action = f"/grants/{grant_id}/edit"
    page = app.client.get(action)
    assert page.status_code == 200
    assert 'id="lim_remove_0"' in page.text and 'id="lim_remove_1"' in page.text
    # unchanged, the form as rendered saves the same policy
    same = app.client.post(action, data=as_data(form_fields(page.text, action)))
    assert same.status_code == 303, same.text[:3000]
    assert policy_of(app.run(app.store.grants.get, grant_id)) == policy  # type: ignore[arg-type]
    # tick "Remove this limit" on the rolling 5 h row
    page = app.client.get(action)
    data = form_fields(page.text, action)
    rows = {v for k, v in data if k.startswith("lim_period_")}
    assert {"rolling", "week"} <= rows
    [index] = [
        k.rsplit("_", 1)[1] for k, v in data if k.startswith("lim_period_") and v == "rolling"
    ]
    removed = app.client.post(action, data=as_data([*data, (f"lim_remove_{index}", "1")]))
    assert removed.status_code == 303, removed.text[:3000]
    after = policy_of(app.run(app.store.grants.get, grant_id))  # type: ignore[arg-type]
    assert after.limits == (
        SpendLimit("month", 5_000_000),
        SpendLimit("week", 250_000, model=MODEL),
    )
    assert after.requests_per_minute == 10
    shown = app.client.get(f"/grants/{grant_id}").text
    assert "Saved the limits of Trimmer" in shown
    again = app.client.get(action).text
    assert 'value="5h"' not in again and 'value="0.25"' in again
