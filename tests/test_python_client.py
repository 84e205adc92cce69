"""The Python helper for apps (clients/python, ``keyfob_client``) against a real Keyfob
server and fakellm: the device flow with its token cache (0600), the official openai
and anthropic SDKs through its factories, refresh before expiry and after a 401 (httpx
and requests), sign-out, and the package installing on its own."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.oauth_app import Browser
from tests.support import FakeLLM, KeyfobServer, cli

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "python"
sys.path.insert(0, str(CLIENT / "src"))  # this checkout's copy, as PYTHONPATH does for keyfob

from keyfob_client import DeviceCode, Keyfob, KeyfobError, MemoryCache, TokenCache  # noqa: E402

MODEL = "fake/gpt-4o-mini"


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, owned_template: Path, fakellm: FakeLLM
) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("pyclient") / "keyfob-data"
    shutil.copytree(owned_template, data)
    server = KeyfobServer(data).start()
    try:
        cli(
            data,
            "providers",
            "add",
            "fake",
            "--base-url",
            fakellm.base_url,
            "-m",
            "gpt-4o-mini",
            KEYFOB_PROVIDER_KEY="sk-test-upstream",
        )
        added = cli(data, "apps", "add", "Summariser", "--redirect-uri", "http://127.0.0.1/cb")
        client_id = re.search(r"client_id: (\S+)", added.stdout).group(1)  # type: ignore[union-attr]
        yield {"server": server, "client_id": client_id}
    finally:
        server.stop()


def approve(server: KeyfobServer, code: DeviceCode, cap_usd: str = "1") -> None:
    """The person: logs in on Keyfob, types the code, allows."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        browser = Browser(http, "")
        assert browser.login().status_code == 303
        answer = browser.approve_device(code.user_code, cap_usd=cap_usd)
        assert answer.status_code == 200, answer.text[:500]


@pytest.fixture(scope="module")
def signed_in(live: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyfob]:
    cache = TokenCache(tmp_path_factory.mktemp("config") / "keyfob" / "tokens.json")
    kf = Keyfob(live["server"].url, live["client_id"], cache=cache)
    shown: list[DeviceCode] = []

    def on_code(code: DeviceCode) -> None:
        shown.append(code)
        approve(live["server"], code)

    tokens = kf.sign_in(on_code=on_code, suggest={"cap_usd": "1", "window": "month"})
    assert len(shown) == 1 and tokens.access_token.startswith("kfat_")
    with kf:
        yield kf


def test_device_flow_caches_tokens_0600(signed_in: Keyfob, live: dict[str, Any]) -> None:
    path = signed_in.cache.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["access_token"].startswith("kfat_") and entry["refresh_token"].startswith("kfrt_")
    tokens = signed_in.tokens()
    assert tokens is not None and "kf" not in repr(tokens)  # never printed by accident
    # another run of the CLI: the cache answers, no new code is asked for
    with Keyfob(live["server"].url, live["client_id"], cache=TokenCache(path)) as again:
        assert again.sign_in(on_code=lambda c: pytest.fail("asked for a code")) == tokens


def test_openai_factory_calls_the_gateway(signed_in: Keyfob) -> None:
    client = signed_in.openai(max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.parse().choices[0].message.content.startswith("Hi there")  # type: ignore[union-attr]
    assert float(raw.headers["x-keyfob-cost-usd"]) > 0
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    assert "Hi there" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    client.close()


def test_async_openai_and_anthropic_factories(signed_in: Keyfob) -> None:
    async def go() -> str:
        client = signed_in.async_openai(max_retries=0)
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        await client.close()
        return answer.choices[0].message.content or ""

    assert asyncio.run(go()).startswith("Hi there")
    with signed_in.anthropic(max_retries=0) as anthropic:
        message = anthropic.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hello"}]
        )
    assert message.content[0].text.startswith("Hi there")  # type: ignore[union-attr]


def test_refresh_before_expiry_and_after_a_401(signed_in: Keyfob, live: dict[str, Any]) -> None:
    server = live["server"]
    before = signed_in.tokens()
    assert before is not None
    # close to expiry: refreshed before the call (the refresh token rotates)
    signed_in.cache.set(signed_in._key, type(before)(**{**before.__dict__, "expires_at": 0.0}))
    with httpx.Client(auth=signed_in.auth()) as http:
        assert http.get(f"{server.url}/v1/models").status_code == 200
    after = signed_in.tokens()
    assert after is not None and after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token

    # the access token refused (revoked or expired early): one refresh, then a retry
    for call in ("httpx", "requests"):
        current = signed_in.tokens()
        assert current is not None
        dead = type(current)(**{**current.__dict__, "access_token": "kfat_revoked"})
        signed_in.cache.set(signed_in._key, dead)
        if call == "httpx":
            with httpx.Client(auth=signed_in.auth()) as http:
                answer = http.get(f"{server.url}/v1/keyfob/allowance")
            assert answer.status_code == 200 and answer.history[0].status_code == 401
        else:
            with requests.Session() as session:
                r = session.get(
                    f"{server.url}/v1/keyfob/allowance", auth=signed_in.requests_auth(), timeout=30
                )
            assert r.status_code == 200 and r.history[0].status_code == 401
        latest = signed_in.tokens()
        assert latest is not None and latest.access_token.startswith("kfat_")
        assert latest.access_token != "kfat_revoked"
        assert latest.refresh_token != current.refresh_token  # rotated


