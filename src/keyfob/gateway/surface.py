"""What differs between the gateway's API surfaces, as one small interface.

A surface (OpenAI chat, Anthropic messages, Responses, embeddings) validates its body,
bounds its tokens without a tokenizer, and *plans* the upstream call for the wire format
of the provider that serves it: the path and body to send, and how the answer comes back
(unchanged bytes, a translated JSON answer, or a stream transform). ``metered.py`` runs
every surface through the same reserve -> call -> settle path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from keyfob.gateway.models import Resolved
from keyfob.gateway.streams import Transform, Watcher
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import Wire
from keyfob.settings import Settings

Style = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class Plan:
    #: The wire format's own path under the provider's base URL.
    path: str
    body: dict[str, Any]
    #: A chat-completions-shaped body, for counting input tokens ourselves if need be.
    estimate_body: dict[str, Any]
    #: Turns the upstream's JSON answer into the client's; None relays the bytes unchanged.
    whole: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: Builds the stream transform from the upstream's watcher (streamed calls only).
    transform: Callable[[Watcher], Transform] | None = None


class Surface(Protocol):
    #: The ledger's ``endpoint`` value.
    endpoint: str
    #: The error format the client's SDK expects.
    style: Style

    def validate(self, body: dict[str, Any]) -> None:
        """Raise a 400 ``GatewayError`` for a body Keyfob cannot meter or relay."""

    def bounds(
        self, body: dict[str, Any], settings: Settings, model: str, limits: ModelLimits | None
    ) -> TokenUsage:
        """Upper bounds on input and output tokens and on server-tool uses (the worst case
        to reserve) when ``model`` (with ``limits``) serves the call; a 400 when nothing
        bounds what the call can bill (``pricing.bounds.Unbounded``)."""

    def plan(self, body: dict[str, Any], r: Resolved, wire: Wire, settings: Settings) -> Plan:
        """How this call goes to a provider speaking ``wire`` (``Untranslatable`` if it
        cannot)."""
