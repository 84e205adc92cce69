"""OpenRouter's PKCE flow against a local fake of openrouter.ai, then linked and used."""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from keyfob.context import Keyfob
from keyfob.providers import UpstreamError
from keyfob.providers.linking import link_provider
from keyfob.providers.openrouter_pkce import begin, exchange
from keyfob.settings import Settings


async def test_pkce_exchange_and_link(owned_data_dir: Path) -> None:
    seen: dict[str, Any] = {}
    issued = "sk-or-v1-" + "f" * 40

    async def keys(request: web.Request) -> web.Response:
        body = await request.json()
        seen.update(body)
        want = seen["challenge"]
        got = urlsafe_b64encode(hashlib.sha256(body["code_verifier"].encode()).digest())
        if body["code"] != "the-code" or got.rstrip(b"=").decode() != want:
            return web.json_response({"error": {"message": "bad code"}}, status=403)
        return web.json_response({"key": issued, "user_id": "u1"})

    app = web.Application()
    app.router.add_post("/api/v1/auth/keys", keys)
    async with TestServer(app, host="127.0.0.1") as fake, aiohttp.ClientSession() as http:
        base = str(fake.make_url("")).rstrip("/")
        start = begin("http://127.0.0.1:8787/providers/openrouter/callback", auth_base=base)
        q = parse_qs(urlsplit(start.url).query)
        assert urlsplit(start.url).path == "/auth"
        assert q["code_challenge_method"] == ["S256"] and start.verifier not in start.url
        seen["challenge"] = q["code_challenge"][0]
        key = await exchange(
            http, "the-code", start.verifier, limit_usd=5.0, api_base=base + "/api/v1"
        )
        assert key == issued and seen["limit"] == 5.0
        assert seen["code_challenge_method"] == "S256"
        with pytest.raises(UpstreamError):
            await exchange(http, "wrong", start.verifier, api_base=base + "/api/v1")

    kf = await Keyfob.open(Settings(data_dir=owned_data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        p = await link_provider(
            kf,
            user_id=owner.id,
            name="openrouter",
            kind="openrouter",
            base_url="",
            api_key=key,
            models=["openai/gpt-4o-mini"],
        )
        assert p.base_url == "https://openrouter.ai/api/v1"
        assert p.credential_kind == "openrouter_key"
    finally:
        await kf.close()
