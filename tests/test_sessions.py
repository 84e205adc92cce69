"""Server-side sessions (issue 11), attacked with copied cookies: logout, a password
change and "log out everywhere" end them; idle and absolute expiry; a new id at login;
only a hash of the id is stored; password hashing off the event loop, bounded."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.cookiejar import Cookie
from pathlib import Path

import pytest

from keyfob.accounts.hashing import HashingBusy, HashLimiter
from keyfob.accounts.passwords import hash_password
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.oauth_app import InProcess, hidden

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", session_idle_s=600, session_max_s=3600) as app:
        yield app


Jar = list[Cookie]


def jar_of(kf: InProcess) -> Jar:
    return [copy.copy(c) for c in kf.client.cookies.jar]


def sign_in(kf: InProcess, password: str = OWNER_PASSWORD) -> Jar:
    """A fresh browser that logs in; returns its cookies (what a thief would copy)."""
    kf.client.cookies.clear()
    answer = kf.browser().login(password=password)
    assert answer.status_code == 303, answer.text[:500]
    return jar_of(kf)


def use(kf: InProcess, jar: Jar) -> None:
    kf.client.cookies.clear()
    for cookie in jar:
        kf.client.cookies.jar.set_cookie(copy.copy(cookie))


def signed_in(kf: InProcess, jar: Jar) -> bool:
    use(kf, jar)
    answer = kf.client.get("/")
    assert answer.status_code in (200, 302, 303), answer.status_code
    return answer.status_code == 200


def session_id(jar: Jar) -> str:
    value = next(c.value for c in jar if c.name == "keyfob_session")
    assert value is not None
    payload = value.split(".", 1)[0]
    data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    return str(data["sid"])


def post_form(kf: InProcess, jar: Jar, page_path: str, action: str, **fields: str) -> object:
    use(kf, jar)
    page = kf.client.get(page_path)
    assert page.status_code == 200, page.text[:500]
    return kf.client.post(action, data={"csrf_token": hidden(page.text, "csrf_token"), **fields})


def test_logout_ends_the_session_for_a_copied_cookie(kf: InProcess) -> None:
    jar = sign_in(kf)
    stolen = list(jar)
    assert signed_in(kf, jar)
    answer = post_form(kf, jar, "/", "/logout")
    assert answer.status_code == 303  # type: ignore[attr-defined]
    assert not signed_in(kf, stolen)


def test_session_id_rotated_at_every_login(kf: InProcess) -> None:
    kf.client.cookies.clear()
    kf.client.get("/login")  # an anonymous session with a CSRF token
    before = jar_of(kf)
    with pytest.raises(KeyError):
        session_id(before)
    first = sign_in(kf)
    use(kf, first)
    again = kf.browser().login()
    assert again.status_code == 303
    second = jar_of(kf)
    assert session_id(first) != session_id(second)
    assert not signed_in(kf, first)  # the browser's previous session ended with it
    assert signed_in(kf, second)


def test_fixation_a_planted_cookie_is_not_promoted(kf: InProcess) -> None:
    """An attacker plants their own (logged-out) cookie in the victim's browser: the
    victim's login makes a new id, so the attacker's copy never becomes signed in."""
    kf.client.cookies.clear()
    kf.client.get("/login")
    planted = jar_of(kf)
    use(kf, planted)
    assert kf.browser().login().status_code == 303
    assert not signed_in(kf, planted)


def test_password_change_ends_every_other_session(kf: InProcess) -> None:
    laptop, thief = sign_in(kf), sign_in(kf)
    assert signed_in(kf, thief)
    answer = post_form(
        kf,
        laptop,
        "/settings",
        "/settings/password",
        current_password=OWNER_PASSWORD,
        new_password=NEW_PASSWORD,
        new_password_confirm=NEW_PASSWORD,
    )
    assert answer.status_code == 303  # type: ignore[attr-defined]
    renewed = jar_of(kf)
    assert session_id(renewed) != session_id(laptop)
    assert signed_in(kf, renewed)
    assert not signed_in(kf, thief) and not signed_in(kf, laptop)
    kf.client.cookies.clear()
    assert kf.browser().login(password=OWNER_PASSWORD).status_code == 401
    assert kf.browser().login(password=NEW_PASSWORD).status_code == 303


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"current_password": "wrong password!"}, "not your current password"),
        ({"new_password_confirm": "something else"}, "differ"),
        ({"new_password": "short", "new_password_confirm": "short"}, "at least 8"),
        (
            {"new_password": OWNER_PASSWORD, "new_password_confirm": OWNER_PASSWORD},
            "same as the current",
        ),
    ],
)
def test_password_change_refusals(kf: InProcess, fields: dict[str, str], error: str) -> None:
    jar, other = sign_in(kf), sign_in(kf)
    form = {
        "current_password": OWNER_PASSWORD,
        "new_password": NEW_PASSWORD,
        "new_password_confirm": NEW_PASSWORD,
        **fields,
    }
    answer = post_form(kf, jar, "/settings", "/settings/password", **form)
    assert answer.status_code == 400 and error in answer.text  # type: ignore[attr-defined]
    assert signed_in(kf, other)  # nothing changed


def test_password_change_needs_csrf_and_a_session(kf: InProcess) -> None:
    jar = sign_in(kf)
    use(kf, jar)
    form = {
        "current_password": OWNER_PASSWORD,
        "new_password": NEW_PASSWORD,
        "new_password_confirm": NEW_PASSWORD,
    }
    assert kf.client.post("/settings/password", data=form).status_code == 403
    kf.client.cookies.clear()
    assert kf.client.post("/settings/password", data=form).headers["location"].startswith("/login")


def test_guessing_the_current_password_is_throttled(kf: InProcess) -> None:
    jar = sign_in(kf)
    statuses = []
    for i in range(7):
        answer = post_form(
            kf,
            jar,
            "/settings",
            "/settings/password",
            current_password=f"guess number {i}",
            new_password=NEW_PASSWORD,
            new_password_confirm=NEW_PASSWORD,
        )
        statuses.append(answer.status_code)  # type: ignore[attr-defined]
    assert statuses[:5] == [400] * 5 and statuses[5:] == [429, 429], statuses


def test_log_out_everywhere(kf: InProcess) -> None:
    phone, laptop = sign_in(kf), sign_in(kf)
    page = post_form(kf, laptop, "/settings", "/settings/logout-everywhere")
    assert page.status_code == 303  # type: ignore[attr-defined]
    assert not signed_in(kf, phone) and not signed_in(kf, laptop)
    assert kf.run(kf.store.sessions.count_for_user, kf.owner.id) == 0


def age(kf: InProcess, jar: Jar, *, idle_s: float = 0, created_s: float = 0) -> None:
    """Move a session back in time, as if its browser had gone quiet."""
    from sqlalchemy import update

    from keyfob.store import schema as t

    digest = hashlib.sha256(session_id(jar).encode()).hexdigest()

    async def go() -> None:
        now = time.time()
        async with kf.store.engine.begin() as conn:
            await conn.execute(
                update(t.web_sessions)
                .where(t.web_sessions.c.id_hash == digest)
                .values(last_seen_at=now - idle_s, created_at=now - created_s)
            )

    kf.run(go)


def test_idle_expiry(kf: InProcess) -> None:
    jar = sign_in(kf)
    age(kf, jar, idle_s=599)
    assert signed_in(kf, jar)  # and that request counts as activity
    age(kf, jar, idle_s=601)
    assert not signed_in(kf, jar)
    assert kf.run(kf.store.sessions.count_for_user, kf.owner.id) == 0  # deleted on sight


def test_absolute_expiry_even_when_active(kf: InProcess) -> None:
    jar = sign_in(kf)
    age(kf, jar, idle_s=1, created_s=3601)
    assert not signed_in(kf, jar)


def test_only_a_hash_of_the_session_id_is_stored(kf: InProcess) -> None:
    jar = sign_in(kf)
    sid = session_id(jar)
    raw = b"".join(p.read_bytes() for p in kf.data_dir.glob("keyfob.db*"))
    assert sid.encode() not in raw
    assert hashlib.sha256(sid.encode()).hexdigest().encode() in raw


def test_settings_page_needs_a_session(kf: InProcess) -> None:
    kf.client.cookies.clear()
    answer = kf.client.get("/settings")
    assert answer.status_code in (302, 303) and answer.headers["location"].startswith("/login")


# --- hashing off the loop ---------------------------------------------------------------


def test_hashes_run_off_the_loop_one_at_a_time() -> None:
    """While hashes run, the loop keeps ticking; never more than ``concurrent`` at once;
    beyond the queue, callers are turned away at once."""
    limiter = HashLimiter(concurrent=1, queue_max=3, processes=False)
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow_hash(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return hash_password(password)
        finally:
            with lock:
                running -= 1

    async def go() -> tuple[list[object], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(limiter.run(slow_hash, "long enough password") for _ in range(6)),
            return_exceptions=True,
        )
        stop.set()
        await tick_task
        return results, ticks

    results, ticks = asyncio.run(go())
    busy = [r for r in results if isinstance(r, HashingBusy)]
    done = [r for r in results if isinstance(r, str)]
    assert len(done) == 4 and len(busy) == 2  # 1 running + 3 waiting; 2 turned away
    assert peak == 1
    assert ticks >= 10  # the loop ran while four hashes (~50 ms each) were computed


def test_login_flood_is_bounded(kf: InProcess) -> None:
    """A burst of logins beyond the queue gets 503 with Retry-After, never a hang."""
    kf.app.state.kf_hash_limiter = HashLimiter(concurrent=1, queue_max=0)

    async def flood() -> list[int]:
        import httpx

        transport = httpx.ASGITransport(app=kf.app)
        async with httpx.AsyncClient(transport=transport, base_url=kf.url) as client:
            page = await client.get("/login")
            csrf = hidden(page.text, "csrf_token")

            async def one(i: int) -> int:
                answer = await client.post(
                    "/login",
                    data={"csrf_token": csrf, "username": f"user{i}", "password": "x" * 12},
                )
                return answer.status_code

            return list(await asyncio.gather(*(one(i) for i in range(6))))

    statuses = kf.run(flood)
    assert 503 in statuses and set(statuses) <= {401, 503}, statuses
    assert OWNER  # the owner's account is untouched by a flood of unknown names
