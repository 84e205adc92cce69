"""Which provider and upstream model serve a requested model, under a grant.

A grant lists canonical ids ``PROVIDER/MODEL`` (``PROVIDER/*`` allows every model the
provider lists). A client may send the canonical id or the bare model name; a bare name
resolves to the first of the owner's providers (in creation order) the grant allows it on.
Provider names contain no ``/``, so the first ``/`` always splits a canonical id, while a
model name itself may contain more (``openrouter/openai/gpt-4o``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keyfob.gateway.errors import GatewayError
from keyfob.store.records import Grant, Provider


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


def resolve(
    grant: Grant, providers: Sequence[Provider], requested: str, *, allow_any: bool = False
) -> Resolved:
    """``allow_any`` skips the grant's list: for the fallback model the person chose."""
    name, sep, rest = requested.partition("/")
    if sep and rest:
        for p in providers:
            if p.name == name and _allowed(grant, p, rest, allow_any):
                return Resolved(p, rest, requested)
    for p in providers:
        if (allow_any and requested in p.models) or _allowed(grant, p, requested):
            return Resolved(p, requested, f"{p.name}/{requested}")
    raise not_found(requested)


def granted_models(grant: Grant, providers: Sequence[Provider]) -> list[tuple[str, Provider]]:
    """The canonical ids a grant allows, with their provider (for GET /v1/models)."""
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
    return out
