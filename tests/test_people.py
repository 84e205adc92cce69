"""Many people on one Keyfob (issue 12, People): roles, signup by mode and invite code,
password links from an admin, disabling (grants refused on the next call), app
verification on consent, usage per person for admins (never a key), the `keyfob users`
CLI, the hosted bootstrap, and personal mode as before. SQLite, and PostgreSQL in
hosted mode."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient
from typer.testing import CliRunner

from keyfob.cli import app as cli_app
from keyfob.server import create_app
from keyfob.settings import Settings, UnsafeSettings
from keyfob.settings_checks import check_safe
from keyfob.store import Store, prepare_sqlite_file
from keyfob.store.migrate import alembic_config
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import sdk
from tests.oauth_app import OWNER, OWNER_PASSWORD, InProcess, hidden, pkce
from tests.people_support import (
    MASTER_KEY,
    PASSWORD,
    SESSION_KEYS,
    add_person,
    csrf,
    hosted,
    pg_database,
    seed_person,
    sign_in,
    use,
)


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProcess]:
    """Personal mode on SQLite, or hosted mode on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        with InProcess(tmp_path / "data") as kf:
            yield kf
        return
    with pg_database() as url, hosted(tmp_path / "data", url) as kf:
        yield kf


def secret_of(html: str) -> str:
    m = re.search(r'<p class="secret" id="secret">([^<]+)</p>', html)
    assert m, html[:2000]
    return unescape(m.group(1)).strip()


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def post(app: InProcess, path: str, page: str = "/admin", **data: Any) -> Any:
    return app.client.post(path, data={"csrf_token": csrf(app, page), **data})


def cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli_app, list(args), env={"COLUMNS": "200", **env})
    assert result.exit_code == code, result.output
    return result.output


# --- migration ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migration_makes_the_owner_an_admin_and_keeps_apps_verified(
    engine: str, tmp_path: Path
) -> None:
    def at_0011(url: str) -> None:
        async def go() -> None:
            e = create_async_engine(url)
            async with e.begin() as conn:

                def up_to(sync: Any) -> None:
                    cfg = alembic_config()
                    cfg.attributes["connection"] = sync
                    command.upgrade(cfg, "0011")

                await conn.run_sync(up_to)
                yes = True
                await conn.execute(
                    sa.text(
                        "INSERT INTO users (id, username, password_hash, is_owner, created_at) "
                        "VALUES ('u1', 'owner', 'x', :yes, 1)"
                    ).bindparams(yes=yes)
                )
                for cid, kind in (("kfapp_old", "registered"), ("dyn", "dynamic")):
                    await conn.execute(
                        sa.text(
                            "INSERT INTO clients (id, name, redirect_uris_json, is_public, "
                            "created_at, kind) VALUES (:id, 'n', '[]', :yes, 5, :kind)"
                        ).bindparams(id=cid, yes=yes, kind=kind)
                    )
            await e.dispose()
            store = await Store.open(url)  # applies 0018 and 0019
            try:
                owner = await store.users.owner()
                assert owner is not None and owner.role == "admin" and owner.is_admin
                old = await store.clients.get("kfapp_old")
                dyn = await store.clients.get("dyn")
                assert old is not None and old.verified and old.registered_by == "u1"
                assert dyn is not None and not dyn.verified and dyn.registered_by is None
                assert await store.people.invites() == []
                # one owner, as a rule of the database
                with pytest.raises(sa.exc.IntegrityError):
                    await store.users.create("second", "x", is_owner=True)
            finally:
                await store.close()

        asyncio.run(go())

    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
        prepare_sqlite_file(url)
        at_0011(url)
    else:
        with pg_database() as url:
            at_0011(url)


# --- password links, people pages -----------------------------------------------------


