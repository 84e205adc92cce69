"""Access tokens for the owner's own local testing (``keyfob dev-token``).

Why: testing an app against Keyfob otherwise needs the whole sign-in dance. A dev token
is an ordinary access token on an ordinary grant, so the gateway treats it exactly as an
app's: a small cap (default $1 a day), a short life (default one hour, at most a day)
that is also the grant's end, and no refresh token. The token is returned once and
stored only as its hash. Refused in hosted mode: there the owner of the server is not
the person whose money an app spends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.context import Keyfob
from keyfob.oauth.clients import register_app
from keyfob.oauth.grants import ACCESS, token_ttls_s
from keyfob.store.records import Client, Grant, Token, User
from keyfob.tokens import Kind, hash_token, new_id, new_token

DEFAULT_CAP_MICRO_USD = 1_000_000
DEFAULT_TTL_S = 3600
MAX_TTL_S = 86400
#: Where a dev app registered on the fly would send a person back (RFC 8252 loopback:
#: any port), so the same app can later sign in for real.
DEV_REDIRECT_URI = "http://127.0.0.1/callback"


class DevTokenRefused(Exception):
    """Why no dev token was made; the message is for the owner."""


@dataclass(frozen=True)
class DevToken:
    token: str
    client: Client
    grant: Grant
    expires_at: float
    created_app: bool


async def mint_dev_token(
    kf: Keyfob,
    *,
    app_ref: str,
    cap_micro_usd: int = DEFAULT_CAP_MICRO_USD,
    window: str = "day",
    ttl_s: int = DEFAULT_TTL_S,
    models: list[str] | None = None,
    replace: bool = False,
    user: User | None = None,
) -> DevToken:
    """An access token for the app named (or with client_id) ``app_ref``, registering a
    public app of that name when there is none."""
    if kf.settings.mode == "hosted":
        raise DevTokenRefused(
            "dev tokens are for a personal server; on a hosted server apps sign people in"
        )
    if not 60 <= ttl_s <= MAX_TTL_S:
        raise DevTokenRefused("a dev token lives 1 minute to 24 hours")
    if cap_micro_usd <= 0:
        raise DevTokenRefused("a dev token needs a cap above zero")
    store = kf.store
    owner = user if user is not None else await store.users.owner()
    if owner is None:
        raise DevTokenRefused("no owner yet: run `keyfob init` first")
    linked = [f"{p.name}/{m}" for p in await store.providers.list(owner.id) for m in p.models]
    chosen = list(dict.fromkeys(models)) if models else linked
    unknown = [m for m in chosen if m not in linked]
    if unknown:
        raise DevTokenRefused(f"not a linked model: {', '.join(unknown)}")
    if not chosen:
        raise DevTokenRefused("link a provider first (`keyfob providers add`)")
    # the person's own apps only: another person's apps are theirs alone
    mine = await store.clients.visible_to(owner.id)
    found = [c for c in mine if app_ref in (c.id, c.name)]
    if len(found) > 1:
        raise DevTokenRefused(f"several apps are named {app_ref!r}; use the client_id")
    created = not found
    if found:
        client = found[0]
    else:
        client, _secret = await register_app(
            store, name=app_ref, redirect_uris=[DEV_REDIRECT_URI], public=True, registered_by=owner
        )
    now = time.time()
    existing = await store.grants.active_for(owner.id, client.id)
    if existing is not None and existing.live(now):
        if not replace:
            raise DevTokenRefused(
                f"{client.name!r} already has a live grant (from a sign-in or an earlier dev "
                "token); --replace ends it, and its tokens, and makes a new one"
            )
        await store.grants.revoke(existing.id)
    elif existing is not None:
        await store.grants.revoke(existing.id)  # expired: make a fresh one
    ends = now + ttl_s
    grant = await store.grants.upsert(
        user_id=owner.id,
        client_id=client.id,
        models=chosen,
        cap_micro_usd=cap_micro_usd,
        window=window,
        timezone=owner.timezone,
        policy_json=Policy(limits=(SpendLimit(window, cap_micro_usd),)).to_json(),
        expires_at=ends,
        token_ttls_s=token_ttls_s(kf.settings),
    )
    token = new_token(Kind.ACCESS)
    await store.tokens.save(
        Token(
            hash_token(token),
            ACCESS,
            grant.id,
            client.id,
            new_id(),
            "",
            None,  # this gateway's (RFC 8707: Keyfob's own tokens; the CLI may not know the
            # port the server listens on, so it cannot name the resource)
            now,
            ends,
            None,
            None,
        )
    )
    return DevToken(token, client, grant, ends, created)
