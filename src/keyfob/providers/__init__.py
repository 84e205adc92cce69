"""Provider adapters, one per upstream wire format, registered as entry points.

Built-in adapters are declared in Keyfob's own ``pyproject.toml`` under the
``keyfob.providers`` entry-point group, exactly as a third-party package would declare
its own (llm's ``default_plugins`` idea): there is no private path for built-ins.

An adapter says which wire format it speaks (``wire``: ``"openai"`` or ``"anthropic"``);
the gateway relays bytes unchanged when the client's surface speaks the same format and
translates (``gateway/translate/``) when it does not. Every upstream request goes through
``post``, which the gateway calls only after the terms check on the credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import aiohttp

    from keyfob.settings import Settings
    from keyfob.store.records import Provider

ENTRY_POINT_GROUP = "keyfob.providers"

Wire = Literal["openai", "anthropic"]


class UpstreamError(Exception):
    """The upstream could not be reached or failed before answering."""

    def __init__(self, message: str, *, status: int | None = None, reached: bool = False) -> None:
        super().__init__(message)
        self.status = status
        #: True when the request may have reached the upstream (it may have done work).
        self.reached = reached


class ProviderAdapter(Protocol):
    """What an adapter does; see providers/openai_compatible.py for the reference one.

    ``post(path, body)`` sends one JSON request to ``base_url + path`` (paths are the
    wire format's own: ``/chat/completions``, ``/embeddings``, ``/messages``,
    ``/messages/count_tokens``) and returns the response unread, so it can be streamed.

    Optional: ``limit_output(path, body, tokens) -> body`` returns the body with the output
    limit Keyfob reserved for in every field this upstream honours (its dialect; see
    ``providers/output_limit.py``). An adapter without it gets its wire format's default.
    """

    kind: ClassVar[str]
    label: ClassVar[str]
    #: The wire format the upstream speaks.
    wire: ClassVar[Wire]
    #: The base URL used when a person links the provider without one (None: required).
    default_base_url: ClassVar[str | None]

    def __init__(self, settings: Settings) -> None: ...

    async def list_models(
        self, http: aiohttp.ClientSession, provider: Provider, api_key: str | None
    ) -> list[str]: ...

    async def post(
        self,
        http: aiohttp.ClientSession,
        provider: Provider,
        api_key: str | None,
        path: str,
        body: dict[str, Any],
    ) -> aiohttp.ClientResponse: ...


@dataclass
class ProviderRegistry:
    adapters: dict[str, type[ProviderAdapter]] = field(default_factory=dict)

    @classmethod
    def load(cls) -> ProviderRegistry:
        found: dict[str, type[ProviderAdapter]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            adapter = ep.load()
            found[adapter.kind] = adapter
        return cls(found)

    def kinds(self) -> list[str]:
        return sorted(self.adapters)

    def get(self, kind: str) -> type[ProviderAdapter]:
        try:
            return self.adapters[kind]
        except KeyError:
            raise KeyError(
                f"no provider adapter of kind {kind!r}; "
                f"installed: {', '.join(self.kinds()) or 'none'}"
            ) from None
