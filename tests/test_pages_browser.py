"""Every page of the dashboard in Debian's Chromium (issue 14's proof), at 1280 px and at
390 px (a phone), light and dark: no horizontal overflow, no console errors, no serious or
critical axe-core violations; screenshots in tests/screenshots/ for a person to look at.
The pages only reached by doing something (an app registered, a device connected), the
first-run setup page and the server-error page are walked too.
And the question the dashboard exists for: what did app X cost me this week, answered
from the overview in one click, equal to the ledger.

One browser and one server (uvicorn in a thread, seeded with real calls through the
official SDK) for the whole module, so the walk stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyfob.allowance.windows import calendar_week
from keyfob.money import usd_summary
from keyfob.oauth import rfc7636
from keyfob.store import Store
from tests.chromium import axe_violations, browser, missing, screenshot
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.fake_upstream import FakeUpstream
from tests.oauth_app import LiveServer
from tests.support import grant_token

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
MODEL = "up/gpt-4o-mini"
SETUP_TOKEN = "s" * 32
BOOM = "/_test/boom"


class Site:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.url = server.url
        self.ids: dict[str, str] = {}


def _seed(server: LiveServer, up: FakeUpstream) -> dict[str, str]:
    async def go(store: Store) -> dict[str, str]:
        owner = await store.users.owner()
        assert owner is not None
        provider = await store.providers.add(
            user_id=owner.id,
            name="up",
            kind="openai_compatible",
            base_url=up.url("up") + "/v1",
            credential_envelope=None,
            models=["gpt-4o-mini", "unpriced-model-x"],
        )
        await store.providers.set_price(
            provider.id,
            "gpt-4o-mini",
            input_micro_usd_per_mtok=150_000,
            output_micro_usd_per_mtok=600_000,
        )
        writer = await grant_token(
            store,
            user_id=owner.id,
            models=[MODEL],
            cap_micro_usd=5_000_000,
            client_name="Story Writer",
        )
        tight = await grant_token(
            store, user_id=owner.id, models=[MODEL], cap_micro_usd=5, client_name="Tiny Budget"
        )
        gone = await grant_token(
            store, user_id=owner.id, models=[MODEL], cap_micro_usd=1_000_000, client_name="Old App"
        )
        await store.wallets.top_up(owner.id, 12_500_000, "first top-up")
        return {
            "provider": provider.id,
            "writer": writer["grant_id"],
            "writer_token": writer["token"],
            "tight_token": tight["token"],
            "gone": gone["grant_id"],
            "gone_token": gone["token"],
            "writer_client": writer["client_id"],
        }

    return server.in_store(go)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    up = FakeUpstream()
    with LiveServer(tmp_path_factory.mktemp("pages") / "data", models=("gemma",)) as server:
        s = Site(server)
        s.ids = _seed(server, up)
        for key, n in (("writer_token", 4), ("gone_token", 1)):
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=s.ids[key], max_retries=0)
            for i in range(n):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"story {i}"}], max_tokens=40
                )
        tight = openai.OpenAI(
            base_url=server.url + "/v1", api_key=s.ids["tight_token"], max_retries=0
        )
        with pytest.raises(openai.RateLimitError):
            tight.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40
            )

        async def revoke(store: Store) -> None:
            await store.grants.revoke(s.ids["gone"])

        server.in_store(revoke)

        async def boom(request: Request) -> Response:
            raise RuntimeError("a bug, for the server-error page")

        # the one way to see the 500 page as served: a route that fails, added for the test
        server.app.router.routes.insert(0, Route(BOOM, boom))
        yield s
    up.close()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A Keyfob with no owner yet: the only one whose setup page is open."""
    data = tmp_path_factory.mktemp("first-run") / "data"
    with LiveServer(data, owner=False, setup_token=SETUP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    with browser() as b:
        yield b


def _login(context: Any, url: str) -> None:
    page = context.new_page()
    page.goto(url + "/login")
    page.fill("#username", OWNER)
    page.fill("#password", OWNER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
    page.close()


def _pages(site: Site) -> dict[str, str]:
    ids = site.ids
    verifier = "v" * 50
    consent = "/oauth/authorize?" + urlencode(
        {
            "response_type": "code",
            "client_id": ids["writer_client"],
            "redirect_uri": "http://127.0.0.1/cb",
            "code_challenge": rfc7636.s256(verifier),
            "code_challenge_method": "S256",
            "state": "s",
        }
    )
    return {
        "overview": "/",
        "overview-by-model": "/?days=7&by=model",
        "app": f"/grants/{ids['writer']}?range=all",
        "app-limits": f"/grants/{ids['writer']}/edit",
        "app-revoke": f"/grants/{ids['writer']}/revoke",
        "app-revoked": f"/grants/{ids['gone']}?range=all",
        "providers": "/providers",
        "provider-new": "/providers/new",
        "provider": f"/providers/{ids['provider']}",
        "provider-remove": f"/providers/{ids['provider']}/remove",
        "openrouter": "/providers/openrouter/link",
        "wallet": "/wallet",
        "settings": "/settings",
        "register-app": "/apps/new",
        "device": "/device",
        "consent": consent,
        "not-found": "/no/such/page",
    }


def _check(page: Any, name: str, errors: list[str]) -> None:
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name}: {overflow}px of horizontal overflow"
    violations = axe_violations(page)
    assert not violations, f"{name}: " + "; ".join(
        f"{v['id']}: {[n['target'] for n in v['nodes']][:3]}" for v in violations
    )
    assert not errors, f"{name}: console errors {errors}"


#: Every page at both widths in both themes: overflow depends on the width, contrast on
#: the theme, and a phone's narrow layout (stacked tables, wrapped header) has colours of
#: its own.
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_every_page_fits_is_accessible_and_quiet(
    site: Site, first_run: LiveServer, chrome: Any, width: str, scheme: str
) -> None:
    w, h = WIDTHS[width]
    context = chrome.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
    walk = Walk(width, scheme)
    try:
        # logged out first: login, and the first-run setup of a Keyfob with no owner
        walk.visit(context, site.url, "login", "/login")
        walk.visit(context, first_run.url, "setup", f"/setup?token={SETUP_TOKEN}")
        _login(context, site.url)
        for name, path in _pages(site).items():
            walk.visit(context, site.url, name, path, 404 if name == "not-found" else 200)
        walk.visit(context, site.url, "server-error", BOOM, 500)
        _register_app(context, site, walk)
        _connect_device(context, site, walk)
    finally:
        context.close()


class Walk:
    """One width and theme: open pages, check each, keep a screenshot of each."""

    def __init__(self, width: str, scheme: str) -> None:
        self.width, self.scheme = width, scheme

    def open(self, context: Any) -> tuple[Any, list[str]]:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        return page, errors

    def visit(self, context: Any, base: str, name: str, path: str, status: int = 200) -> None:
        page, errors = self.open(context)
        response = page.goto(base + path)
        assert response is not None
        assert response.status == status, (name, response.status)
        if status != 200:  # the browser logs the page's own status as a failed load
            errors[:] = [e for e in errors if str(status) not in e]
        self.check(page, name, errors)
        page.close()

    def check(self, page: Any, name: str, errors: list[str]) -> None:
        screenshot(page, f"{name}-{self.width}-{self.scheme}")
        _check(page, f"{name} at {self.width} ({self.scheme})", errors)


def _register_app(context: Any, site: Site, walk: Walk) -> None:
    """The page a new app's credentials are shown on (once), reached as a person does."""
    page, errors = walk.open(context)
    page.goto(site.url + "/apps/new")
    page.fill("#name", f"Walked app {walk.width} {walk.scheme}")
    page.fill("#redirect_uris", "https://walked.example/cb")
    page.check("#type-confidential")
    page.click("form[action='/apps/new'] button[type=submit]")  # not the menu's Log out
    page.wait_for_load_state()
    assert "kfcs_" in page.content(), "the client secret is shown once"
    walk.check(page, "app-created", errors)
    page.close()


def _connect_device(context: Any, site: Site, walk: Walk) -> None:
    """A device's code typed in, its consent page, and the page that says it is done."""
    codes = httpx.post(
        site.url + "/oauth/device_authorization",
        data={"client_id": site.ids["writer_client"]},
        timeout=10,
    )
    assert codes.status_code == 200, codes.text
    page, errors = walk.open(context)
    page.goto(site.url + "/device?" + urlencode({"user_code": codes.json()["user_code"]}))
    page.click("form[action='/device'] button[type=submit]")
    page.wait_for_selector("button[value=approve]")
    walk.check(page, "device-consent", errors)
    page.click("button[value=approve]")
    page.wait_for_selector("h1:has-text('Device connected')")
    walk.check(page, "device-done", errors)
    page.close()


def _ledger_week(site: Site) -> int:
    async def go(store: Store) -> int:
        since = calendar_week(time.time(), "UTC").starts_at
        entries = await store.ledger.entries(grant_id=site.ids["writer"], limit=10_000)
        return sum(
            (e.cost_micro_usd or 0) if e.status != "reserved" else e.reserved_micro_usd
            for e in entries
            if e.created_at >= since
        )

    # sync Playwright runs an event loop in this thread: read the store from another one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(site.server.in_store, go).result()


def test_what_did_this_app_cost_me_this_week_in_one_click(site: Site, chrome: Any) -> None:
    context = chrome.new_context(viewport={"width": 390, "height": 844})
    try:
        _login(context, site.url)
        page = context.new_page()
        page.goto(site.url + "/")
        card = page.locator("article", has_text="Story Writer")
        card.get_by_role("link", name="Story Writer this week").click()  # the one click
        page.wait_for_url("**range=week")
        figure = page.locator("#range-total .figure")
        expected = _ledger_week(site)
        assert expected > 0
        assert int(figure.get_attribute("data-cost-micro") or -1) == expected
        assert figure.inner_text() == usd_summary(expected)
        assert "This week" in page.locator("#range-total").inner_text()
        screenshot(page, "answer-this-week-phone")
    finally:
        context.close()


def test_refused_call_and_revoked_app_show_on_the_overview(site: Site, chrome: Any) -> None:
    context = chrome.new_context(viewport={"width": 1280, "height": 900})
    try:
        _login(context, site.url)
        page = context.new_page()
        deadline = time.monotonic() + 5
        while True:
            page.goto(site.url + "/")
            refused = page.locator("#refused-h + div, #refused-h ~ p").first.inner_text()
            if "Tiny Budget" in refused or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "Tiny Budget" in refused and "month" in refused
        assert "Old App" in page.locator("section", has_text="Revoked apps").inner_text()
    finally:
        context.close()


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        missing("Debian's chromium is not installed (make browser)")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        missing("Debian's chromium is not installed (make browser)")
