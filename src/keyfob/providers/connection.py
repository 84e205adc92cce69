"""Trying a provider before it is linked, and saying what went wrong in words.

A provider at a dead address, or with a key the provider refuses, should be caught while
the person is still on the form, not by an app's first call. The test asks the provider
for its model list through the adapter itself (same URL, headers and key handling as a
real call), so a pass means Keyfob can reach it and the key opens it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from keyfob.context import Keyfob
from keyfob.pricing.prices import UnknownPrice, price_for
from keyfob.providers import UpstreamError, egress
from keyfob.store.records import Provider

TEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    #: The models the provider lists (empty when it lists none or the test failed).
    models: list[str] = field(default_factory=list)
    #: What went wrong, in words a person can act on ("" when ok).
    problem: str = ""
    #: Which form field the problem belongs to: base_url or api_key.
    field: str = "base_url"


def in_words(message: str, url: str, status: int | None = None) -> tuple[str, str]:
    """An upstream failure (its message names only the exception type, never a secret)
    as (words, the field to fix)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    where = f"{host}:{parts.port}" if parts.port else host
    if status in (401, 403):
        return (
            f"the provider refused the API key (HTTP {status}); check the key, and that it "
            "may list models",
            "api_key",
        )
    if status == 404:
        return (
            f"{host} has no model list at {url.rstrip('/')}/models (HTTP 404); check the base "
            "URL (for OpenAI-compatible servers it usually ends in /v1)",
            "base_url",
        )
    if status == 429:
        return ("the provider says too many requests (HTTP 429); try again in a minute", "")
    if status is not None:
        return (f"the provider answered HTTP {status} when asked for its models", "base_url")
    if "DNSError" in message or "gaierror" in message:
        return (
            f"cannot find the host {host}; check the address for typos, and this machine's network",
            "base_url",
        )
    if "Certificate" in message or "SSL" in message:
        return (f"the TLS certificate of {host} was not accepted", "base_url")
    if "Timeout" in message:
        return (f"{host} did not answer within {TEST_TIMEOUT_S:.0f} seconds", "base_url")
    if "Connector" in message or "Connection" in message or "unreachable" in message:
        return (
            f"nothing answers at {where}; is the server running, and is the address right?",
            "base_url",
        )
    if "JSON" in message or "ValueError" in message or "ContentType" in message:
        return (f"{host} answered, but not with a model list; check the base URL", "base_url")
    return (f"cannot reach {host} ({message})", "base_url")


async def try_connection(
    kf: Keyfob, *, kind: str, base_url: str, api_key: str | None, is_local: bool = False
) -> ConnectionResult:
    """Ask the provider for its models with this key, before anything is stored."""
    probe = Provider(
        "connection-test", "", "test", kind, base_url, None, "api_key", is_local, (), time.time()
    )
    adapter = kf.providers.get(kind)(kf.settings)
    try:
        if kf.http is not None:
            models = await asyncio.wait_for(
                adapter.list_models(kf.http, probe, api_key), TEST_TIMEOUT_S
            )
        else:
            timeout = aiohttp.ClientTimeout(total=TEST_TIMEOUT_S)
            async with egress.session(kf.settings, kf.resolve, timeout=timeout) as http:
                models = await adapter.list_models(http, probe, api_key)
    except TimeoutError:
        words, fix = in_words("Timeout", base_url)
        return ConnectionResult(False, problem=words, field=fix)
    except UpstreamError as exc:
        words, fix = in_words(str(exc), base_url, exc.status)
        return ConnectionResult(False, problem=words, field=fix)
    return ConnectionResult(True, sorted(set(models)))


async def unpriced_models(kf: Keyfob, provider: Provider) -> list[str]:
    """The provider's models no price is known for: calls to them would be refused (400)
    until the person sets a price, so they are flagged as soon as they are linked."""
    overrides = await kf.store.providers.prices(provider.id)
    missing = []
    for model in provider.models:
        try:
            price_for(
                model,
                overrides=overrides,
                is_local=provider.is_local,
                kind=provider.kind,
                base_url=provider.base_url,
            )
        except UnknownPrice:
            missing.append(model)
    return missing
