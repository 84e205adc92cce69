"""Token usage of one call, as the upstream reported it (or as Keyfob counted it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``usage.server_tool_use`` counters and the tools they count (Anthropic's Messages).
#: OpenAI-wire upstreams report no per-use counts Keyfob could price the same way (an
#: OpenRouter count is of searches, its fee of results): their request-level searches are
#: charged as quoted (``pricing.bounds.FIXED_TOOLS``).
_ANTHROPIC_TOOLS = {
    "web_search_requests": "anthropic-web-search",
    "web_fetch_requests": "anthropic-web-fetch",
}


def _server_tool_uses(report: Any, names: dict[str, str]) -> dict[str, int] | None:
    """Per-use tool counts from a ``server_tool_use`` object; None when there are none.
    A malformed counter raises ``ValueError``/``TypeError`` like any usage field."""
    if not isinstance(report, dict):
        return None
    uses: dict[str, int] = {}
    for key, tool in names.items():
        n = int(report.get(key) or 0)
        if n < 0:
            raise ValueError(key)
        if n:
            uses[tool] = n
    return uses or None


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
@dataclass(slots=True)
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
    #: Input tokens written to the cache for an hour (a subset of cache_write_tokens,
    #: billed higher: Anthropic's ``cache_control`` with ``ttl: "1h"``).
    cache_write_1h_tokens: int = 0
    #: Uses of server-side tools billed per use, by tool (``model_limits.toml``'s names:
    #: ``anthropic-web-search``...); None when the upstream reported none.
    tool_uses: dict[str, int] | None = None

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

    @classmethod
    def from_anthropic(cls, usage: dict[str, Any]) -> TokenUsage | None:
        """Parse an Anthropic ``usage`` object; None when it is not one.

        Anthropic's ``input_tokens`` *excludes* the tokens read from or written to the
        prompt cache, while ours (like OpenAI's ``prompt_tokens``) includes them.
        """
        try:
            tools = _server_tool_uses(usage.get("server_tool_use"), _ANTHROPIC_TOOLS)
            plain = int(usage.get("input_tokens") or 0)
            output = int(usage.get("output_tokens") or 0)
            written = int(usage.get("cache_creation_input_tokens") or 0)
            read = int(usage.get("cache_read_input_tokens") or 0)
            detail = usage.get("cache_creation")
            hour = (
                int(detail.get("ephemeral_1h_input_tokens") or 0) if isinstance(detail, dict) else 0
            )
        except (TypeError, ValueError, AttributeError):
            return None
        if min(plain, output, written, read, hour) < 0:
            return None
        return cls(
            plain + written + read, output, read, written, 0, min(hour, written), tool_uses=tools
        )

    def to_openai(self) -> dict[str, Any]:
        """As OpenAI's chat-completions ``usage`` (cached and reasoning details included)."""
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def to_anthropic(self) -> dict[str, Any]:
        """As Anthropic's ``usage``: input_tokens without the cached ones."""
        return {
            "input_tokens": max(
                0, self.input_tokens - self.cache_read_tokens - self.cache_write_tokens
            ),
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
        }

    def to_responses(self) -> dict[str, Any]:
        """As the Responses API's ``usage``."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }
