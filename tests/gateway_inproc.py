"""The gateway in-process: ``InProcess`` (TestClient over create_app) plus helpers to link
providers, set prices and mint a token, and an OpenAI SDK client that talks to the app
through the TestClient (no sockets on Keyfob's side)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from keyfob.allowance.policy import Policy
from keyfob.providers.linking import link_provider
from tests.oauth_app import InProcess
from tests.support import grant_token


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
    minted = await grant_token(
        app.store,
        user_id=app.owner.id,
        models=models,
        cap_micro_usd=policy.primary_cap_micro_usd,
        policy_json=policy.to_json(),
        client_name=client_name,
    )
    return str(minted["token"])


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
    entries = app.run(app.store.ledger.entries, limit=1000)
    return {e.id: e.__dict__ for e in entries}
