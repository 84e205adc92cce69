"""Every person's providers, apps, grants, usage, wallet and sessions are theirs alone
(issue 12). Person B (a member; for the person pages also an admin) tries every route of
the app and every CLI command that acts for a person (``--user bob``) against person
A's objects, with A's ids copied in: every attempt is refused (404 or 403, an OAuth or
CLI refusal) or acts on B's own objects, no answer carries anything of A's, and A's
objects are unchanged afterwards (A's token still works).

Routes and commands are enumerated from the app itself: a route or command missing from
the tables below fails ``test_every_route_and_command_is_classified``, so a new one
must say how it is isolated before the suite passes. SQLite in personal mode, and
PostgreSQL in hosted mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from starlette.routing import Route
from typer.main import get_command
from typer.testing import CliRunner

from keyfob.cli import app as cli_app
from keyfob.oauth.clients import register_app
from keyfob.server import collect_routes
from keyfob.tokens import hash_token
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import sdk
from tests.oauth_app import OWNER, OWNER_PASSWORD, InProcess, checked, hidden, pkce
from tests.people_support import (
    MASTER_KEY,
    Seeded,
    add_person,
    hosted,
    pg_database,
    seed_person,
    sign_in,
    use,
)

# --- how each route is isolated --------------------------------------------------------

#: Public: answers the same to anyone, nothing of any person's.
PUBLIC = "public"
#: A signed-in person's page with an object id in its path: A's id must give 403/404.
BY_ID = "by_id"
#: A signed-in person's page without an id: acts on the signed-in person only.
OWN = "own"
#: Admins only: a member gets 403; an admin sees names and totals, never keys.
ADMIN = "admin"
#: OAuth endpoints: client-authenticated (B's client against A's codes and tokens).
OAUTH = "oauth"
#: Bearer endpoints under /v1: B's token against A's models and usage.
GATEWAY = "gateway"

ROUTES: dict[tuple[str, str], str] = {
    ("/healthz", "GET"): PUBLIC,
    ("/livez", "GET"): PUBLIC,
    ("/readyz", "GET"): PUBLIC,
    ("/metrics", "GET"): PUBLIC,  # 404 without KEYFOB_METRICS_TOKEN, in every mode
    ("/openapi.json", "GET"): PUBLIC,
    ("/.well-known/oauth-authorization-server", "GET"): PUBLIC,
    ("/.well-known/oauth-protected-resource", "GET"): PUBLIC,
    ("/.well-known/oauth-protected-resource/v1", "GET"): PUBLIC,
    ("/favicon.svg", "GET"): PUBLIC,
    ("/favicon.ico", "GET"): PUBLIC,
    ("/setup", "GET"): PUBLIC,
    ("/setup", "POST"): PUBLIC,
    ("/login", "GET"): PUBLIC,
    ("/login", "POST"): PUBLIC,
    ("/logout", "POST"): PUBLIC,
    ("/signup", "GET"): PUBLIC,
    ("/signup", "POST"): PUBLIC,
    ("/password", "GET"): PUBLIC,
    ("/password", "POST"): PUBLIC,
    ("/oauth/authorize", "GET"): OAUTH,
    ("/oauth/authorize", "POST"): OAUTH,
    ("/oauth/token", "POST"): OAUTH,
    ("/oauth/device_authorization", "POST"): OAUTH,
    ("/oauth/revoke", "POST"): OAUTH,
    ("/oauth/introspect", "POST"): OAUTH,
    ("/oauth/register", "POST"): OAUTH,
    ("/device", "GET"): OAUTH,
    ("/device", "POST"): OAUTH,
    ("/device/consent", "POST"): OAUTH,
    ("/v1/chat/completions", "POST"): GATEWAY,
    ("/v1/models", "GET"): GATEWAY,
    ("/v1/responses", "POST"): GATEWAY,
    ("/v1/embeddings", "POST"): GATEWAY,
    ("/v1/messages", "POST"): GATEWAY,
    ("/v1/messages/count_tokens", "POST"): GATEWAY,
    ("/v1/keyfob/quote", "POST"): GATEWAY,
    ("/v1/keyfob/allowance", "GET"): GATEWAY,
    ("/v1/keyfob/usage", "GET"): GATEWAY,
    ("/api/usage", "GET"): OWN,
    ("/", "GET"): OWN,
    ("/overruns/seen", "POST"): OWN,
    ("/apps/new", "GET"): OWN,
    ("/apps/new", "POST"): OWN,
    ("/providers/openrouter/link", "GET"): OWN,
    ("/providers/openrouter/link", "POST"): OWN,
    ("/providers/openrouter/callback", "GET"): OWN,
    ("/providers", "GET"): OWN,
    ("/providers/new", "GET"): OWN,
    ("/providers/new", "POST"): OWN,
    ("/providers/{provider_id}", "GET"): BY_ID,
    ("/providers/{provider_id}", "POST"): BY_ID,
    ("/providers/{provider_id}/test", "POST"): BY_ID,
    ("/providers/{provider_id}/prices", "POST"): BY_ID,
    ("/providers/{provider_id}/remove", "GET"): BY_ID,
    ("/providers/{provider_id}/remove", "POST"): BY_ID,
    ("/grants/{grant_id}", "GET"): BY_ID,
    ("/grants/{grant_id}/calls.csv", "GET"): BY_ID,
    ("/grants/{grant_id}/revoke", "GET"): BY_ID,
    ("/grants/{grant_id}/revoke", "POST"): BY_ID,
    ("/grants/{grant_id}/edit", "GET"): BY_ID,
    ("/grants/{grant_id}/edit", "POST"): BY_ID,
    ("/wallet", "GET"): OWN,
    ("/wallet/topup", "POST"): OWN,
    ("/wallet/refill", "POST"): OWN,
    ("/settings", "GET"): OWN,
    ("/settings/preferences", "POST"): OWN,
    ("/settings/password", "POST"): OWN,
    ("/settings/logout-everywhere", "POST"): OWN,
    ("/admin", "GET"): ADMIN,
    ("/admin/people", "POST"): ADMIN,
    ("/admin/people/{user_id}/disable", "GET"): ADMIN,
    ("/admin/people/{user_id}/disable", "POST"): ADMIN,
    ("/admin/people/{user_id}/enable", "POST"): ADMIN,
    ("/admin/people/{user_id}/reset", "POST"): ADMIN,
    ("/admin/people/{user_id}/role", "GET"): ADMIN,
    ("/admin/people/{user_id}/role", "POST"): ADMIN,
    ("/admin/people/{user_id}/logout", "POST"): ADMIN,
    ("/admin/invites", "GET"): ADMIN,
    ("/admin/invites", "POST"): ADMIN,
    ("/admin/invites/{invite_id}/revoke", "GET"): ADMIN,
    ("/admin/invites/{invite_id}/revoke", "POST"): ADMIN,
    ("/admin/apps", "GET"): ADMIN,
    ("/admin/apps/verify", "POST"): ADMIN,
    ("/admin/usage", "GET"): ADMIN,
}

#: CLI commands that act for a person: the attack (B's ``--user bob`` is added) with A's
#: names and ids filled in, and whether it must be refused (exit code != 0) or may act
#: on B's own objects ("own": A's objects unchanged, nothing of A's printed).
CLI_ATTACKS: dict[str, tuple[str, list[str]]] = {
    "providers list": ("own", []),
    "providers price": ("refused", ["{a_provider}", "{a_model}", "--input", "9", "--output", "9"]),
    "providers limits": ("refused", ["{a_provider}", "{a_model}", "--context", "10"]),
    "providers order": ("refused", ["{a_provider}"]),
    "models list": ("own", []),
    "models alias": ("refused", ["mine", "{a_provider}/{a_model}"]),
    "models unalias": ("refused", ["{a_alias}"]),
    "apps list": ("own", []),
    "apps revoke": ("refused", ["{a_granted_client}"]),
    "apps policy": ("refused", ["{a_granted_client}", "--month", "99"]),
    "apps expire": ("refused", ["{a_granted_client}", "--in", "1m"]),
    "usage": ("own", ["--by", "app,model"]),
    "wallet show": ("own", []),
    "wallet topup": ("own", ["1"]),
    "wallet refill": ("own", ["2"]),
    "dev-token": ("any", ["{a_granted_client}"]),
    # last: B's own app and provider may bear A's names (names are per person)
    "apps add": ("own", ["{a_app}", "-r", "http://127.0.0.1/cb"]),
    # B's own provider may bear A's provider's name (names are per person); hosted
    # mode refuses its loopback address
    "providers add": (
        "any",
        ["{a_provider}", "--base-url", "http://127.0.0.1:9/v1", "--local", "-m", "x"],
    ),
}

#: Commands that act for nobody in particular: the operator's (people, keys, the
#: server), or read-only facts about Keyfob itself.
CLI_NOT_ACTING = {
    "serve",
    "init",
    "terms",
    "providers kinds",
    "vault rotate",
    "vault keygen",
    "migrate",
    "setup-link",
    "users add",
    "users list",
    "users disable",
    "users enable",
    "users reset-password",
    "users set-role",
    "users logout",
    "users invite create",
    "users invite list",
    "users invite revoke",
}


def app_routes() -> set[tuple[str, str]]:
    found = set()
    for route in collect_routes():
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":
                found.add((route.path, method))
    return found


def cli_commands() -> set[str]:
    found: set[str] = set()

    def walk(command: Any, prefix: str) -> None:
        subs = getattr(command, "commands", None)
        if subs is None:
            found.add(prefix.strip())
            return
        for name, sub in subs.items():
            walk(sub, f"{prefix} {name}")

    walk(get_command(cli_app), "")
    return found


def test_every_route_and_command_is_classified() -> None:
    routes = app_routes()
    assert routes - ROUTES.keys() == set(), "classify these routes in ROUTES"
    assert ROUTES.keys() - routes == set(), "these classified routes no longer exist"
    commands = cli_commands()
    known = CLI_ATTACKS.keys() | CLI_NOT_ACTING
    assert commands - known == set(), "classify these commands in CLI_ATTACKS"
    assert known - commands == set(), "these classified commands no longer exist"
    from keyfob.cli.users import acting_commands

    acting = {label for label, _info in acting_commands(cli_app)}
    assert acting == CLI_ATTACKS.keys(), "every command acting for a person takes --user"


# --- the attack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@dataclass
class World:
    app: InProcess
    env: dict[str, str]
    a: Seeded
    b: Seeded
    jar_a: dict[str, str]
    jar_b: dict[str, str]
    jar_admin: dict[str, str]
    #: A's confidential app's tokens from a real code flow, and its credentials.
    a_oauth: dict[str, Any]
    a_client: tuple[str, str]
    b_client: tuple[str, str]
    a_code: str
    invite_id: str
    a_redirect: str = "https://alice.example/cb"
    problems: list[str] = field(default_factory=list)

    def markers(self, *allowed: str) -> list[str]:
        """Strings that would show something of A's (minus what the attacker typed)."""
        a = self.a
        found = [
            a.api_key,
            a.user.id,
            a.provider_id,
            a.grant_id,
            a.client_id,
            a.provider_name,
            "alice-model",
            "alicealias",
            "alice App",
            "alice Granted",
            "alice money",
            self.a_oauth["access_token"],
            self.a_oauth["refresh_token"],
            hash_token(a.token),
        ]
        return [m for m in found if not any(m in typed for typed in allowed)]

    def leak(self, where: str, text: str, *allowed: str) -> None:
        for marker in self.markers(*allowed):
            if marker in text:
                self.problems.append(f"{where}: shows {marker[:24]!r}")

    def expect(self, where: str, ok: bool, detail: object = "") -> None:
        if not ok:
            self.problems.append(f"{where}: {detail}")


