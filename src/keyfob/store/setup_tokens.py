"""One-time setup tokens (hosted mode): minted by ``keyfob setup-link`` or
``keyfob serve``, accepted by every process, used once."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t
from keyfob.tokens import hash_token

SETUP_TOKEN_TTL_S = 3600


class SetupTokensRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def mint(self, ttl_s: float = SETUP_TOKEN_TTL_S) -> str:
        """A new token (shown once; only its hash is kept). Expired ones are dropped."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        c = t.setup_tokens.c
        async with self.engine.begin() as conn:
            await conn.execute(delete(t.setup_tokens).where(c.expires_at < now))
            await conn.execute(
                insert(t.setup_tokens).values(
                    token_hash=hash_token(token), created_at=now, expires_at=now + ttl_s
                )
            )
        return token

    async def valid(self, token: str) -> bool:
        c = t.setup_tokens.c
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(c.token_hash).where(
                        c.token_hash == hash_token(token),
                        c.used_at.is_(None),
                        c.expires_at > time.time(),
                    )
                )
            ).first()
        return row is not None

    async def use(self, token: str) -> bool:
        """Mark the token used; False when it was not valid (or another request used it
        first: one conditional UPDATE, so two processes cannot both use it)."""
        c = t.setup_tokens.c
        now = time.time()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.setup_tokens)
                .where(c.token_hash == hash_token(token), c.used_at.is_(None), c.expires_at > now)
                .values(used_at=now)
            )
        return bool(result.rowcount)

    async def release(self, token: str) -> None:
        """Make a token used by a setup that failed (a weak password) usable again."""
        c = t.setup_tokens.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.setup_tokens).where(c.token_hash == hash_token(token)).values(used_at=None)
            )
