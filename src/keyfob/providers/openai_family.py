"""Hosted APIs that speak OpenAI's wire format: OpenAI, Google Gemini, OpenRouter.

They differ from ``openai_compatible`` only in their default base URL (and OpenRouter's
attribution headers); Gemini is reached through its OpenAI-compatible endpoint.
"""

from __future__ import annotations

from typing import Any, ClassVar

from keyfob.providers import output_limit
from keyfob.providers.openai_compatible import OpenAICompatibleProvider


class OpenAIProvider(OpenAICompatibleProvider):
    kind: ClassVar[str] = "openai"
    label: ClassVar[str] = "OpenAI API (API key)"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"

    def limit_output(self, path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        """``max_completion_tokens``: honoured by every OpenAI model, and the only field
        reasoning models accept."""
        return output_limit.openai_official(path, body, tokens)


class GeminiProvider(OpenAICompatibleProvider):
    kind: ClassVar[str] = "gemini"
    label: ClassVar[str] = "Google Gemini API (API key, OpenAI-compatible endpoint)"
    default_base_url: ClassVar[str | None] = (
        "https://generativelanguage.googleapis.com/v1beta/openai"
    )

    def limit_output(self, path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        """Gemini's OpenAI-compatible endpoint maps ``max_tokens`` to ``maxOutputTokens``
        (thinking tokens included): that field alone."""
        return output_limit.max_tokens_only(path, body, tokens)


class OpenRouterProvider(OpenAICompatibleProvider):
    kind: ClassVar[str] = "openrouter"
    label: ClassVar[str] = "OpenRouter (API key, or linked by OpenRouter's OAuth PKCE flow)"
    default_base_url: ClassVar[str | None] = "https://openrouter.ai/api/v1"

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = super().headers(api_key)
        headers["X-Title"] = "Keyfob"
        return headers