def test_admin_adds_a_person_who_sets_a_password_once(
    app: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = sign_in(app, OWNER, OWNER_PASSWORD)
    people = app.client.get("/admin")
    assert people.status_code == 200 and 'data-person="owner"' in people.text
    bad = post(app, "/admin/people", username="no spaces allowed")
    assert bad.status_code == 400 and 'id="username-error"' in bad.text
    made = post(app, "/admin/people", username="carol", role="member")
    assert made.status_code == 200 and "Added carol (member)." in made.text
    link = secret_of(made.text)
    code = link.split("code=", 1)[1]
    assert link.startswith(app.settings.issuer + "/password?code=kfpw_")
    # the person opens it: the code leaves the address bar, the form names them
    app.new_session()
    moved = app.client.get(path_of(link))
    assert moved.status_code == 303 and moved.headers["location"] == "/password"
    form = app.client.get("/password")
    assert form.status_code == 200 and "carol" in form.text
    short = app.client.post(
        "/password",
        data={
            "csrf_token": hidden(form.text, "csrf_token"),
            "new_password": "x",
            "new_password_confirm": "x",
        },
    )
    assert short.status_code == 400 and 'id="new_password-error"' in short.text
    done = app.client.post(
        "/password",
        data={
            "csrf_token": hidden(short.text, "csrf_token"),
            "new_password": PASSWORD,
            "new_password_confirm": PASSWORD,
        },
    )
    assert done.status_code == 303
    assert "Your password is set" in app.client.get("/").text
    carol_jar = dict(app.client.cookies)
    # used once: the same link again is refused
    app.new_session()
    app.client.get(path_of(link))
    assert app.client.get("/password").status_code == 400
    # a reset: a newer link voids the older, and using it ends carol's sessions
    use(app, admin)
    carol = app.run(app.store.users.by_username, "carol")
    first = secret_of(post(app, f"/admin/people/{carol.id}/reset").text)
    second = secret_of(post(app, f"/admin/people/{carol.id}/reset").text)
    app.new_session()
    app.client.get(path_of(first))
    assert app.client.get("/password").status_code == 400
    app.client.get(path_of(second))
    page = app.client.get("/password")
    new = "a brand new passphrase"
    assert (
        app.client.post(
            "/password",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "new_password": new,
                "new_password_confirm": new,
            },
        ).status_code
        == 303
    )
    use(app, carol_jar)
    assert app.client.get("/").status_code == 302  # that older session ended
    sign_in(app, "carol", new)
    # no code in any log at any level (the test's own HTTP client logs the URLs it
    # opens, as a browser's history would), and only hashes in the database
    logged = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("httpx")
    )
    for c in (code, first.split("code=")[1], second.split("code=")[1]):
        assert c not in logged

    async def stored() -> list[Any]:
        async with app.store.engine.connect() as conn:
            return list((await conn.execute(sa.text("SELECT * FROM password_resets"))).all())

    rows = app.run(stored)
    assert len(rows) == 3 and not any(code in str(r) for r in rows)
    # a member is refused every admin page
    assert app.client.get("/admin").status_code == 403
    assert post(app, "/admin/people", page="/settings", username="mallory").status_code == 403


def test_disabling_a_person_refuses_their_grants_on_the_next_call(
    app: InProcess, up: FakeUpstream
) -> None:
    dave = add_person(app, "dave")
    seeded = seed_person(app, dave, up.url("dave") + "/v1", "dave")
    model = f"{seeded.provider_name}/dave-model"
    dave_jar = sign_in(app, "dave")
    with sdk(app, seeded.token) as client:
        ok = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert ok.choices[0].message.content
        served = len(up.bodies("dave"))
        admin = sign_in(app, OWNER, OWNER_PASSWORD)
        confirm = app.client.get(f"/admin/people/{dave.id}/disable")
        assert confirm.status_code == 200 and "Disable dave?" in confirm.text
        done = app.client.post(
            f"/admin/people/{dave.id}/disable",
            data={"csrf_token": hidden(confirm.text, "csrf_token")},
        )
        assert done.status_code == 303
        assert "Disabled dave; 1 grant(s) revoked, sessions ended." in app.client.get("/admin").text
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    assert len(up.bodies("dave")) == served  # the refused call never went upstream
    use(app, dave_jar)
    assert app.client.get("/").status_code == 302  # session ended
    form = app.client.get("/login")
    refused = app.client.post(
        "/login",
        data={
            "csrf_token": hidden(form.text, "csrf_token"),
            "username": "dave",
            "password": PASSWORD,
        },
    )
    assert refused.status_code == 403 and "disabled" in refused.text
    # the last admin stays one; an admin cannot disable themselves
    use(app, admin)
    owner = app.run(app.store.users.owner)
    token = csrf(app, "/admin")  # one GET: every page shows (and clears) the messages
    app.client.post(f"/admin/people/{owner.id}/disable", data={"csrf_token": token})
    demote = app.client.post(
        f"/admin/people/{owner.id}/role", data={"csrf_token": token, "role": "member"}
    )
    assert demote.status_code == 303
    after = app.client.get("/admin").text
    assert "You cannot disable yourself" in after and "last active admin" in after
    assert app.run(app.store.users.owner).is_admin
    # enabled again: login works, the grant stays revoked
    assert post(app, f"/admin/people/{dave.id}/enable").status_code == 303
    sign_in(app, "dave")
    grant = app.run(app.store.grants.get, seeded.grant_id)
    assert grant is not None and grant.revoked_at is not None


