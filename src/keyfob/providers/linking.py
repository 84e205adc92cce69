"""Linking a provider to a person: validation, terms, encryption, model discovery.

The CLI (``keyfob providers add``) and the web page both call ``link_provider``, so every
credential passes the same checks: a forbidden credential is refused here, before it is
ever stored (the terms forbid even storing a Claude subscription token).
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urlsplit

import aiohttp

from keyfob import addresses
from keyfob.context import Keyfob
from keyfob.providers import UpstreamError, egress
from keyfob.store.records import Provider
from keyfob.terms import check_credential, clean_credential
from keyfob.tokens import new_id

log = logging.getLogger("keyfob.providers")

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Model discovery is a convenience; a slow upstream must not hold up linking.
LIST_MODELS_TIMEOUT_S = 5.0


class LinkRefused(ValueError):
    """The provider cannot be linked; the message says why (never the key)."""


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name or ""):
        raise LinkRefused(
            "provider name must be 1-64 characters of letters, digits, '_', '.' "
            "or '-' (no '/': model ids are written PROVIDER/MODEL)"
        )


async def _refuse_private_host(
    host: str, allow: tuple[str, ...] = (), resolve: egress.Resolve | None = None
) -> None:
    """Hosted mode: an upstream on a private network would let people probe the server's.
    The rule is the upstream connector's (``egress``), which checks again at every
    connection: a name that resolves public now may not later."""
    networks = egress.parse_allowed(allow)
    if (host == "localhost" or host.endswith(".localhost")) and not networks:
        raise LinkRefused("hosted Keyfob cannot link providers on loopback addresses")
    literal = True
    try:
        addresses.parse(host)
    except addresses.NotAnAddress:
        literal = False
    try:
        await asyncio.wait_for(egress.check_host(host, 0, networks, resolve), timeout=5.0)
    except egress.EgressRefused:
        if literal:
            raise LinkRefused(
                "hosted Keyfob cannot link providers on loopback or private addresses"
            ) from None
        raise LinkRefused(
            f"host {host!r} resolves to a loopback or private address; hosted Keyfob cannot link it"
        ) from None
    except (OSError, TimeoutError):
        raise LinkRefused(f"cannot resolve the provider's host {host!r}") from None


async def normalise_base_url(
    base_url: str,
    *,
    hosted: bool,
    allow_private: tuple[str, ...] = (),
    resolve: egress.Resolve | None = None,
) -> str:
    """Check and normalise a base URL (no trailing slash). Hosted mode: its host must be
    public or inside ``allow_private`` (``Settings.upstream_allow_private``)."""
    url = (base_url or "").strip()
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise LinkRefused("base URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LinkRefused("base URL must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise LinkRefused(
            "base URL must not contain user:password@; give the API key "
            "separately so it is stored encrypted"
        )
    if parts.query or parts.fragment:
        raise LinkRefused("base URL must not have a query or fragment")
    if hosted:
        await _refuse_private_host(parts.hostname, allow_private, resolve)
    return url.rstrip("/")


async def checked_base_url(kf: Keyfob, base_url: str) -> str:
    """``normalise_base_url`` under this server's mode, allow-list and resolver."""
    return await normalise_base_url(
        base_url,
        hosted=kf.settings.mode == "hosted",
        allow_private=kf.settings.upstream_allow_private,
        resolve=kf.resolve,
    )


async def _discover_models(kf: Keyfob, provider: Provider, api_key: str | None) -> list[str]:
    adapter = kf.providers.get(provider.kind)(kf.settings)
    timeout = aiohttp.ClientTimeout(total=LIST_MODELS_TIMEOUT_S)
    try:
        if kf.http is not None:
            return await asyncio.wait_for(
                adapter.list_models(kf.http, provider, api_key), LIST_MODELS_TIMEOUT_S
            )
        async with egress.session(kf.settings, kf.resolve, timeout=timeout) as http:
            return await adapter.list_models(http, provider, api_key)
    except (UpstreamError, TimeoutError, aiohttp.ClientError) as exc:
        log.info("model discovery for provider %s failed: %s", provider.name, type(exc).__name__)
        return []


async def link_provider(
    kf: Keyfob,
    *,
    user_id: str,
    name: str,
    kind: str,
    base_url: str,
    api_key: str | None,
    models: list[str],
    is_local: bool = False,
) -> Provider:
    """Validate, check the terms, encrypt and store a provider; returns the stored record."""
    _check_name(name)
    if kind not in kf.providers.adapters:
        raise LinkRefused(
            f"no provider adapter of kind {kind!r}; installed: "
            f"{', '.join(kf.providers.kinds()) or 'none'}"
        )
    default = getattr(kf.providers.get(kind), "default_base_url", None)
    if not (base_url or "").strip() and default:
        base_url = default  # a hosted API (openai, anthropic, gemini, openrouter)
    url = await checked_base_url(kf, base_url)
    verdict = check_credential(kind, api_key)
    if not verdict.allowed:
        raise LinkRefused(verdict.explanation)
    # stored as an upstream needs it: no BOM, zero-width characters or "Bearer " prefix
    api_key = clean_credential(api_key)
    if await kf.store.providers.by_name(user_id, name) is not None:
        raise LinkRefused(f"a provider named {name!r} already exists")
    clean_models = [m.strip() for m in models if m and m.strip()]
    provider_id = new_id()
    envelope = kf.vault.encrypt(api_key, context=provider_id) if api_key else None
    provider = await kf.store.providers.add(
        user_id=user_id,
        name=name,
        kind=kind,
        base_url=url,
        credential_envelope=envelope,
        credential_kind=verdict.credential_kind,
        is_local=is_local,
        models=clean_models,
        provider_id=provider_id,
    )
    if not clean_models:
        found = await _discover_models(kf, provider, api_key)
        if found:
            await kf.store.providers.set_models(provider.id, found)
            refreshed = await kf.store.providers.get(provider.id)
            provider = refreshed or provider
    return provider


async def decrypt_key(kf: Keyfob, provider: Provider) -> str | None:
    """The provider's API key in clear (None when it has none). Never log the result."""
    if provider.credential_envelope is None:
        return None
    return kf.vault.decrypt(provider.credential_envelope, context=provider.id)