def test_quote_and_allowance(signed_in: Keyfob) -> None:
    quote = signed_in.quote({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert quote["allowed"] is True and quote["model"] == MODEL
    limits = signed_in.allowance()["limits"]
    assert limits and limits[0]["cap_usd"] in ("1", "1.00", "1.000000")


def test_exhausted_allowance_is_a_keyfob_error_that_says_do_not_retry(
    live: dict[str, Any],
) -> None:
    kf = Keyfob(live["server"].url, live["client_id"], cache=MemoryCache())
    kf.sign_in(on_code=lambda code: approve(live["server"], code, cap_usd="0.000001"))
    quote = kf.quote({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert quote["allowed"] is False  # quote first: the app can tell the person before trying
    with pytest.raises(KeyfobError) as caught, kf:
        kf._api(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert caught.value.status == 429
    assert caught.value.should_retry is False
    assert caught.value.resets_at


def test_sign_out_revokes_the_family(live: dict[str, Any]) -> None:
    kf = Keyfob(live["server"].url, live["client_id"], cache=MemoryCache())
    tokens = kf.sign_in(on_code=lambda code: approve(live["server"], code))
    kf.sign_out()
    kf.close()
    assert kf.tokens() is None
    answer = httpx.get(
        f"{live['server'].url}/v1/models",
        headers={"Authorization": f"Bearer {tokens.access_token}"},
    )
    assert answer.status_code == 401
    with pytest.raises(KeyfobError) as caught:
        kf.access_token()
    assert caught.value.code == "not_signed_in"


def test_device_polling_follows_rfc8628() -> None:
    """authorization_pending waits the interval, slow_down adds 5 s, denial raises."""
    answers = iter(
        [
            (400, {"error": "authorization_pending"}),
            (400, {"error": "slow_down"}),
            (400, {"error": "authorization_pending"}),
            (200, {"access_token": "kfat_x", "refresh_token": "kfrt_x", "expires_in": 3600}),
            (400, {"error": "access_denied", "error_description": "the person said no"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/.well-known"):
            return httpx.Response(200, json={"token_endpoint": "http://kf.test/oauth/token"})
        form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
        assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"
        status, body = next(answers)
        return httpx.Response(status, json=body)

    slept: list[float] = []
    kf = Keyfob(
        "http://kf.test",
        "kfapp_x",
        cache=MemoryCache(),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=slept.append,
    )
    code = DeviceCode("kfdc_x", "BCDF-GHJK", "http://kf.test/device", None, 600, 5)
    with kf:
        assert kf.finish_device_flow(code).access_token == "kfat_x"
        assert slept == [5, 5, 10, 10]
        with pytest.raises(KeyfobError) as caught:
            kf.finish_device_flow(code)
    assert caught.value.code == "access_denied"


def test_token_cache_file_is_private_from_the_first_byte(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "cfg" / "tokens.json")
    assert cache.get("k") is None
    cache.path.parent.mkdir(mode=0o700)
    cache.path.write_text("{not json")
    assert cache.get("k") is None  # a damaged cache means signing in again
    from keyfob_client import Tokens

    cache.set("k", Tokens("kfat_a", "kfrt_a", time.time() + 60))
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert cache.get("k") == Tokens("kfat_a", "kfrt_a", cache.get("k").expires_at)  # type: ignore[union-attr]
    cache.set("k", None)
    assert cache.get("k") is None
    assert not list(cache.path.parent.glob(".tokens-*"))  # no temporary file left


def test_the_package_installs_on_its_own(tmp_path: Path) -> None:
    """Built offline with the build tools at hand (``make install`` installs it with
    pip's usual isolated build, which CI runs)."""
    try:
        import setuptools
        import wheel  # noqa: F401 (setuptools needs it to build without isolation)
    except ImportError:
        pytest.skip("no wheel package to build offline; `make install` builds it")
    if int(setuptools.__version__.split(".")[0]) < 69:
        pytest.skip("setuptools < 69 here; `make install` builds it in isolation")
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(CLIENT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "keyfob_client" / "py.typed").exists()
    check = subprocess.run(
        [sys.executable, "-c", "import keyfob_client, sys; print(keyfob_client.__file__)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(target))