def test_member_app_is_unverified_on_consent_until_an_admin_verifies_it(
    tmp_path: Path,
) -> None:
    with InProcess(tmp_path / "data") as app:
        add_person(app, "erin")
        add_person(app, "frank")
        sign_in(app, "erin")
        new = app.client.get("/apps/new")
        assert new.status_code == 200
        made = app.client.post(
            "/apps/new",
            data={
                "csrf_token": hidden(new.text, "csrf_token"),
                "name": "Erin Notes",
                "redirect_uris": "https://notes.example/cb",
                "client_type": "public",
            },
        )
        assert made.status_code == 200 and "Registered Erin Notes." in made.text
        client_id = re.search(r"(kfapp_[0-9a-f]+)", made.text).group(1)  # type: ignore[union-attr]
        _, challenge = pkce()
        url = app.authorize_url(client_id, "https://notes.example/cb", challenge)
        assert "you registered this app" in app.client.get(url).text
        sign_in(app, "frank")
        consent = app.client.get(url).text
        assert 'data-verified="no"' in consent and "a person using this Keyfob" in consent
        assert "erin" not in consent.lower().replace("erin notes", "")
        sign_in(app, OWNER, OWNER_PASSWORD)
        listing = app.client.get("/admin/apps").text
        assert "Erin Notes" in listing and ">erin<" in listing
        answer = post(
            app, "/admin/apps/verify", page="/admin/apps", client_id=client_id, verified="yes"
        )
        assert answer.status_code == 303
        assert "Erin Notes is verified" in app.client.get("/admin/apps").text
        sign_in(app, "frank")
        assert 'data-verified="yes"' in app.client.get(url).text
    # the CLI: an app registered for a member is not verified; the owner's is
    env = {"KEYFOB_DATA_DIR": str(tmp_path / "data")}
    cli(env, "apps", "add", "Frank CLI", "-r", "http://127.0.0.1/cb", "--user", "frank")
    cli(env, "apps", "add", "Owner CLI", "-r", "http://127.0.0.1/cb")
    assert "Frank CLI" in cli(env, "apps", "list", "--user", "frank")
    assert "Frank CLI" not in cli(env, "apps", "list", "--user", "erin")

    async def check() -> None:
        store = await Store.open(Settings(data_dir=tmp_path / "data").effective_database_url)
        try:
            by_name = {c.name: c for c in await store.clients.list()}
            frank = await store.users.by_username("frank")
            assert by_name["Frank CLI"].registered_by == frank.id  # type: ignore[union-attr]
            assert not by_name["Frank CLI"].verified and by_name["Owner CLI"].verified
        finally:
            await store.close()

    asyncio.run(check())


def test_admin_sees_usage_per_person_never_their_keys(app: InProcess, up: FakeUpstream) -> None:
    people = {name: add_person(app, name) for name in ("gina", "hank")}
    seeded = {
        name: seed_person(app, user, up.url(name) + "/v1", name) for name, user in people.items()
    }
    for name, s in seeded.items():
        with sdk(app, s.token) as client:
            for _ in range(2 if name == "gina" else 1):
                client.chat.completions.create(
                    model=f"{s.provider_name}/{name}-model",
                    messages=[{"role": "user", "content": "hello"}],
                    max_tokens=5,
                )
    sign_in(app, OWNER, OWNER_PASSWORD)
    page = app.client.get("/admin/usage?range=all").text
    for name, user in people.items():
        entries = app.run(app.store.ledger.entries, user_id=user.id)
        cost = sum(e.cost_micro_usd or 0 for e in entries)
        row = re.search(
            rf'<tr data-person="{name}">.*?data-label="Calls" class="num">(\d+)</td>.*?'
            rf'data-cost-micro="(\d+)"',
            page,
            re.S,
        )
        assert row is not None and int(row.group(1)) == len(entries) == (2 if name == "gina" else 1)
        assert int(row.group(2)) == cost > 0
    for s in seeded.values():
        assert s.api_key not in page and s.provider_name not in page and "Granted" not in page
    for tab in ("/admin", "/admin/apps", "/admin/invites", "/admin/usage?range=week"):
        text = app.client.get(tab).text
        assert not any(s.api_key in text for s in seeded.values())
    sign_in(app, "gina")
    assert app.client.get("/admin/usage").status_code == 403


