"""POST /v1/responses: the Responses API, implemented over chat completions.

Keyfob keeps no conversation state, so this works with every provider (OpenAI-compatible
servers that never heard of the Responses API, and Anthropic models through a second
translation); see ``translate/responses.py`` for what is refused and why.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyfob.gateway.errors import bounded, invalid
from keyfob.gateway.metered import metered_call
from keyfob.gateway.models import Resolved
from keyfob.gateway.streams import Translating
from keyfob.gateway.surface import Plan, Style
from keyfob.gateway.translate import anthropic_to_openai, openai_to_anthropic
from keyfob.gateway.translate import responses as tr
from keyfob.pricing.bounds import chat_input, chat_output_bound
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import Wire
from keyfob.settings import Settings


def responses_body(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required and must be a non-empty string", param="model")
    items = body.get("input")
    if not (isinstance(items, str) and items) and not (isinstance(items, list) and items):
        raise invalid("'input' must be a non-empty string or array of items", param="input")
    if isinstance(items, list) and not all(isinstance(i, dict) for i in items):
        raise invalid("every 'input' item must be an object", param="input")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("'stream' must be a boolean", param="stream")
    mot = body.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot <= 0):
        raise invalid("'max_output_tokens' must be a positive integer", param="max_output_tokens")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise invalid("'tools' must be an array", param="tools")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise invalid("'instructions' must be a string", param="instructions")


class ResponsesSurface:
    endpoint = "responses"
    style: Style = "openai"

    def validate(self, body: dict[str, Any]) -> None:
        responses_body(body)

    def bounds(
        self, body: dict[str, Any], settings: Settings, model: str, limits: ModelLimits | None
    ) -> TokenUsage:
        chat = tr.request(body, model=model)
        inp = bounded(chat_input, chat, model, limits)
        return inp.usage(
            chat_output_bound(chat, default_max_output_tokens=settings.default_max_output_tokens)
        )

    def plan(self, body: dict[str, Any], r: Resolved, wire: Wire, settings: Settings) -> Plan:
        model = str(body["model"])
        chat = tr.request(body, model=r.upstream_model)
        if wire == "openai":
            return Plan(
                "/chat/completions",
                chat,
                chat,
                whole=lambda data: tr.response(data, body, model=model),
                transform=lambda _w: Translating(
                    tr.ChatToResponsesStream(body, model=model), style="responses"
                ),
            )
        msg = openai_to_anthropic.request(
            chat, model=r.upstream_model, default_max_tokens=settings.default_max_output_tokens
        )
        return Plan(
            "/messages",
            msg,
            chat,
            whole=lambda data: tr.response(
                anthropic_to_openai.response(data, model=model), body, model=model
            ),
            transform=lambda _w: Translating(
                anthropic_to_openai.MessagesToChatStream(model=model, include_usage=True),
                tr.ChatToResponsesStream(body, model=model),
                style="responses",
            ),
        )


SURFACE = ResponsesSurface()


async def responses(request: Request) -> Response:
    return await metered_call(request, SURFACE)
