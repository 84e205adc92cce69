"""Bad input gets a clear 4xx, never a 500, on every endpoint a client can reach:
Hypothesis throws arbitrary JSON, forms, bytes and headers at them (in process, with a
valid token, so the gateway's validation is what is attacked, not just the auth check)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from keyfob.server import create_app
from keyfob.settings import Settings
from keyfob.store import Store
from tests.support import grant_token

JSON_ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/keyfob/quote",
    "/oauth/register",
]
FORM_ENDPOINTS = [
    "/oauth/token",
    "/oauth/revoke",
    "/oauth/introspect",
    "/oauth/device_authorization",
    "/login",
    "/setup",
    "/device",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
# bodies shaped like the real ones, with every field free to be wrong
shaped = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["fake/m1", "m1", "nope", ""]), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.one_of(st.sampled_from(["user", "system", "tool"]), json_values),
                        "content": json_values,
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "max_tokens": json_values,
        "stream": json_values,
        "input": json_values,
        "tools": json_values,
        "n": json_values,
        "redirect_uris": json_values,
    },
)


async def _seed(data_dir: Path) -> str:
    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        owner = await store.users.create("owner", "x", is_owner=True)
        await store.providers.add(
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url="http://127.0.0.1:9/v1",
            credential_envelope=None,
            is_local=True,
            models=["m1"],
        )
        minted = await grant_token(
            store, user_id=owner.id, models=["fake/m1"], cap_micro_usd=10**9, client_name="fuzz"
        )
        return str(minted["token"])
    finally:
        await store.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    token = asyncio.run(_seed(data_dir))
    app = create_app(Settings(data_dir=data_dir, upstream_connect_timeout_s=0.5))
    with TestClient(app, base_url="http://127.0.0.1:8787") as c:
        yield c, token


def test_oversized_bodies_are_413_everywhere(client: tuple[TestClient, str]) -> None:
    """First in the module: the fuzzers below trip the per-address rate limits."""
    c, token = client
    big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    for path in JSON_ENDPOINTS[:6]:
        r = c.post(
            path,
            content=big,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert r.status_code == 413, (path, r.status_code)
    for path in FORM_ENDPOINTS[:4]:
        r = c.post(
            path,
            content=b"a=" + b"x" * (1024 * 1024),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413, (path, r.status_code)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@FUZZ
@given(body=st.one_of(shaped, json_values))
def test_json_endpoints_never_500(client: tuple[TestClient, str], path: str, body: object) -> None:
    c, token = client
    raw = json.dumps(body, allow_nan=True)
    r = c.post(
        path,
        content=raw,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "anthropic-version": "2023-06-01",
        },
    )
    assert r.status_code < 500 or r.status_code in (502, 503, 504), (path, raw, r.text)
    assert r.headers.get("content-type", "").startswith(("application/json", "text/"))


@pytest.mark.parametrize("path", JSON_ENDPOINTS[:6])
@FUZZ
@given(raw=st.binary(max_size=200), auth=st.one_of(st.none(), st.text(max_size=40)))
def test_garbage_bytes_and_tokens_never_500(
    client: tuple[TestClient, str], path: str, raw: bytes, auth: str | None
) -> None:
    c, _token = client
    headers = {"Content-Type": "application/json"}
    if auth is not None and auth.isprintable() and auth.isascii():
        headers["Authorization"] = auth
    r = c.post(path, content=raw, headers=headers)
    assert 400 <= r.status_code < 500, (path, raw, r.status_code, r.text)


@pytest.mark.parametrize("path", FORM_ENDPOINTS)
@FUZZ
@given(
    form=st.dictionaries(
        st.sampled_from(
            [
                "grant_type",
                "code",
                "client_id",
                "client_secret",
                "refresh_token",
                "token",
                "redirect_uri",
                "code_verifier",
                "username",
                "password",
                "csrf_token",
                "user_code",
                "scope",
                "resource",
                "device_code",
            ]
        ),
        st.text(max_size=30),
        max_size=6,
    )
)
def test_form_endpoints_never_500(
    client: tuple[TestClient, str], path: str, form: dict[str, str]
) -> None:
    c, _token = client
    r = c.post(path, data=form)
    assert r.status_code < 500, (path, form, r.status_code, r.text[:500])
