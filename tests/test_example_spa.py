"""The proof for browser-only apps, in Debian's Chromium: the example chat app
(examples/browser-chat), served on one loopback port, signs in on Keyfob (another port)
with PKCE, calls chat streamed and not with the official ``openai`` JS SDK running in the
page, and shows the answer, its cost and the allowance left; the same app served on an
origin the app never registered is refused by the browser, and nothing is charged."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import browser, missing, screenshot
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli, free_port, ledger_rows, wait_http

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "browser-chat"
MODEL = "fake/gpt-4o-mini"
USD = re.compile(r"\$\d+\.\d+")


def ledger(data_dir: Path) -> list[dict[str, Any]]:
    """The ledger, read from another thread: Playwright's sync API runs an event loop
    in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ledger_rows, data_dir).result()


def serve_example(port: int, keyfob: str, client_id: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE / "serve.py"),
            "--port",
            str(port),
            "--keyfob",
            keyfob,
            "--client-id",
            client_id,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/config.json", proc=proc)
    return proc


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def app(server: KeyfobServer, fakellm: FakeLLM) -> Iterator[dict[str, Any]]:
    if not (EXAMPLE / "node_modules" / "openai" / "index.mjs").exists():
        missing("the example's openai SDK is not installed (make browser)")
    cli(
        server.data_dir,
        "providers",
        "add",
        "fake",
        "--base-url",
        fakellm.base_url,
        "-m",
        "gpt-4o-mini",
        KEYFOB_PROVIDER_KEY="sk-test-upstream",
    )
    registered, foreign = free_port(), free_port()
    added = cli(
        server.data_dir,
        "apps",
        "add",
        "Browser Chat",
        "--redirect-uri",
        f"http://127.0.0.1:{registered}/",
    ).stdout
    client_id = re.search(r"client_id: (\S+)", added).group(1)  # type: ignore[union-attr]
    procs = [serve_example(p, server.url, client_id) for p in (registered, foreign)]
    try:
        yield {
            "origin": f"http://127.0.0.1:{registered}",
            "foreign": f"http://127.0.0.1:{foreign}",
            "client_id": client_id,
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def sign_in(page: Any, app: dict[str, Any]) -> None:
    page.goto(app["origin"] + "/")
    page.wait_for_selector("#status[data-state=signed-out]")
    page.click("#sign-in")
    page.wait_for_selector("#username")  # Keyfob's login page, on Keyfob's origin
    page.fill("#username", OWNER)
    page.fill("#password", OWNER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("button[value=approve]")  # the consent page names the app
    assert "Browser Chat" in page.content()
    page.click("button[value=approve]")
    page.wait_for_selector("#status[data-state=signed-in]", timeout=20_000)
    assert page.url == app["origin"] + "/"  # code, state and iss removed from the address


def ask(page: Any, prompt: str, *, stream: bool) -> dict[str, str]:
    page.fill("#prompt", prompt)
    page.set_checked("#stream", stream)
    page.click("#send")
    page.wait_for_selector("#status[data-state=answered], #status[data-state=failed]")
    assert page.get_attribute("#status", "data-state") == "answered", page.inner_text("#error")
    page.wait_for_function("document.getElementById('cost').dataset.usd !== undefined")
    return {
        "answer": page.inner_text("#answer"),
        "cost": page.inner_text("#cost"),
        "cost_usd": page.get_attribute("#cost", "data-usd") or "",
        "left": page.inner_text("#left"),
    }


def test_spa_signs_in_with_pkce_and_chats_through_the_openai_sdk(
    chromium: Any, app: dict[str, Any], server: KeyfobServer
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        sign_in(page, app)
        assert page.input_value("#model") == MODEL  # models.list() through the SDK
        assert page.inner_text("#left").startswith("Allowance left: $1.00")  # the suggestion

        whole = ask(page, "hello", stream=False)
        assert whole["answer"] == "Hi there! This is a mock response from fakellm."
        assert USD.search(whole["cost"]) and float(whole["cost_usd"]) > 0

        streamed = ask(page, "hello again, streamed", stream=True)
        assert streamed["answer"]
        assert USD.search(streamed["cost"]) and float(streamed["cost_usd"]) > 0
        screenshot(page, "example-spa-chat")

        rows = [r for r in ledger(server.data_dir) if r["status"] != "reserved"]
        assert len(rows) == 2
        costs = sorted(f"{r['cost_micro_usd'] / 1e6:.6f}" for r in rows)
        shown = sorted(f"{float(c):.6f}" for c in (whole["cost_usd"], streamed["cost_usd"]))
        assert costs == shown  # the page shows what the ledger charged, streams included
        left = Decimal(1) - Decimal(sum(r["cost_micro_usd"] for r in rows)) / 1_000_000
        assert Decimal(page.get_attribute("#left", "data-usd") or "") == left

        # every asset came from the app's own origin or Keyfob's: no CDN
        hosts = {re.match(r"https?://[^/]+", u).group(0) for u in requests if u.startswith("http")}  # type: ignore[union-attr]
        assert hosts <= {app["origin"], server.url}
        # credentials are never allowed cross-origin: a page asking for them is refused
        refused = page.evaluate(
            """async (url) => {
                try { await fetch(url, {credentials: "include"}); return "read"; }
                catch (e) { return e.name; }
            }""",
            server.url + "/.well-known/oauth-authorization-server",
        )
        assert refused == "TypeError"
    finally:
        context.close()


def test_the_same_spa_on_an_unregistered_origin_is_refused_by_the_browser(
    chromium: Any, app: dict[str, Any], server: KeyfobServer
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, app)
        key = f"keyfob:tokens:{server.url}:{app['client_id']}"
        stolen = page.evaluate("(key) => sessionStorage.getItem(key)", key)
        assert stolen and "kfat_" in stolen
    finally:
        context.close()

    context = chromium.new_context()
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        # Signing in from there: Keyfob will not send a code to an unregistered address.
        page.goto(app["foreign"] + "/")
        page.wait_for_selector("#status[data-state=signed-out]")
        page.click("#sign-in")
        # the click first reads discovery, then navigates: wait for the navigation itself
        # (a load-state wait can return before it starts, on the foreign page)
        page.wait_for_url(lambda url: url.startswith(server.url), timeout=15_000)
        page.wait_for_load_state()
        assert "redirect" in page.content().lower() and "code=" not in page.url

        # With the app's tokens copied in, the page still cannot call Keyfob: the browser
        # refuses every answer (no Access-Control-Allow-Origin for this origin).
        page.goto(app["foreign"] + "/")
        page.evaluate("([k, v]) => sessionStorage.setItem(k, v)", [key, stolen])
        page.reload()
        page.wait_for_selector("#status[data-state=failed]")
        token = page.evaluate("(key) => JSON.parse(sessionStorage.getItem(key))", key)
        outcome = page.evaluate(
            """async ([issuer, token, clientId]) => {
                const out = {};
                const attempt = async (name, url, init) => {
                    try { await fetch(url, init); out[name] = "read"; }
                    catch (e) { out[name] = e.name; }
                };
                await attempt("chat", issuer + "/v1/chat/completions", {
                    method: "POST",
                    headers: {authorization: "Bearer " + token.accessToken,
                              "content-type": "application/json"},
                    body: JSON.stringify({model: "fake/gpt-4o-mini",
                                          messages: [{role: "user", content: "hello"}]}),
                });
                await attempt("refresh", issuer + "/oauth/token", {
                    method: "POST",
                    body: new URLSearchParams({grant_type: "refresh_token",
                        refresh_token: token.refreshToken, client_id: clientId}),
                });
                await attempt("discovery", issuer + "/.well-known/oauth-authorization-server");
                return out;
            }""",
            [server.url, token, app["client_id"]],
        )
        assert outcome == {"chat": "TypeError", "refresh": "TypeError", "discovery": "read"}
        assert any("CORS policy" in line for line in console), console
        assert ledger(server.data_dir) == []  # refused before any work
    finally:
        context.close()


def test_spa_signs_in_in_a_popup(chromium: Any, app: dict[str, Any]) -> None:
    """Popup mode: the page stays, Keyfob opens in a window, the redirect URI's page in
    that window hands the answer to its opener (same origin only) and closes."""
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(app["origin"] + "/?mode=popup")
        page.wait_for_selector("#status[data-state=signed-out]")
        with page.expect_popup() as opened:
            page.click("#sign-in")
        popup = opened.value
        popup.wait_for_selector("#username")
        popup.fill("#username", OWNER)
        popup.fill("#password", OWNER_PASSWORD)
        popup.click("button[type=submit]")
        popup.wait_for_selector("button[value=approve]")
        with popup.expect_event("close"):
            popup.click("button[value=approve]")
        page.wait_for_selector("#status[data-state=signed-in]", timeout=20_000)
        assert page.url == app["origin"] + "/?mode=popup"  # never left
        answer = ask(page, "hello", stream=True)
        assert answer["answer"].startswith("Hi there") and float(answer["cost_usd"]) > 0
    finally:
        context.close()