def _code_flow(app: InProcess, client_id: str, secret: str, redirect: str, exchange: bool) -> Any:
    verifier, challenge = pkce()
    browser = app.browser()
    page = browser.consent_page(app.authorize_url(client_id, redirect, challenge))
    answer = browser.decide(page, models=checked(page.text) or None)
    assert answer.status_code == 303, answer.text[:1000]
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    if not exchange:
        return code
    tokens = app.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "code_verifier": verifier,
            "client_id": client_id,
            "client_secret": secret,
        },
    )
    assert tokens.status_code == 200, tokens.text
    return tokens.json()


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path, up: FakeUpstream) -> Iterator[World]:
    data = tmp_path / "data"

    def build(app: InProcess, env: dict[str, str]) -> World:
        alice = add_person(app, "alice")
        bob = add_person(app, "bob")
        a = seed_person(app, alice, up.url("alice") + "/v1", "alice")
        b = seed_person(app, bob, up.url("bob") + "/v1", "bob")

        async def clients() -> tuple[tuple[str, str], tuple[str, str]]:
            ca, sa = await register_app(
                app.store,
                name="alice Server",
                redirect_uris=["https://alice.example/cb"],
                public=False,
                registered_by=alice,
            )
            cb, sb = await register_app(
                app.store,
                name="bob Server",
                redirect_uris=["https://bob.example/cb"],
                public=False,
                registered_by=bob,
            )
            assert sa and sb
            return (ca.id, sa), (cb.id, sb)

        a_client, b_client = app.run(clients)
        jar_a = sign_in(app, "alice")
        a_oauth = _code_flow(app, *a_client, "https://alice.example/cb", exchange=True)
        a_code = _code_flow(app, *a_client, "https://alice.example/cb", exchange=False)
        jar_a = dict(app.client.cookies)
        with sdk(app, a.token) as client:
            client.chat.completions.create(
                model="aliceprov/alice-model",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=5,
            )

        async def invite() -> str:
            from keyfob.accounts.people import new_invite

            made, _code = await new_invite(app.store, None, uses=2)
            return made.id

        return World(
            app,
            env,
            a,
            b,
            jar_a,
            sign_in(app, "bob"),
            sign_in(app, OWNER, OWNER_PASSWORD),
            a_oauth,
            a_client,
            b_client,
            a_code,
            app.run(invite),
        )

    if request.param == "sqlite":
        with InProcess(data) as app:
            yield build(app, {"KEYFOB_DATA_DIR": str(data)})
        return
    with pg_database() as url, hosted(data, url) as app:
        env = {
            "KEYFOB_DATA_DIR": str(data),
            "KEYFOB_DATABASE_URL": url,
            "KEYFOB_MASTER_KEY": MASTER_KEY,
            "KEYFOB_MODE": "hosted",
        }
        yield build(app, env)


