"""Token usage of one call, as the upstream reported it (or as Keyfob counted it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenUsage:
    #: All input tokens, cached ones included (OpenAI's prompt_tokens).
    input_tokens: int
    output_tokens: int
    #: Input tokens read from the provider's prompt cache (a subset of input_tokens).
    cache_read_tokens: int = 0
    #: Input tokens written to the prompt cache (a subset of input_tokens).
    cache_write_tokens: int = 0
    #: Reasoning tokens (a subset of output_tokens).
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> TokenUsage | None:
        """Parse an OpenAI ``usage`` object; None when it is not one."""
        try:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            out_details = usage.get("completion_tokens_details") or {}
            reasoning = (
                int(out_details.get("reasoning_tokens") or 0)
                if isinstance(out_details, dict)
                else 0
            )
        except (TypeError, ValueError, AttributeError):
            return None
        if prompt < 0 or completion < 0 or cached < 0 or reasoning < 0:
            return None
        return cls(prompt, completion, min(cached, prompt), 0, min(reasoning, completion))
