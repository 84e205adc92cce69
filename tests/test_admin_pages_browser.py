"""The many-people pages in Debian's Chromium (issue 12): signup (invite mode), the
password link page, login with its signup link, the admin pages (people, invites, apps,
usage, the confirmations, a link shown once) and consent for an app an admin has not
verified, at 1280 and 390 px, light and dark: no horizontal overflow, no console errors,
no serious or critical axe-core violations; form errors by their field too.

A hosted server on PostgreSQL (uvicorn in a thread), seeded once for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import openai
import pytest

from keyfob.accounts.people import new_invite, password_link
from keyfob.oauth import rfc7636
from keyfob.oauth.clients import register_app
from keyfob.store import Store
from tests.chromium import browser, screenshot
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.fake_upstream import FakeUpstream
from tests.oauth_app import LiveServer
from tests.people_support import MASTER_KEY, SESSION_KEYS, password_hash, pg_database
from tests.support import grant_token
from tests.test_pages_browser import WIDTHS, _check


class Site:
    def __init__(self, server: LiveServer, ids: dict[str, str]) -> None:
        self.server = server
        self.url = server.url
        self.ids = ids


def _seed(server: LiveServer, up: FakeUpstream) -> dict[str, str]:
    async def go(store: Store) -> dict[str, str]:
        alice = await store.people.create_person("alice", password_hash())
        await store.people.create_person("bob", password_hash(), role="admin")
        gone = await store.people.create_person("carl", password_hash())
        await store.people.disable(gone.id)
        provider = await store.providers.add(
            user_id=alice.id,
            name="up",
            kind="openai_compatible",
            base_url=up.url("up") + "/v1",
            credential_envelope=None,
            models=["gpt-4o-mini"],
        )
        await store.providers.set_price(
            provider.id,
            "gpt-4o-mini",
            input_micro_usd_per_mtok=150_000,
            output_micro_usd_per_mtok=600_000,
        )
        app, _ = await register_app(
            store,
            name="Alice's Notes, a long app name that has to wrap on a phone",
            redirect_uris=["https://notes.example/callback/with/a/long/path"],
            public=True,
            registered_by=alice,
        )
        minted = await grant_token(
            store, user_id=alice.id, models=["up/gpt-4o-mini"], cap_micro_usd=5_000_000
        )
        invite, code = await new_invite(store, None, uses=3, note="the team")
        await new_invite(store, None, uses=1, ttl_s=None)
        return {
            "alice": alice.id,
            "app": app.id,
            "token": str(minted["token"]),
            "invite": invite.id,
            "code": code,
        }

    return server.in_store(go)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    up = FakeUpstream()
    with pg_database() as url:
        server = LiveServer(
            tmp_path_factory.mktemp("people-pages") / "data",
            models=(),
            mode="hosted",
            database_url=url,
            master_key=MASTER_KEY,
            session_keys=SESSION_KEYS,
            signup="invite",
            upstream_allow_private=("127.0.0.0/8",),  # the fake upstream is on loopback
        )
        with server:
            ids = _seed(server, up)
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=ids["token"], max_retries=0)
            for i in range(3):
                client.chat.completions.create(
                    model="up/gpt-4o-mini",
                    messages=[{"role": "user", "content": f"hello {i}"}],
                    max_tokens=20,
                )
            yield Site(server, ids)
    up.close()


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    with browser() as b:
        yield b


def _visit(context: Any, site: Site, name: str, path: str, label: str, status: int = 200) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(site.url + path)
    assert response is not None and response.status == status, (name, response and response.status)
    screenshot(page, f"{name}-{label}")
    _check(page, f"{name} at {label}", errors)
    return page


def _submit(page: Any, name: str, label: str, status: int, form: str = "main form") -> None:
    """Submit a form of the page as it is filled; the answer is checked like a page."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with page.expect_navigation() as nav:
        page.click(f"{form} button[type=submit]")
    assert nav.value is not None and nav.value.status == status, (name, nav.value)
    screenshot(page, f"{name}-{label}")
    errors[:] = [e for e in errors if str(status) not in e]  # the answer's own status
    _check(page, f"{name} at {label}", errors)


def _fresh_link(site: Site) -> str:
    """A new password link for alice (each walk's admin-link step replaces the last)."""

    async def go(store: Store) -> str:
        alice = await store.users.get(site.ids["alice"])
        assert alice is not None
        made = await password_link(store, site.url, alice, None)
        return made.url.removeprefix(site.url)

    # sync Playwright runs an event loop in this thread: read the store from another one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(site.server.in_store, go).result()


@pytest.mark.parametrize(
    ("width", "scheme"), [("desktop", "light"), ("phone", "light"), ("desktop", "dark")]
)
def test_people_pages_fit_are_accessible_and_quiet(
    site: Site, chrome: Any, width: str, scheme: str
) -> None:
    w, h = WIDTHS[width]
    label = f"{width}-{scheme}"
    context = chrome.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
    ids = site.ids
    try:
        login = _visit(context, site, "login-with-signup", "/login", label)
        assert login.locator("#signup-link").count() == 1
        login.close()
        signup = _visit(context, site, "signup-invite", f"/signup?code={ids['code']}", label)
        assert signup.input_value("#invite_code") == ids["code"]
        signup.fill("#invite_code", "kfiv_wrong")
        signup.fill("#username", "dora")
        signup.fill("#password", "short")
        signup.fill("#password_confirm", "different")
        _submit(signup, "signup-errors", label, 400)
        assert signup.locator("#password_confirm-error").count() == 1
        signup.close()
        _visit(context, site, "password-link", _fresh_link(site), label).close()
        # as an admin
        page = context.new_page()
        page.goto(site.url + "/login")
        page.fill("#username", OWNER)
        page.fill("#password", OWNER_PASSWORD)
        page.click("main form button[type=submit]")
        page.wait_for_url(site.url + "/")
        page.close()
        verifier = "v" * 50
        consent = "/oauth/authorize?" + urlencode(
            {
                "response_type": "code",
                "client_id": ids["app"],
                "redirect_uri": "https://notes.example/callback/with/a/long/path",
                "code_challenge": rfc7636.s256(verifier),
                "code_challenge_method": "S256",
                "state": "s",
            }
        )
        pages = {
            "admin-people": "/admin",
            "admin-invites": "/admin/invites",
            "admin-apps": "/admin/apps",
            "admin-usage": "/admin/usage?range=all",
            "admin-disable": f"/admin/people/{ids['alice']}/disable",
            "admin-role": f"/admin/people/{ids['alice']}/role",
            "admin-invite-revoke": f"/admin/invites/{ids['invite']}/revoke",
            "consent-unverified": consent,
        }
        for name, path in pages.items():
            _visit(context, site, name, path, label).close()
        people = _visit(context, site, "admin-people-errors", "/admin", label)
        people.fill("#username", "not a name")
        _submit(people, "admin-people-errors", label, 400, 'form[action="/admin/people"]')
        assert people.locator("#username-error").count() == 1
        people.close()
        people = _visit(context, site, "admin-link", "/admin", label)
        with people.expect_navigation():
            people.locator('tr[data-person="alice"] button', has_text="Password link").click()
        screenshot(people, f"admin-link-{label}")
        assert "/password?code=kfpw_" in people.inner_text("#secret")
        _check(people, f"admin-link at {label}", [])
        people.close()
    finally:
        context.close()