async def _a_state(w: World) -> Any:
    """Everything of A's an attack could change."""
    store, a = w.app.store, w.a
    providers = [
        (p.name, p.base_url, p.credential_envelope, p.models)
        for p in await store.providers.list(a.user.id)
    ]
    prices = await store.providers.prices(a.provider_id)
    limits = await store.providers.limits(a.provider_id)
    grants = [
        (g.id, g.revoked_at, g.policy_json, g.cap_micro_usd, g.expires_at, g.models)
        for g in await store.grants.list(a.user.id, include_revoked=True)
    ]
    wallet = await store.wallets.get(a.user.id)
    clients = [
        (c.id, c.name, c.verified_at, c.redirect_uris)
        for c in await store.clients.visible_to(a.user.id)
    ]
    token = await store.tokens.active_with_grant(hash_token(a.token), "access", 0.0)
    return (
        providers,
        prices,
        limits,
        await store.providers.aliases(a.user.id),
        grants,
        (wallet.balance_micro_usd, wallet.monthly_refill_micro_usd),
        clients,
        token is not None,
        await store.sessions.count_for_user(a.user.id),
        await w.app.store.users.get(a.user.id),
    )


def _path(template: str, w: World) -> str:
    return (
        template.replace("{grant_id}", w.a.grant_id)
        .replace("{provider_id}", w.a.provider_id)
        .replace("{user_id}", w.a.user.id)
        .replace("{invite_id}", w.invite_id)
    )