# --- signup modes (hosted, PostgreSQL) ------------------------------------------------


@pytest.mark.parametrize("mode", ["closed", "invite", "open"])
def test_signup_modes(mode: str, tmp_path: Path) -> None:
    with pg_database() as url, hosted(tmp_path / "data", url, signup=mode) as app:
        app.new_session()
        login = app.client.get("/login").text
        assert ('id="signup-link"' in login) == (mode != "closed")
        page = app.client.get("/signup")
        assert page.status_code == 200

        def signup(name: str, code: str = "", jar: bool = True) -> Any:
            if jar:
                app.new_session()
            form = app.client.get("/signup")
            return app.client.post(
                "/signup",
                data={
                    "csrf_token": hidden(form.text, "csrf_token"),
                    "username": name,
                    "password": PASSWORD,
                    "password_confirm": PASSWORD,
                    "timezone": "Europe/Paris",
                    "invite_code": code,
                },
            )

        if mode == "closed":
            assert 'id="closed"' in page.text
            assert app.client.post("/signup", data={"csrf_token": "x"}).status_code == 403
            assert app.run(app.store.users.by_username, "ivan") is None
            return
        if mode == "open":
            made = signup("ivan")
            assert made.status_code == 303
            assert "Welcome, ivan" in app.client.get("/").text
            ivan = app.run(app.store.users.by_username, "ivan")
            assert ivan.role == "member" and ivan.timezone == "Europe/Paris"
            taken = signup("ivan")
            assert taken.status_code == 400 and 'id="username-error"' in taken.text
            return
        # invite: codes from the admin page, N uses, expiry, revocation, stored hashed
        assert 'id="invite_code"' in page.text
        sign_in(app, OWNER, OWNER_PASSWORD)
        bad = post(app, "/admin/invites", page="/admin/invites", uses="many", ttl="86400")
        assert bad.status_code == 400 and 'id="uses-error"' in bad.text
        two = secret_of(
            post(app, "/admin/invites", page="/admin/invites", uses="2", ttl="86400").text
        )
        code = two.split("code=", 1)[1]
        assert code.startswith("kfiv_")
        none = signup("judy")
        assert none.status_code == 400 and 'id="invite_code-error"' in none.text
        wrong = signup("judy", "kfiv_not-a-code")
        assert wrong.status_code == 400 and "not valid" in wrong.text
        # the link carries the code into the form (and out of the address bar)
        app.new_session()
        moved = app.client.get(path_of(two))
        assert moved.status_code == 303
        assert f'value="{code}"' in app.client.get("/signup").text
        assert signup("judy", code, jar=False).status_code == 303
        assert signup("karl", code).status_code == 303
        used_up = signup("lena", code)
        assert used_up.status_code == 400 and "used up" in used_up.text
        assert app.run(app.store.users.by_username, "lena") is None

        async def rows() -> list[Any]:
            async with app.store.engine.connect() as conn:
                return list((await conn.execute(sa.text("SELECT * FROM invites"))).all())

        assert not any(code in str(r) for r in app.run(rows))
        # revoked and expired invites refuse
        sign_in(app, OWNER, OWNER_PASSWORD)
        other = secret_of(
            post(app, "/admin/invites", page="/admin/invites", uses="5", ttl="0").text
        )
        invite = app.run(app.store.people.invites)[0]
        confirm = app.client.get(f"/admin/invites/{invite.id}/revoke")
        assert confirm.status_code == 200 and "Revoke this invite?" in confirm.text
        post(app, f"/admin/invites/{invite.id}/revoke", page="/admin/invites")
        assert "revoked" in app.client.get("/admin/invites").text
        assert signup("lena", other.split("code=")[1]).status_code == 400

        async def expire() -> None:
            async with app.store.engine.begin() as conn:
                await conn.execute(sa.text("UPDATE invites SET expires_at = 1"))

        sign_in(app, OWNER, OWNER_PASSWORD)
        fresh = secret_of(
            post(app, "/admin/invites", page="/admin/invites", uses="1", ttl="86400").text
        )
        app.run(expire)
        assert signup("lena", fresh.split("code=")[1]).status_code == 400


