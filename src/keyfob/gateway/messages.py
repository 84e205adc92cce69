"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic surface.

Served by an Anthropic-wire provider, the body goes upstream as is and the answer comes
back byte for byte; served by an OpenAI-compatible one, both are translated, streams
and tool calls included. Errors use Anthropic's shape (see ``anthropic_errors``).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyfob.context import Keyfob
from keyfob.gateway.attempt import make_plan
from keyfob.gateway.auth import authenticate
from keyfob.gateway.errors import GatewayError, bounded, invalid
from keyfob.gateway.estimate import count
from keyfob.gateway.metered import metered_call, read_body
from keyfob.gateway.models import Resolved, resolve
from keyfob.gateway.state import GatewayState
from keyfob.gateway.streams import AnthropicPassThrough, AnthropicWatcher, Translating, Watcher
from keyfob.gateway.surface import Plan, Style
from keyfob.gateway.translate import Untranslatable, anthropic_to_openai, openai_to_anthropic
from keyfob.gateway.upstream_errors import MAX_ERROR_BODY
from keyfob.pricing.bounds import messages_input
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import UpstreamError, Wire
from keyfob.settings import Settings

MAX_MAX_TOKENS = 1_000_000


def messages_body(body: dict[str, Any], *, need_max_tokens: bool = True) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("model: Field required (a non-empty string)", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: must be a non-empty array of messages", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise invalid(f"messages.{i}: needs role 'user' or 'assistant'", param="messages")
        content = m.get("content")
        if not isinstance(content, str | list):
            raise invalid(f"messages.{i}.content: must be a string or an array of blocks")
        if isinstance(content, list) and not all(isinstance(b, dict) for b in content):
            raise invalid(f"messages.{i}.content: every block must be an object")
    mt = body.get("max_tokens")
    if need_max_tokens and (
        not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= MAX_MAX_TOKENS
    ):
        raise invalid("max_tokens: Field required (a positive integer)", param="max_tokens")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("stream: must be a boolean", param="stream")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise invalid("system: must be a string or an array of text blocks", param="system")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise invalid("tools: must be an array", param="tools")
    if body.get("tool_choice") is not None and not isinstance(body["tool_choice"], dict):
        raise invalid("tool_choice: must be an object", param="tool_choice")


class MessagesSurface:
    endpoint = "messages"
    style: Style = "anthropic"

    def validate(self, body: dict[str, Any]) -> None:
        messages_body(body)

    def bounds(
        self, body: dict[str, Any], settings: Settings, model: str, limits: ModelLimits | None
    ) -> TokenUsage:
        inp = bounded(messages_input, body, model, limits)
        return inp.usage(int(body["max_tokens"]))

    def plan(self, body: dict[str, Any], r: Resolved, wire: Wire, settings: Settings) -> Plan:
        model = str(body["model"])
        if wire == "anthropic":
            out = dict(body)
            out["model"] = r.upstream_model
            try:  # only for counting, should the upstream ever report no usage
                chat = anthropic_to_openai.request(body, model=r.upstream_model)
            except Untranslatable:
                chat = {"messages": []}

            def passthrough(w: Watcher) -> AnthropicPassThrough:
                assert isinstance(w, AnthropicWatcher)
                return AnthropicPassThrough(w)

            return Plan("/messages", out, chat, transform=passthrough)
        chat = anthropic_to_openai.request(body, model=r.upstream_model)
        return Plan(
            "/chat/completions",
            chat,
            chat,
            whole=lambda data: openai_to_anthropic.response(data, model=model),
            transform=lambda _w: Translating(
                openai_to_anthropic.ChatToMessagesStream(model=model, count=count),
                style="anthropic",
            ),
        )


SURFACE = MessagesSurface()


async def messages(request: Request) -> Response:
    return await metered_call(request, SURFACE)


def _local_count(body: dict[str, Any]) -> int:
    """cl100k count of everything the model reads (an estimate for non-OpenAI models)."""
    parts = [json.dumps(body.get("system") or "", ensure_ascii=False)]
    parts += [json.dumps(m.get("content"), ensure_ascii=False) for m in body["messages"]]
    if body.get("tools"):
        parts.append(json.dumps(body["tools"], ensure_ascii=False))
    return count("\n".join(parts)) + 4 * len(body["messages"])


async def count_tokens(request: Request) -> Response:
    """Free of charge, like Anthropic's own: the upstream's count when it speaks the
    Messages format, else Keyfob's estimate."""
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request, fresh=True)
    body = await read_body(kf, request)
    messages_body(body, need_max_tokens=False)
    r = resolve(grant, await gw.providers_of(kf, grant.user_id), body["model"])
    adapter = gw.adapter(kf, r.provider.kind)
    if adapter.wire == "anthropic" and kf.http is not None:
        api_key = await gw.credential(kf, r.provider)
        upstream_body = {k: v for k, v in body.items() if k not in ("max_tokens", "stream")}
        upstream_body["model"] = r.upstream_model
        try:
            resp = await adapter.post(
                kf.http, r.provider, api_key, "/messages/count_tokens", upstream_body
            )
            try:
                raw = await resp.content.read(MAX_ERROR_BODY)
                if resp.status == 200:
                    data = json.loads(raw)
                    if isinstance(data, dict) and isinstance(data.get("input_tokens"), int):
                        return JSONResponse({"input_tokens": data["input_tokens"]})
            finally:
                resp.close()
        except (UpstreamError, aiohttp.ClientError, TimeoutError, ValueError):
            pass  # fall back to our own count
    else:
        make_plan(SURFACE, {**body, "max_tokens": 1}, r, adapter, kf)  # 400 if untranslatable
    try:
        return JSONResponse({"input_tokens": _local_count(body)})
    except (TypeError, ValueError) as exc:
        raise GatewayError(400, f"cannot count this body: {type(exc).__name__}") from None
