"""POST /v1/chat/completions: the OpenAI chat surface, served by either wire format.

Same format: the body goes upstream as is (with ``stream_options.include_usage`` added so
the upstream reports usage) and the answer comes back byte for byte. Anthropic-served:
translated both ways, streams included (``translate/``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyfob.gateway.errors import bounded
from keyfob.gateway.metered import metered_call
from keyfob.gateway.models import Resolved
from keyfob.gateway.streams import OpenAIPassThrough, OpenAIWatcher, Translating, Watcher
from keyfob.gateway.surface import Plan, Style
from keyfob.gateway.translate import anthropic_to_openai, openai_to_anthropic
from keyfob.gateway.validate import chat_body
from keyfob.pricing.bounds import chat_input, chat_output_bound
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import Wire
from keyfob.settings import Settings


def upstream_body(body: dict[str, Any], model: str, streamed: bool) -> tuple[dict[str, Any], bool]:
    """The body sent upstream, and whether the client itself asked for stream usage."""
    out = dict(body)
    out["model"] = model
    wants_usage = False
    if streamed:
        so = body.get("stream_options") or {}
        wants_usage = so.get("include_usage") is True
        out["stream_options"] = {**so, "include_usage": True}
    return out, wants_usage


class ChatSurface:
    endpoint = "chat.completions"
    style: Style = "openai"

    def validate(self, body: dict[str, Any]) -> None:
        chat_body(body)

    def bounds(
        self, body: dict[str, Any], settings: Settings, model: str, limits: ModelLimits | None
    ) -> TokenUsage:
        inp = bounded(chat_input, body, model, limits)
        return inp.usage(
            chat_output_bound(body, default_max_output_tokens=settings.default_max_output_tokens)
        )

    def plan(self, body: dict[str, Any], r: Resolved, wire: Wire, settings: Settings) -> Plan:
        streamed = body.get("stream") is True
        if wire == "openai":
            out, wants_usage = upstream_body(body, r.upstream_model, streamed)

            def passthrough(w: Watcher) -> OpenAIPassThrough:
                assert isinstance(w, OpenAIWatcher)
                return OpenAIPassThrough(w, client_wants_usage=wants_usage)

            return Plan("/chat/completions", out, body, transform=passthrough)
        model = str(body["model"])
        msg_body = openai_to_anthropic.request(
            body, model=r.upstream_model, default_max_tokens=settings.default_max_output_tokens
        )
        wants = (body.get("stream_options") or {}).get("include_usage") is True
        return Plan(
            "/messages",
            msg_body,
            body,
            whole=lambda data: anthropic_to_openai.response(data, model=model),
            transform=lambda _w: Translating(
                anthropic_to_openai.MessagesToChatStream(model=model, include_usage=wants),
                style="openai",
            ),
        )


SURFACE = ChatSurface()


async def chat_completions(request: Request) -> Response:
    return await metered_call(request, SURFACE)
