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

import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import aiohttp

    from keyfob.settings import Settings
    from keyfob.store.records import Provider

ENTRY_POINT_GROUP = "keyfob.providers"
#: The distribution whose entry points are the built-in adapters.
BUILT_IN = "keyfob"

log = logging.getLogger("keyfob.providers")

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


def _named(ep: EntryPoint) -> str:
    """How a plugin is named in a warning: entry point, target and distribution."""
    dist = ep.dist.name if ep.dist is not None else "unknown distribution"
    return f"{ep.group} entry point {ep.name!r} ({ep.value}, from {dist})"


def _built_in(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == BUILT_IN


@dataclass
class ProviderRegistry:
    adapters: dict[str, type[ProviderAdapter]] = field(default_factory=dict)
    #: What was not registered and why (each also logged as a warning).
    refused: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> ProviderRegistry:
        """Every adapter of the ``keyfob.providers`` group, the built-in ones first.

        A plugin that fails to import, or is no adapter, is skipped with a warning
        naming its entry point: one broken package must not stop the server. A plugin
        claiming a kind already registered is refused the same way: the first one stays
        (a built-in, always), since a silent replacement would send a person's
        credential to code they never chose."""
        registry = cls()
        seen: set[tuple[str, str]] = set()
        eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not _built_in(ep))
        for ep in eps:
            if (ep.name, ep.value) in seen:
                continue  # the same distribution found twice on the path
            seen.add((ep.name, ep.value))
            registry._add(ep)
        return registry

    def _add(self, ep: EntryPoint) -> None:
        try:
            adapter = ep.load()
        except Exception as exc:
            return self._refuse(f"{_named(ep)} failed to load: {type(exc).__name__}: {exc}")
        kind = getattr(adapter, "kind", None)
        if not isinstance(kind, str) or not kind or not callable(getattr(adapter, "post", None)):
            return self._refuse(f"{_named(ep)} is not a provider adapter (no kind or post)")
        held = self.adapters.get(kind)
        if held is not None and held is not adapter:
            owner = f"{held.__module__}.{held.__qualname__}"
            return self._refuse(
                f"{_named(ep)} declares kind {kind!r}, which {owner} already provides; "
                "refused, the first one is kept"
            )
        self.adapters[kind] = adapter

    def _refuse(self, message: str) -> None:
        log.warning("provider plugin skipped: %s", message)
        self.refused.append(message)

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
