"""The gateway in-process: ``InProcess`` (TestClient over create_app) plus helpers to link
providers, set prices and mint a token, and an OpenAI SDK client that talks to the app
through the TestClient (no sockets on Keyfob's side)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from keyfob.allowance.policy import Policy
from keyfob.providers.linking import link_provider
from keyfob.store.records import Token
from keyfob.tokens import Kind, hash_token, new_id, new_token
from tests.oauth_app import InProcess


def link(
    app: InProcess,
    name: str,
    base_url: str,
    *,
    models: list[str],
    kind: str = "openai_compatible",
    api_key: str | None = None,
    price: tuple[int, int] | None = None,
) -> None:
    """Link a provider; ``price`` is (input, output) micro-USD per million tokens, else
    the provider is local (free)."""
    kf = app.app.state.kf
    provider = app.run(
        link_provider,
        kf,
        user_id=app.owner.id,
        name=name,
        kind=kind,
        base_url=base_url,
        api_key=api_key,
        models=models,
        is_local=price is None,
    )
    for model in models if price else []:
        app.run(
            app.store.providers.set_price,
            provider.id,
            model,
            input_micro_usd_per_mtok=price[0],  # type: ignore[index]
            output_micro_usd_per_mtok=price[1],  # type: ignore[index]
        )


async def _mint(app: InProcess, models: list[str], policy: Policy, client_name: str) -> str:
    store = app.store
    client = await store.clients.add(
        name=client_name, redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=app.owner.id,
        client_id=client.id,
        models=models,
        cap_micro_usd=policy.primary_cap_micro_usd,
        policy_json=policy.to_json(),
    )
    token = new_token(Kind.ACCESS)
    now = time.time()
    await store.tokens.save(
        Token(
            hash_token(token),
            "access",
            grant.id,
            client.id,
            new_id(),
            "",
            None,
            now,
            now + 3600,
            None,
            None,
        )
    )
    return token


def mint(
    app: InProcess,
    models: list[str],
    *,
    cap_micro_usd: int = 10_000_000,
    client_name: str = "test app",
    **policy: Any,
) -> str:
    """An access token of a new app whose grant allows ``models`` under ``policy``."""
    from keyfob.allowance.policy import SpendLimit

    full = Policy(limits=(SpendLimit("month", cap_micro_usd),), **policy)
    return app.run(_mint, app, models, full, client_name)


@contextmanager
def sdk(app: InProcess, token: str) -> Iterator[openai.OpenAI]:
    """The official SDK over the app's TestClient, which outlives it (closing the SDK
    client would close the TestClient the other requests of the test still use)."""
    yield openai.OpenAI(
        base_url=app.url + "/v1", api_key=token, max_retries=0, http_client=app.client
    )


def ledger(app: InProcess) -> dict[str, dict[str, Any]]:
    entries = app.run(app.store.metering.entries, limit=1000)
    return {e.id: e.__dict__ for e in entries}
