"""The reference adapter: any upstream that speaks OpenAI's wire format by base URL
(llama.cpp, vLLM, Ollama, LM Studio, and the hosted APIs in ``openai_family``).

It does no translation, so the gateway can relay the upstream's bytes as they arrive.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp

from keyfob.providers import Wire, output_limit
from keyfob.providers.http import get_json, model_ids, post_json
from keyfob.settings import Settings
from keyfob.store.records import Provider


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class OpenAICompatibleProvider:
    kind: ClassVar[str] = "openai_compatible"
    label: ClassVar[str] = "OpenAI-compatible API (base URL + API key)"
    wire: ClassVar[Wire] = "openai"
    default_base_url: ClassVar[str | None] = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def _url(provider: Provider, path: str) -> str:
        return provider.base_url.rstrip("/") + path

    def headers(self, api_key: str | None) -> dict[str, str]:
        return _headers(api_key)

    def limit_output(self, path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        """The reserved output limit in the fields this upstream honours (see
        ``output_limit``): a generic server reads ``max_tokens``."""
        return output_limit.openai_generic(path, body, tokens)

    async def list_models(
        self, http: aiohttp.ClientSession, provider: Provider, api_key: str | None
    ) -> list[str]:
        return model_ids(await get_json(http, self._url(provider, "/models"), _headers(api_key)))

    async def post(
        self,
        http: aiohttp.ClientSession,
        provider: Provider,
        api_key: str | None,
        path: str,
        body: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        return await post_json(http, self._url(provider, path), body, self.headers(api_key))

    async def chat_completions(
        self,
        http: aiohttp.ClientSession,
        provider: Provider,
        api_key: str | None,
        body: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        return await self.post(http, provider, api_key, "/chat/completions", body)
