"""Which provider and upstream model serve a requested model, under a grant.

A grant lists canonical ids ``PROVIDER/MODEL`` (``PROVIDER/*`` allows every model the
provider lists). A client may send:

- a canonical id, which always means what it says;
- one of the person's aliases (``fast`` -> ``local/gemma-3-270m``); alias names hold no
  ``/``, so an alias never shadows a canonical id;
- a bare model name, served by the first of the person's providers, in their preference
  order (``keyfob providers order``), that the grant allows it on.

The grant's list is always checked on the canonical target, so an alias can rename a
model but never widen what an app may use. Provider names contain no ``/``, so the first
``/`` always splits a canonical id, while a model name itself may contain more
(``openrouter/openai/gpt-4o``). Providers and aliases come from one cached snapshot
(``store.records.Catalog``): resolving reads no database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from keyfob.gateway.errors import GatewayError
from keyfob.store.records import Catalog, Grant, Provider

#: Alias names: like model names (``llama3:8b``, ``gpt-4o@fast``), never with a ``/``.
ALIAS_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


class AliasRefused(ValueError):
    """An alias that could never resolve, or would hide a canonical id."""


@dataclass(frozen=True)
class Resolved:
    provider: Provider
    #: The model name the upstream knows.
    upstream_model: str
    #: ``PROVIDER/MODEL``, as the ledger and the grant write it.
    canonical: str


def _allowed(grant: Grant, provider: Provider, model: str, allow_any: bool = False) -> bool:
    if allow_any:
        return True
    return f"{provider.name}/{model}" in grant.models or (
        f"{provider.name}/*" in grant.models and model in provider.models
    )


def not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model {model!r} does not exist or this app may not use it; "
        "GET /v1/models lists the models it may use",
        code="model_not_found",
        param="model",
    )


def aliases_of(providers: Sequence[Provider]) -> Mapping[str, str]:
    return providers.aliases if isinstance(providers, Catalog) else {}


def _find(
    grant: Grant, providers: Sequence[Provider], requested: str, allow_any: bool
) -> Resolved | None:
    name, sep, rest = requested.partition("/")
    if sep and rest:
        for p in providers:
            if p.name == name and _allowed(grant, p, rest, allow_any):
                return Resolved(p, rest, requested)
    for p in providers:  # preference order
        if (allow_any and requested in p.models) or _allowed(grant, p, requested):
            return Resolved(p, requested, f"{p.name}/{requested}")
    return None


def resolve(
    grant: Grant, providers: Sequence[Provider], requested: str, *, allow_any: bool = False
) -> Resolved:
    """``allow_any`` skips the grant's list: for the fallback model the person chose."""
    target = aliases_of(providers).get(requested)
    found = _find(grant, providers, requested if target is None else target, allow_any)
    if found is None:
        raise not_found(requested)
    return found


def granted_models(grant: Grant, providers: Sequence[Provider]) -> list[tuple[str, Provider]]:
    """The canonical ids a grant allows, with their provider (for GET /v1/models), then
    the person's aliases whose target the grant allows."""
    by_name = {p.name: p for p in providers}
    out: list[tuple[str, Provider]] = []
    seen: set[str] = set()
    for entry in grant.models:
        name, _, model = entry.partition("/")
        p = by_name.get(name)
        if p is None or not model:
            continue
        ids = [f"{name}/{m}" for m in p.models] if model == "*" else [entry]
        for cid in ids:
            if cid not in seen:
                seen.add(cid)
                out.append((cid, p))
    for alias, target in sorted(aliases_of(providers).items()):
        found = _find(grant, providers, target, False)
        if found is not None and alias not in seen:
            seen.add(alias)
            out.append((alias, found.provider))
    return out


def check_alias(name: str, target: str, providers: Sequence[Provider]) -> str:
    """Validate an alias against the person's providers; returns the target to store.

    The target is a canonical id of a linked provider, or a bare name one of them lists;
    an alias never points at another alias (no chains to follow on the hot path)."""
    target = target.strip()
    if not ALIAS_RE.fullmatch(name):
        raise AliasRefused(
            "an alias is 1-128 letters, digits or _ . : @ + - (no '/': "
            "PROVIDER/MODEL ids always mean what they say)"
        )
    if not target or len(target) > 255 or any(c.isspace() for c in target):
        raise AliasRefused("the target is a model id without spaces, at most 255 characters")
    provider, sep, model = target.partition("/")
    if sep and model and any(p.name == provider for p in providers):
        return target
    if any(target in p.models for p in providers):
        return target
    if target in aliases_of(providers):
        raise AliasRefused(f"{target!r} is an alias itself; point at a model")
    raise AliasRefused(
        f"no linked provider serves {target!r}; use PROVIDER/MODEL "
        "(`keyfob models list` shows every model)"
    )