def test_hosted_setup_needs_its_token_and_closes_once_an_admin_exists(tmp_path: Path) -> None:
    token = "a-setup-token-of-enough-length"
    with pg_database() as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            mode="hosted",
            database_url=url,
            master_key=MASTER_KEY,
            session_keys=SESSION_KEYS,
            public_url="http://127.0.0.1:8787",
            setup_token=token,
        )
        with TestClient(
            create_app(settings), base_url=settings.issuer, follow_redirects=False
        ) as c:
            assert c.get("/").headers["location"] == "/setup"
            assert c.get("/setup").status_code == 403
            assert c.get("/setup?token=wrong-token-of-enough-length").status_code == 403
            env = {
                "KEYFOB_DATABASE_URL": url,
                "KEYFOB_MASTER_KEY": MASTER_KEY,
                "KEYFOB_DATA_DIR": str(tmp_path / "cli"),
            }
            out = cli(env, "users", "add", "root", "--admin")
            assert "Added root, admin (the owner)." in out and "/password?code=kfpw_" in out
            # the right token no longer opens it
            assert c.get(f"/setup?token={token}").headers["location"] == "/login"
            assert c.get("/setup").headers["location"] == "/login"
            assert c.get("/login").status_code == 200
            link = re.search(r"(/password\?code=\S+)", out).group(1)  # type: ignore[union-attr]
            c.get(link)
            form = c.get("/password")
            assert "root" in form.text
            done = c.post(
                "/password",
                data={
                    "csrf_token": hidden(form.text, "csrf_token"),
                    "new_password": PASSWORD,
                    "new_password_confirm": PASSWORD,
                },
            )
            assert done.status_code == 303
            assert 'href="/admin"' in c.get("/").text


def test_personal_mode_stays_closed() -> None:
    with pytest.raises(UnsafeSettings, match="signup is for hosted mode"):
        check_safe(Settings(signup="open"))
    with pytest.raises(UnsafeSettings, match="KEYFOB_SIGNUP is one of"):
        check_safe(Settings(signup="public"))
    check_safe(Settings())


def test_users_cli(tmp_path: Path) -> None:
    with InProcess(tmp_path / "data"):
        pass
    env = {"KEYFOB_DATA_DIR": str(tmp_path / "data")}
    out = cli(env, "users", "add", "mia")
    assert "Added mia, member." in out and "/password?code=kfpw_" in out
    assert "Added ned, admin." in cli(
        {**env, "KEYFOB_PASSWORD": PASSWORD}, "users", "add", "ned", "--admin"
    )
    assert "is taken" in cli(env, "users", "add", "mia", code=1)
    assert "username is 1-64" in cli(env, "users", "add", "bad name", code=1)
    listing = cli(env, "users", "list")
    assert re.search(r"owner \(owner\)\s+│\s+admin", listing) and re.search(
        r"mia\s+│\s+member", listing
    )
    assert "mia is now admin." in cli(env, "users", "set-role", "mia", "admin")
    assert "a role is admin or member" in cli(env, "users", "set-role", "mia", "boss", code=1)
    assert "nobody named 'zed'" in cli(env, "users", "disable", "zed", code=1)
    assert "Disabled mia: 0 grant(s) revoked" in cli(env, "users", "disable", "mia")
    assert "mia is disabled" in cli(env, "users", "reset-password", "mia", code=1)
    assert "mia is disabled" in cli(env, "providers", "list", "--user", "mia", code=1)
    assert "Enabled mia." in cli(env, "users", "enable", "mia")
    assert "/password?code=kfpw_" in cli(env, "users", "reset-password", "mia")
    assert "Ended 0 session(s) of mia." in cli(env, "users", "logout", "mia")
    for name in ("mia", "ned"):
        cli(env, "users", "set-role", name, "member")
    assert "last active admin" in cli(env, "users", "set-role", "owner", "member", code=1)
    assert "last active admin" in cli(env, "users", "disable", "owner", code=1)
    made = cli(env, "users", "invite", "create", "--uses", "3", "--expires", "2d", "--note", "team")
    assert "/signup?code=kfiv_" in made and "KEYFOB_SIGNUP=invite" in made
    invite_id = re.search(r"Invite ([0-9a-f]{32})", made).group(1)  # type: ignore[union-attr]
    assert re.search(r"team\s+│\s+0/3", cli(env, "users", "invite", "list"))
    assert "revoked" in cli(env, "users", "invite", "revoke", invite_id)
    assert "no usable invite" in cli(env, "users", "invite", "revoke", invite_id, code=1)
    assert "is not a duration" in cli(env, "users", "invite", "create", "--expires", "soon", code=1)