#: Form fields every page POST gets (plausible values for each page's own fields).
FORM = {
    "cap_usd": "99",
    "window": "month",
    "amount_usd": "1",
    "amount": "1",
    "name": "bobsnew",
    "base_url": "http://127.0.0.1:9/v1",
    "kind": "openai_compatible",
    "models": "x-model",
    "model": "x-model",
    "input_usd": "9",
    "output_usd": "9",
    "timezone": "UTC",
    "current_password": "wrong password here",
    "new_password": "another good password",
    "new_password_confirm": "another good password",
    "username": "alice",
    "password": "not alice's password",
    "password_confirm": "not alice's password",
    "redirect_uris": "https://bob.example/cb2",
    "client_type": "public",
    "role": "admin",
    "uses": "5",
    "ttl": "86400",
    "client_id": "",
    "verified": "no",
}


def _csrf(w: World) -> str:
    return hidden(w.app.client.get("/settings").text, "csrf_token")


def _page(w: World, path: str, method: str, form: dict[str, str] | None = None) -> Any:
    c = w.app.client
    if method == "GET":
        return c.get(path)
    return c.post(path, data={"csrf_token": _csrf(w), **FORM, **(form or {})})


def _web(w: World) -> None:
    """Every page route, as B (a member) and, for person pages, as an admin too."""
    for (template, method), kind in sorted(ROUTES.items()):
        if kind not in (PUBLIC, BY_ID, OWN, ADMIN):
            continue
        path = _path(template, w)
        # an admin attacks the person pages too, and reads every admin page (its own
        # actions on A, allowed by design, are tested in test_people.py)
        as_admin = kind in (BY_ID, OWN) or (kind == ADMIN and method == "GET")
        attackers = [("member bob", w.jar_b)] + ([("admin", w.jar_admin)] if as_admin else [])
        for who, jar in attackers:
            use(w.app, jar)
            where = f"{who} {method} {template}"
            extra = {"client_id": w.a.client_id} if template == "/admin/apps/verify" else {}
            answer = _page(w, path, method, extra)
            w.expect(where, answer.status_code < 500, answer.status_code)
            if kind == BY_ID:
                w.expect(where, answer.status_code in (403, 404), answer.status_code)
            if kind == ADMIN and who == "member bob":
                w.expect(where, answer.status_code == 403, answer.status_code)
            if kind == ADMIN and who == "admin":
                # admins see names, counts and totals; never keys, providers or grants
                w.leak(
                    where,
                    answer.text,
                    "alice",
                    "alice App",
                    "alice Server",
                    "alice Granted",
                    w.a.user.id,
                    w.a.client_id,
                )
            else:
                w.leak(where, answer.text, *(FORM.values()))
            if template == "/logout" or template.endswith("/logout-everywhere"):
                # the attacker's own session ended: sign in again
                if who == "member bob":
                    w.jar_b = sign_in(w.app, "bob")
                else:
                    w.jar_admin = sign_in(w.app, OWNER, OWNER_PASSWORD)


