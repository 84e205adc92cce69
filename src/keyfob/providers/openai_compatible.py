"""The reference adapter: any upstream that speaks OpenAI's chat-completions wire format.

It does no translation, so the gateway can relay the upstream's bytes as they arrive.
Failures to reach the upstream become ``UpstreamError`` with ``reached`` telling the
gateway whether the upstream may have done (billable) work.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import aiohttp

from keyfob.providers import UpstreamError
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def _url(provider: Provider, path: str) -> str:
        return provider.base_url.rstrip("/") + path

    async def list_models(
        self, http: aiohttp.ClientSession, provider: Provider, api_key: str | None
    ) -> list[str]:
        try:
            async with http.get(self._url(provider, "/models"), headers=_headers(api_key)) as resp:
                if resp.status != 200:
                    raise UpstreamError(
                        f"listing models answered HTTP {resp.status}",
                        status=resp.status,
                        reached=True,
                    )
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamError(f"cannot list models: {type(exc).__name__}") from None
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return []
        return [str(m["id"]) for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def chat_completions(
        self,
        http: aiohttp.ClientSession,
        provider: Provider,
        api_key: str | None,
        body: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """POST the body; the response is returned unread so the caller can stream it.

        Exceptions never carry the key or the upstream URL's credentials: only the
        exception's type name goes into the message.
        """
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            return await http.post(
                self._url(provider, "/chat/completions"), data=payload, headers=_headers(api_key)
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            status = 504 if isinstance(exc, aiohttp.ConnectionTimeoutError) else 502
            raise UpstreamError(
                f"upstream unreachable ({type(exc).__name__})", status=status, reached=False
            ) from None
        except TimeoutError as exc:
            raise UpstreamError(
                f"upstream timed out ({type(exc).__name__})", status=504, reached=True
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"upstream connection failed ({type(exc).__name__})", status=502, reached=True
            ) from None
