"""Bad input gets a clear 4xx, never a 500, on every endpoint a client can reach:
Hypothesis throws arbitrary JSON, forms, bytes and headers at them (in process, with a
valid token, so the gateway's validation is what is attacked, not just the auth check)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    app = create_app(
        Settings(
            data_dir=data_dir,
            upstream_connect_timeout_s=0.5,
            registrations_per_hour_per_address=10**6,  # so the parser is what is fuzzed
        )
    )
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


# --- parser limits (issue 11): nesting, lone surrogates, each in the surface's format ---

DEPTH_BODIES = {
    "/v1/chat/completions": lambda extra: {
        "model": "fake/m1",
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    },
    "/v1/messages": lambda extra: {
        "model": "fake/m1",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    },
    "/v1/messages/count_tokens": lambda extra: {
        "model": "fake/m1",
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    },
    "/v1/responses": lambda extra: {"model": "fake/m1", "input": "hi", **extra},
    "/v1/embeddings": lambda extra: {"model": "fake/m1", "input": "hi", **extra},
    "/v1/keyfob/quote": lambda extra: {
        "model": "fake/m1",
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    },
    "/oauth/register": lambda extra: {
        "client_name": "x",
        "redirect_uris": ["http://127.0.0.1:1/cb"],
        **extra,
    },
}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def post_raw(c: TestClient, token: str, path: str, raw: bytes) -> Any:
    return c.post(
        path,
        content=raw,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "anthropic-version": "2023-06-01",
        },
    )


def assert_refused_in_surface_format(path: str, r: Any, needle: str) -> None:
    assert r.status_code == 400, (path, r.status_code, r.text[:300])
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    elif path.startswith("/oauth/"):
        assert body["error"] == "invalid_request"
        message = body["error_description"]
    else:
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    assert needle in message, (path, message)


@pytest.mark.parametrize("depth", [65, 200, 1_000, 1_030, 5_000])
@pytest.mark.parametrize("path", list(DEPTH_BODIES))
def test_deep_nesting_is_a_400_in_the_surface_format(
    client: tuple[TestClient, str], path: str, depth: int
) -> None:
    c, token = client
    head = json.dumps(DEPTH_BODIES[path]({"metadata": None}))
    raw = head.replace("null", nested(depth - 1), 1).encode()  # 1 object + arrays
    assert_refused_in_surface_format(path, post_raw(c, token, path, raw), "nested deeper")
    # the whole body as an array nested that deep, too
    assert_refused_in_surface_format(
        path, post_raw(c, token, path, nested(depth).encode()), "nested deeper"
    )


@pytest.mark.parametrize("path", list(DEPTH_BODIES))
def test_nesting_at_the_limit_is_parsed(client: tuple[TestClient, str], path: str) -> None:
    c, token = client
    head = json.dumps(DEPTH_BODIES[path]({"metadata": None}))
    raw = head.replace("null", nested(63), 1).encode()  # 1 object + 63 arrays = 64
    r = post_raw(c, token, path, raw)
    assert r.status_code != 500 and "nested deeper" not in r.text, (path, r.text[:300])


@pytest.mark.parametrize(
    "escape", ["\\ud800", "\\udfff", "\\udc00\\ud800", "x\\ud83d", "\\ud83d y", "\\ud800\\u0041"]
)
@pytest.mark.parametrize("path", list(DEPTH_BODIES))
def test_lone_surrogates_are_a_400_in_the_surface_format(
    client: tuple[TestClient, str], path: str, escape: str
) -> None:
    c, token = client
    body = json.dumps(DEPTH_BODIES[path]({"metadata": {"k": "PLACEHOLDER"}}))
    as_value = body.replace("PLACEHOLDER", escape).encode()
    as_key = body.replace('"k"', f'"{escape}"').replace("PLACEHOLDER", "v").encode()
    for raw in (as_value, as_key):
        assert_refused_in_surface_format(path, post_raw(c, token, path, raw), "surrogate")


def test_a_surrogate_pair_is_fine(client: tuple[TestClient, str]) -> None:
    c, token = client
    raw = (
        b'{"model": "fake/m1", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}],'
        b' "big": 123456789012345678901234567890}'
    )
    r = post_raw(c, token, "/v1/keyfob/quote", raw)
    assert r.status_code == 200, r.text


# every content-block kind of every surface, each field free to be any JSON value
BLOCK_KINDS = {
    "chat": ["text", "image_url", "input_audio", "file", "refusal", "nope"],
    "messages": [
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "container_upload",
        "nope",
    ],
    "responses": [
        "input_text",
        "input_image",
        "input_file",
        "output_text",
        "refusal",
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "nope",
    ],
}
BLOCK_FIELDS = [
    "text",
    "image_url",
    "url",
    "source",
    "data",
    "media_type",
    "id",
    "name",
    "input",
    "content",
    "tool_use_id",
    "file",
    "file_id",
    "file_data",
    "filename",
    "input_audio",
    "format",
    "detail",
    "is_error",
    "cache_control",
    "citations",
    "thinking",
    "signature",
    "arguments",
    "call_id",
    "output",
    "role",
    "title",
]
sources = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "url", "file", "text", "content", "nope"])},
        optional={
            "media_type": json_values | st.sampled_from(["image/png", "application/pdf"]),
            "data": json_values | st.just("iVBORw0KGgo="),
            "url": json_values | st.just("https://example.com/a.png"),
            "file_id": json_values,
            "content": json_values,
        },
    ),
)


def blocks(surface: str) -> st.SearchStrategy[dict[str, object]]:
    return st.sampled_from(BLOCK_KINDS[surface]).flatmap(
        lambda kind: st.fixed_dictionaries(
            {"type": st.just(kind)},
            optional={
                name: (sources if name == "source" else json_values) for name in BLOCK_FIELDS
            },
        )
    )


def conversation(surface: str) -> st.SearchStrategy[list[dict[str, object]]]:
    roles = st.sampled_from(["user", "assistant", "system", "tool", "developer"])
    message = st.fixed_dictionaries(
        {"role": roles, "content": st.one_of(st.lists(blocks(surface), max_size=3), json_values)},
        optional={"tool_calls": json_values, "tool_call_id": json_values, "name": json_values},
    )
    return st.lists(message, min_size=1, max_size=3)


BLOCK_BODIES = {
    "/v1/chat/completions": conversation("chat").map(lambda m: {"model": "fake/m1", "messages": m}),
    "/v1/keyfob/quote": conversation("chat").map(lambda m: {"model": "fake/m1", "messages": m}),
    "/v1/messages": st.tuples(conversation("messages"), st.lists(blocks("messages"))).map(
        lambda t: {"model": "fake/m1", "max_tokens": 8, "messages": t[0], "system": t[1]}
    ),
    "/v1/messages/count_tokens": conversation("messages").map(
        lambda m: {"model": "fake/m1", "messages": m}
    ),
    "/v1/responses": st.lists(
        st.one_of(blocks("responses"), conversation("responses").map(lambda m: m[0])),
        min_size=1,
        max_size=3,
    ).map(lambda items: {"model": "fake/m1", "input": items}),
}


@pytest.mark.parametrize("path", list(BLOCK_BODIES))
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_wrong_types_inside_every_content_block_never_500(
    client: tuple[TestClient, str], path: str, data: st.DataObject
) -> None:
    c, token = client
    body = data.draw(BLOCK_BODIES[path])
    raw = json.dumps(body, allow_nan=True)
    r = post_raw(c, token, path, raw.encode())
    assert r.status_code < 500 or r.status_code in (502, 503, 504), (path, raw, r.text)


def test_known_500_image_source_number(client: tuple[TestClient, str]) -> None:
    """The review's case: an Anthropic image block whose source is a number."""
    c, token = client
    body = {
        "model": "fake/m1",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [{"type": "image", "source": 5}]}],
    }
    r = post_raw(c, token, "/v1/messages", json.dumps(body).encode())
    assert r.status_code == 400, r.text