def _oauth(w: World) -> None:
    app, c = w.app, w.app.client
    b_id, b_secret = w.b_client
    a_access, a_refresh = w.a_oauth["access_token"], w.a_oauth["refresh_token"]
    # B's client: introspecting A's token says nothing; revoking it does nothing;
    # refreshing or exchanging A's code is refused
    seen = c.post("/oauth/introspect", data={"token": a_access}, auth=(b_id, b_secret))
    w.expect("introspect", seen.status_code == 200 and seen.json() == {"active": False}, seen.text)
    c.post("/oauth/revoke", data={"token": a_access}, auth=(b_id, b_secret))
    c.post("/oauth/revoke", data={"token": a_refresh}, auth=(b_id, b_secret))
    mine = c.post("/oauth/introspect", data={"token": a_access}, auth=w.a_client)
    w.expect("revoke by another client", mine.json().get("active") is True, mine.text)
    refresh = c.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": a_refresh},
        auth=(b_id, b_secret),
    )
    w.expect("refresh", refresh.status_code in (400, 401), refresh.status_code)
    w.leak("refresh", refresh.text)
    code = c.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": w.a_code,
            "redirect_uri": w.a_redirect,
            "code_verifier": "x" * 43,
        },
        auth=(b_id, b_secret),
    )
    w.expect("code exchange", code.status_code in (400, 401), code.status_code)
    w.leak("code exchange", code.text)
    # device authorization and dynamic registration are the attacker's own
    device = c.post("/oauth/device_authorization", data={"client_id": b_id}, auth=(b_id, b_secret))
    w.expect("device_authorization", device.status_code == 200, device.text)
    w.leak("device_authorization", device.text)
    reg = c.post(
        "/oauth/register",
        json={
            "client_name": "alice App",
            "redirect_uris": ["http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
        },
    )
    w.expect("register", reg.status_code == 201, reg.text)
    w.leak("register", reg.text, "alice App")
    # B consents to A's app (any person may allow any app): nothing of A's on the page,
    # and A's models cannot be granted
    use(app, w.jar_b)
    _, challenge = pkce()
    url = app.authorize_url(w.a.client_id, "https://app.example/cb", challenge)
    consent = c.get(url)
    w.expect("authorize GET", consent.status_code == 200, consent.status_code)
    w.leak("authorize GET", consent.text, "alice App")
    w.expect("authorize GET", ">alice<" not in consent.text, "names the registrant")
    grab = c.post(
        "/oauth/authorize",
        data={
            "csrf_token": hidden(consent.text, "csrf_token"),
            "request_id": hidden(consent.text, "request_id"),
            "action": "approve",
            "cap_usd": "5",
            "window": "month",
            "models": "aliceprov/alice-model",
        },
    )
    w.expect("authorize POST with A's model", grab.status_code == 400, grab.status_code)
    w.leak("authorize POST", grab.text, "alice App", "aliceprov/alice-model")
    device_page = c.get("/device")
    w.expect("device GET", device_page.status_code == 200, device_page.status_code)
    w.leak("device GET", device_page.text)
    typed = c.post(
        "/device",
        data={"csrf_token": hidden(device_page.text, "csrf_token"), "user_code": "ABCD-EFGH"},
    )
    w.expect("device POST", typed.status_code == 400, typed.status_code)
    decided = c.post(
        "/device/consent",
        data={
            "csrf_token": hidden(device_page.text, "csrf_token"),
            "request_id": "x",
            "action": "approve",
        },
    )
    w.expect("device consent", decided.status_code in (400, 403, 404), decided.status_code)
    w.leak("device consent", decided.text)


def _gateway(w: World, up: FakeUpstream) -> None:
    c = w.app.client
    bearer = {"Authorization": f"Bearer {w.b.token}"}
    before = len(up.bodies("alice"))
    for model in ("aliceprov/alice-model", "alicealias", "alice-model"):
        calls: dict[str, dict[str, Any]] = {
            "/v1/chat/completions": {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
            },
            "/v1/responses": {"model": model, "input": "hi"},
            "/v1/embeddings": {"model": model, "input": "hi"},
            "/v1/messages": {
                "model": model,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
            "/v1/messages/count_tokens": {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
            },
            "/v1/keyfob/quote": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
        for path, body in calls.items():
            headers = {**bearer, "x-api-key": w.b.token} if "messages" in path else bearer
            answer = c.post(path, json=body, headers=headers)
            where = f"{path} as B with {model}"
            w.expect(where, answer.status_code in (400, 403, 404), answer.status_code)
            w.leak(where, answer.text, model)
    w.expect("upstream", len(up.bodies("alice")) == before, "A's provider was called")
    for path in ("/v1/models", "/v1/keyfob/allowance", "/v1/keyfob/usage?by=app,model"):
        answer = c.get(path, headers=bearer)
        w.expect(path, answer.status_code == 200, answer.status_code)
        w.leak(path, answer.text)
        w.expect(path, "bob" in answer.text or path != "/v1/models", "B's own models")
    exported = c.get("/api/usage?by=app,model")
    w.leak("/api/usage", exported.text)


def _cli(w: World) -> None:
    runner = CliRunner()
    values = {
        "a_provider": w.a.provider_name,
        "a_model": "alice-model",
        "a_alias": "alicealias",
        "a_app": "alice App",
        "a_granted_client": "",
    }

    async def granted_client() -> str:
        grant = await w.app.store.grants.get(w.a.grant_id)
        assert grant is not None
        return grant.client_id

    values["a_granted_client"] = w.app.run(granted_client)
    # the control: the same commands as A do reach A's objects (so a refusal below is
    # isolation, not a command that reaches nobody)
    env = {"COLUMNS": "200", **w.env}
    for argv, shown in (
        (["providers", "list"], w.a.provider_name),
        (["apps", "list"], "alice App"),
        (["wallet", "show"], "alice money"),
        (["apps", "policy", "alice Granted", "--show"], "month"),
    ):
        result = runner.invoke(cli_app, [*argv, "--user", "alice"], env=env)
        w.expect(f"control {argv}", result.exit_code == 0 and shown in result.output, result.output)
    for label, (expected, template) in CLI_ATTACKS.items():
        for ref in (
            [values["a_granted_client"], "alice Granted"]
            if "{a_granted_client}" in template
            else [None]
        ):
            args = [a.format(**{**values, "a_granted_client": ref or ""}) for a in template]
            argv = [*label.split(), *args, "--user", "bob"]
            result = runner.invoke(cli_app, argv, env={"COLUMNS": "200", **w.env})
            where = "keyfob " + " ".join(argv)
            if expected == "refused":
                w.expect(where, result.exit_code != 0, f"exit {result.exit_code}: {result.output}")
            elif expected == "own":
                w.expect(where, result.exit_code == 0, f"exit {result.exit_code}: {result.output}")
            w.expect(
                where,
                result.exception is None or isinstance(result.exception, SystemExit),
                repr(result.exception),
            )
            w.leak(where, result.output, *args)


def test_person_b_gets_nothing_of_person_a(world: World, up: FakeUpstream) -> None:
    w = world
    before = w.app.run(_a_state, w)
    _web(w)
    _oauth(w)
    _gateway(w, up)
    _cli(w)
    after = w.app.run(_a_state, w)
    names = (
        "providers",
        "prices",
        "limits",
        "aliases",
        "grants",
        "wallet",
        "apps",
        "token",
        "sessions",
        "person",
    )
    for name, old, new in zip(names, before, after, strict=True):
        w.expect(f"A's {name}", old == new, f"{old!r} -> {new!r}")
    # A's token still works, on A's provider
    try:
        with sdk(w.app, w.a.token) as client:
            answer = client.chat.completions.create(
                model="aliceprov/alice-model",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
            )
        w.expect("A's call", bool(answer.choices[0].message.content))
    except openai.APIError as exc:
        w.problems.append(f"A's own call afterwards: {exc}")
    assert w.problems == [], "\n".join(w.problems)
