"""POST /v1/embeddings: metered on input tokens only, relayed unchanged.

Only OpenAI-wire providers serve embeddings (Anthropic offers none).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyfob.gateway.errors import invalid
from keyfob.gateway.metered import metered_call
from keyfob.gateway.models import Resolved
from keyfob.gateway.surface import Plan, Style
from keyfob.gateway.translate import Untranslatable
from keyfob.pricing.bounds import embeddings_input_bound
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import Wire
from keyfob.settings import Settings

MAX_INPUTS = 2048


def embeddings_body(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required and must be a non-empty string", param="model")
    value = body.get("input")
    ok = isinstance(value, str) and value != ""
    if isinstance(value, list) and 0 < len(value) <= MAX_INPUTS:
        ok = all(isinstance(v, str) and v != "" for v in value) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        ok = ok or all(
            isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value
        )
    if not ok:
        raise invalid(
            f"'input' must be a non-empty string, an array of up to {MAX_INPUTS} non-empty "
            "strings, or token arrays",
            param="input",
        )
    if body.get("stream") is not None:
        raise invalid("embeddings are not streamed", param="stream")


def _texts(body: dict[str, Any]) -> str:
    value = body["input"]
    items = value if isinstance(value, list) else [value]
    return "\n".join(i for i in items if isinstance(i, str))


class EmbeddingsSurface:
    endpoint = "embeddings"
    style: Style = "openai"

    def validate(self, body: dict[str, Any]) -> None:
        embeddings_body(body)

    def bounds(
        self, body: dict[str, Any], settings: Settings, model: str, limits: ModelLimits | None
    ) -> TokenUsage:
        return TokenUsage(embeddings_input_bound(body), 0)

    def plan(self, body: dict[str, Any], r: Resolved, wire: Wire, settings: Settings) -> Plan:
        if wire != "openai":
            raise Untranslatable("this provider offers no embeddings")
        out = {**body, "model": r.upstream_model}
        estimate = {"messages": [{"role": "user", "content": _texts(body)}]}
        return Plan("/embeddings", out, estimate)


SURFACE = EmbeddingsSurface()


async def embeddings(request: Request) -> Response:
    return await metered_call(request, SURFACE)
