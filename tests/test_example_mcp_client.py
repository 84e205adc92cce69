"""The MCP-style client example (examples/mcp-client) connecting to a running Keyfob from
nothing but the gateway URL: 401 -> RFC 9728 -> RFC 8414 -> RFC 7591 -> PKCE with
``resource`` on a loopback listener -> calls; the person consents in between."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import requests

from tests.browser import post_form
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mcp-client" / "connect.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mcp_connect_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def person_consents(url: str) -> None:
    """The person's browser: Keyfob login, the consent page (naming a self-registered
    app), allow; the redirect lands on the client's loopback listener."""
    with requests.Session() as browser:
        login = browser.get(url, timeout=30)
        consent = post_form(
            browser, login, fill={"user": OWNER, "pass": OWNER_PASSWORD}, allow_redirects=True
        )
        assert "MCP-style example client" in consent.text
        assert "registered itself" in consent.text  # Keyfob says it has not checked the name
        done = post_form(
            browser, consent, fill={"cap": "0.25"}, button="approve", allow_redirects=True
        )
        assert done.status_code == 200 and "Signed in" in done.text


def test_mcp_style_client_connects_through_discovery(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
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
    example = load()
    conn = example.connect(f"{server.url}/v1", open_browser=person_consents, timeout_s=60)
    assert conn.issuer == server.url and conn.token["access_token"].startswith("kfat_")
    with conn.client() as client:
        assert [m["id"] for m in client.get("models").json()["data"]] == ["fake/gpt-4o-mini"]
        answer = client.post(
            "chat/completions",
            json={"model": "fake/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        )
        assert answer.status_code == 200 and float(answer.headers["x-keyfob-cost-usd"]) > 0


def test_a_wrong_resource_is_refused_before_signing_in(server: KeyfobServer) -> None:
    example = load()
    with pytest.raises(example.ConnectError):
        example.connect(
            f"{server.url}/v2",
            open_browser=lambda url: pytest.fail("no sign-in for a wrong resource"),
        )
