"""The output limit in each upstream dialect: Keyfob reserves for N output tokens, so the
upstream must be told N in every field it honours (invariant 1, issue 10).

Upstreams disagree on the field. OpenAI's reasoning models refuse ``max_tokens`` and
honour only ``max_completion_tokens`` (which every OpenAI model honours); most other
OpenAI-compatible servers (DeepSeek, Mistral, older vLLM, Ollama, llama.cpp) honour only
``max_tokens`` and ignore ``max_completion_tokens``; the Responses API has
``max_output_tokens``; Anthropic's Messages API ``max_tokens``. An adapter picks its
dialect by naming one of the functions below (``ProviderAdapter.limit_output``); an
adapter that names none gets the safe default of its wire format (``for_wire``).

Each function returns a *new* body (the app's body is never mutated) whose limit fields
all equal ``tokens``, so whichever field an upstream reads, it reads the bound Keyfob
reserved for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (path, body, tokens) -> the body to send.
LimitOutput = Callable[[str, dict[str, Any], int], dict[str, Any]]

#: Anthropic's smallest extended-thinking budget.
MIN_THINKING_BUDGET = 1024


def _responses(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    out = dict(body)
    out["max_output_tokens"] = tokens
    return out


def openai_generic(path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Any OpenAI-compatible server: ``max_tokens`` (the field they all honour), and
    ``max_completion_tokens`` too when the app sent one, both set to ``tokens``, so a
    server honouring either (or preferring one) stops at the bound."""
    if path == "/responses":
        return _responses(body, tokens)
    out = dict(body)
    out["max_tokens"] = tokens
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = tokens
    return out


def openai_official(path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """api.openai.com: ``max_completion_tokens`` only. Every OpenAI chat model honours it
    (it counts reasoning tokens too), and reasoning models answer 400 to ``max_tokens``."""
    if path == "/responses":
        return _responses(body, tokens)
    out = dict(body)
    out.pop("max_tokens", None)
    out["max_completion_tokens"] = tokens
    return out


def max_tokens_only(path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Upstreams whose OpenAI-compatible endpoint maps ``max_tokens`` to their own output
    limit (Gemini's ``maxOutputTokens``): that one field, nothing it might read instead."""
    if path == "/responses":
        return _responses(body, tokens)
    out = dict(body)
    out.pop("max_completion_tokens", None)
    out["max_tokens"] = tokens
    return out


def anthropic(path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Messages: ``max_tokens``. An extended-thinking budget must stay below it and be at
    least ``MIN_THINKING_BUDGET`` (the API refuses anything else with a 400), so a lowered
    limit lowers the budget to ``tokens - 1``; a limit too small to hold the smallest
    budget drops thinking (the answer is then written without it, within the limit)."""
    out = dict(body)
    out["max_tokens"] = tokens
    thinking = out.get("thinking")
    if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
        budget = thinking["budget_tokens"]
        if budget >= tokens:
            if tokens - 1 >= MIN_THINKING_BUDGET:
                out["thinking"] = {**thinking, "budget_tokens": tokens - 1}
            else:
                del out["thinking"]
    return out


def for_wire(wire: str) -> LimitOutput:
    """The default dialect of a wire format, for adapters that declare none."""
    return anthropic if wire == "anthropic" else openai_generic


def of(adapter: Any) -> LimitOutput:
    """The adapter's own dialect (its ``limit_output`` method), else its wire default."""
    own = getattr(adapter, "limit_output", None)
    return own if callable(own) else for_wire(str(getattr(adapter, "wire", "openai")))
