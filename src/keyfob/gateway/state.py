"""The gateway's per-process state: caches and adapter instances, one per app.

Providers, decrypted keys with their terms verdict, and prices are looked up once per
few seconds instead of once per request; a key is re-decrypted when its envelope
changes, and a terms verdict is re-taken with it, so no code path skips the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.applications import Starlette

from keyfob.allowance.service import Reservation
from keyfob.context import Keyfob
from keyfob.gateway.auth import grant_cache
from keyfob.gateway.cache import TTLCache
from keyfob.gateway.errors import GatewayError
from keyfob.pricing.model_limits import ModelLimits, limits_for
from keyfob.pricing.prices import Price, UnknownPrice, price_for
from keyfob.providers import ProviderAdapter
from keyfob.providers.linking import decrypt_key
from keyfob.store import sqlite_hot
from keyfob.store.metering.reads import live_tokens
from keyfob.store.records import Grant, Provider, Token
from keyfob.terms import check_credential, clean_credential
from keyfob.vault import VaultError

PROVIDERS_TTL_S = 3.0
PRICES_TTL_S = 10.0
KEYS_TTL_S = 300.0
#: How often the tokens of streams in flight are checked (a revoked one is cut within
#: this plus one query: well under the one second of invariant 4).
STREAM_CHECK_S = 0.25

log = logging.getLogger("keyfob.gateway")


class Cuttable(Protocol):
    """A stream in flight (``relay.StreamRelay``), as the revocation watch sees it."""

    def cut(self, reason: str) -> None: ...


class LiveStreams:
    """The streams in flight of this process, by bearer token and grant, and one task
    that cuts those whose token or grant was revoked.

    Why a watch rather than a check per relayed chunk: a stream may wait minutes for its
    next chunk, and a check per chunk would cost a lookup on the hot path. The task runs
    only while streams are in flight; on the personal server it queries nothing until
    another connection (the CLI, the web pages) or this process's OAuth code commits
    (the write-back generation moves), elsewhere one indexed query per period."""

    def __init__(self) -> None:
        self._streams: dict[int, tuple[str, str, Cuttable]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stamp: int | None = None

    def watch(
        self, kf: Keyfob, token_hash: str, grant_id: str, stream: Cuttable
    ) -> Callable[[], None]:
        """Register a stream; returns the function that unregisters it."""
        ident = id(stream)
        self._streams[ident] = (token_hash, grant_id, stream)
        if self._task is None or self._task.done():
            self._stamp = None
            self._task = asyncio.ensure_future(self._run(kf))

        def unwatch() -> None:
            self._streams.pop(ident, None)

        return unwatch

    def guard(
        self, kf: Keyfob, reservation: Reservation
    ) -> Callable[[Cuttable], Callable[[], None]]:
        """What a relay calls when it starts (``StreamRelay.guard``)."""
        return functools.partial(self.watch, kf, reservation.token_hash, reservation.grant_id)

    def __len__(self) -> int:
        return len(self._streams)

    def cut_all(self, reason: str) -> int:
        """Cut every stream in flight (the end of a drain, ``drain.py``); how many."""
        cut = 0
        for ident, (_th, _gid, stream) in list(self._streams.items()):
            self._streams.pop(ident, None)
            with contextlib.suppress(Exception):
                stream.cut(reason)
            cut += 1
        return cut

    async def _run(self, kf: Keyfob) -> None:
        while self._streams:
            await asyncio.sleep(STREAM_CHECK_S)
            try:
                await self.check(kf)
            except Exception as exc:  # a failed check is retried next period
                log.warning("checking streams for revocation failed: %s", type(exc).__name__)

    async def check(self, kf: Keyfob) -> int:
        """Cut the streams whose token or grant is no longer live; returns how many."""
        if not self._streams:
            return 0
        hot = kf.store.hot
        wb = hot.writeback if hot is not None else None
        stamp = None
        if wb is not None:
            stamp = wb.current_generation()
            if stamp == self._stamp:
                return 0  # nobody committed anything since the last check
        pairs = {(th, gid) for th, gid, _s in self._streams.values()}
        now = time.time()
        if hot is not None and wb is not None:
            alive = await hot.read(functools.partial(sqlite_hot.live_tokens, pairs=pairs, now=now))
        else:
            alive = await live_tokens(kf.store.engine, pairs, now)
        self._stamp = stamp
        cut = 0
        for ident, (th, _gid, stream) in list(self._streams.items()):
            if th not in alive:
                self._streams.pop(ident, None)
                with contextlib.suppress(Exception):
                    stream.cut("the access token or its grant was revoked")
                cut += 1
        return cut


@dataclass
class GatewayState:
    grants: TTLCache[tuple[Token, Grant]] = field(default_factory=grant_cache)
    providers: TTLCache[list[Provider]] = field(default_factory=lambda: TTLCache(PROVIDERS_TTL_S))
    #: (key,) per (provider id, envelope): a 1-tuple so "no key" differs from a miss.
    keys: TTLCache[tuple[str | None]] = field(default_factory=lambda: TTLCache(KEYS_TTL_S))
    prices: TTLCache[Price | str] = field(default_factory=lambda: TTLCache(PRICES_TTL_S))
    #: (limits,) per (provider id, model): a 1-tuple so "no limits known" differs from a miss.
    limits_cache: TTLCache[tuple[ModelLimits | None]] = field(
        default_factory=lambda: TTLCache(PRICES_TTL_S)
    )
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    streams: LiveStreams = field(default_factory=LiveStreams)

    @staticmethod
    def of(app: Starlette) -> GatewayState:
        state = getattr(app.state, "gateway", None)
        if state is None:
            state = GatewayState()
            app.state.gateway = state
        return state

    async def providers_of(self, kf: Keyfob, user_id: str) -> list[Provider]:
        """The person's providers in preference order; a ``Catalog`` that also carries
        their model aliases, so model resolution reads no database."""
        found = await self.providers.get_or_load(
            user_id, lambda: kf.store.providers.catalog(user_id)
        )
        assert found is not None  # a catalog is never None (maybe empty)
        return found

    def adapter(self, kf: Keyfob, kind: str) -> ProviderAdapter:
        adapter = self.adapters.get(kind)
        if adapter is None:
            try:
                adapter = kf.providers.get(kind)(kf.settings)
            except KeyError:
                raise GatewayError(
                    502,
                    f"no adapter of kind {kind!r} is installed",
                    code="provider_unavailable",
                    type_="api_error",
                ) from None
            self.adapters[kind] = adapter
        return adapter

    async def credential(self, kf: Keyfob, provider: Provider) -> str | None:
        """The provider's key, decrypted once, and only if the terms allow its use."""
        key_id = (provider.id, provider.credential_envelope)
        cached = self.keys.get(key_id)
        if cached is not None:
            return cached[0]
        try:
            api_key = await decrypt_key(kf, provider)
        except VaultError:
            raise GatewayError(
                500,
                "the provider's credential cannot be decrypted with this server's key ring",
                code="credential_unreadable",
                type_="api_error",
            ) from None
        verdict = check_credential(provider.kind, api_key)
        if not verdict.allowed:
            raise GatewayError(403, verdict.explanation, code="credential_forbidden_by_terms")
        api_key = clean_credential(api_key)  # one stored before normalisation existed
        self.keys.put(key_id, (api_key,))
        return api_key

    async def limits(self, kf: Keyfob, provider: Provider, model: str) -> ModelLimits | None:
        """The model's limits: the person's overrides, else shipped data (None: unknown)."""

        async def load() -> tuple[ModelLimits | None]:
            overrides = await kf.store.providers.limits(provider.id)
            # The first look-up of a model scans genai-prices' data (milliseconds): off the loop.
            return (await asyncio.to_thread(limits_for, provider.kind, model, overrides),)

        found = await self.limits_cache.get_or_load((provider.id, model), load)
        assert found is not None
        return found[0]

    async def price(self, kf: Keyfob, provider: Provider, model: str) -> Price:
        async def load() -> Price | str:
            try:
                found = price_for(
                    model,
                    overrides=await kf.store.providers.prices(provider.id),
                    is_local=provider.is_local,
                    kind=provider.kind,
                    base_url=provider.base_url,
                )
            except UnknownPrice as exc:
                return str(exc)
            if found.source == "local":
                return found  # the person's own hardware: no fees either
            return found.with_tool_prices(await self.limits(kf, provider, model))

        found = await self.prices.get_or_load((provider.id, model), load)
        assert found is not None
        if isinstance(found, str):
            raise GatewayError(400, found, code="model_price_unknown", param="model")
        return found
