"""Anthropic's Messages wire format: ``x-api-key`` and ``anthropic-version`` headers.

Only Anthropic API keys reach this adapter: the gateway takes the terms verdict on the
credential before every call, and a Claude subscription OAuth token (``sk-ant-oat...``)
is refused there and at linking, so no code path sends one upstream.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp

from keyfob.providers import Wire, output_limit
from keyfob.providers.http import get_json, model_ids, post_json
from keyfob.settings import Settings
from keyfob.store.records import Provider

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider:
    kind: ClassVar[str] = "anthropic"
    label: ClassVar[str] = "Anthropic API (API key, Messages wire format)"
    wire: ClassVar[Wire] = "anthropic"
    default_base_url: ClassVar[str | None] = "https://api.anthropic.com/v1"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def headers(api_key: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def limit_output(self, path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        """``max_tokens`` (and an extended-thinking budget kept below it)."""
        return output_limit.anthropic(path, body, tokens)

    async def list_models(
        self, http: aiohttp.ClientSession, provider: Provider, api_key: str | None
    ) -> list[str]:
        url = provider.base_url.rstrip("/") + "/models?limit=1000"
        return model_ids(await get_json(http, url, self.headers(api_key)))

    async def post(
        self,
        http: aiohttp.ClientSession,
        provider: Provider,
        api_key: str | None,
        path: str,
        body: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        url = provider.base_url.rstrip("/") + path
        return await post_json(http, url, body, self.headers(api_key))
