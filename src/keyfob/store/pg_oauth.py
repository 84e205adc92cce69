"""The OAuth repositories on PostgreSQL through asyncpg: refresh-token rotation in one
function call (``pg_oauth.sql``) and the token endpoint's lookups around it.

Why a second implementation: through SQLAlchemy the refresh grant is five store round
trips (the client, the token, spending it, the grant, the successors), each with a
pool checkout and its ping, several of them a transaction of their own; the hosted
benchmark measured about 165 grants per server CPU-second. Here it is three statements
of one round trip each (the client, the token with its grant's end, the rotation), on
the metering backend's connections (``metering/pg_connections.py``: no reset round trip,
and prepared statements only where ``statement_cache_size`` allows them).

The rules are ``apps.TokensRepo.rotate_refresh``'s, applied in ``keyfob_rotate_refresh``
exactly as ``sqlite_oauth.rotate_refresh_tx`` applies them on SQLite; the shared tests
(tests/test_token_rotation.py) hold every backend to them. ``Store.open`` picks these on
PostgreSQL, so nothing above the store knows which engine runs.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store.apps import (
    ClientsRepo,
    RefreshExpired,
    RefreshGrantEnded,
    RefreshReplayed,
    RotationRefused,
    Successors,
    TokensRepo,
)
from keyfob.store.metering.pg_connections import Connections, retried
from keyfob.store.records import Client, Token


class _Mapped:
    """Lets a record's ``of()`` read an asyncpg ``Record`` the way it reads a SQLAlchemy
    row."""

    __slots__ = ("_mapping",)

    def __init__(self, row: Any) -> None:
        self._mapping = row


#: The token and its grant's end (which caps its successors), in one indexed join.
_SELECT_BY_HASH = (
    "SELECT t.token_hash, t.kind, t.grant_id, t.client_id, t.family_id, t.scope, "
    "t.resource, t.created_at, t.expires_at, t.used_at, t.revoked_at, "
    "g.expires_at AS grant_expires_at "
    "FROM tokens t LEFT JOIN grants g ON g.id = t.grant_id WHERE t.token_hash = $1"
)
_ROTATE = (
    "SELECT outcome, grant_ends FROM keyfob_rotate_refresh("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 17))
    + ")"
)
_REVOKE_FAMILY = "UPDATE tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL"

#: Outcomes of ``keyfob_rotate_refresh`` (``pg_oauth.sql``).
ROTATED, REPLAYED, EXPIRED, GRANT_ENDED, STALE_END = 0, 1, 2, 3, 4
_REFUSED: dict[int, type[RotationRefused]] = {
    REPLAYED: RefreshReplayed,
    EXPIRED: RefreshExpired,
    GRANT_ENDED: RefreshGrantEnded,
}
#: A rotation whose successors were built for a grant's end that has moved since is
#: built again for the end the function saw; only an end edited again meanwhile loops.
MAX_ROUNDS = 4
#: Grants whose end was last seen, kept at most this many (a hint, never trusted).
MAX_ENDS_SEEN = 4096


class PgTokensRepo(TokensRepo):
    """``TokensRepo`` with the token endpoint's read and the rotation on asyncpg."""

    def __init__(self, engine: AsyncEngine, pool: Connections) -> None:
        super().__init__(engine)
        self.pool = pool
        #: grant id -> the end read with one of its tokens: what the successors are
        #: built for before the rotation checks it (under the grant's lock) in the call.
        self._ends_seen: dict[str, float | None] = {}

    def _seen(self, grant_id: str, ends: float | None) -> None:
        if len(self._ends_seen) >= MAX_ENDS_SEEN:
            self._ends_seen.clear()
        self._ends_seen[grant_id] = ends

    async def get(self, token_hash: str) -> Token | None:
        row = await self.pool.fetchrow(_SELECT_BY_HASH, token_hash)
        if row is None:
            return None
        self._seen(row["grant_id"], row["grant_expires_at"])
        return Token.of(_Mapped(row))

    async def rotate_refresh(self, token: Token, now: float, successors: Successors) -> None:
        """``TokensRepo.rotate_refresh`` as one ``keyfob_rotate_refresh`` call (the same
        checks as ``sqlite_oauth.rotate_refresh_tx``, in PL/pgSQL), with the successors
        built for the grant's end read with the token; if that end has moved, nothing
        was changed and they are built again for the new one.

        A deadlock or serialisation failure rolled the call back whole, so it is tried
        again; a lost connection is not: whether it committed is unknown, and trying a
        spent token again would revoke its family."""
        family = token.family_id
        if token.used_at is not None:  # known replay: nothing to spend, the family ends
            await retried(functools.partial(self.pool.execute, _REVOKE_FAMILY, family, now))
            raise RefreshReplayed
        ends = self._ends_seen.get(token.grant_id)  # unseen: tried as "never"
        for _ in range(MAX_ROUNDS):
            args = _rotation_args(token, now, ends, successors(ends))
            row = await retried(functools.partial(self.pool.fetchrow, _ROTATE, *args))
            outcome = row["outcome"]
            if outcome == ROTATED:
                return
            if outcome != STALE_END:
                raise _REFUSED[outcome]()
            ends = row["grant_ends"]
            self._seen(token.grant_id, ends)
        raise RuntimeError(f"grant {token.grant_id}'s end kept changing during a rotation")


def _rotation_args(
    token: Token, now: float, ends: float | None, new: tuple[Token, ...]
) -> list[Any]:
    return [
        token.token_hash,
        token.grant_id,
        token.family_id,
        now,
        ends,
        [t.token_hash for t in new],
        [t.kind for t in new],
        [t.grant_id for t in new],
        [t.client_id for t in new],
        [t.family_id for t in new],
        [t.scope for t in new],
        [t.resource for t in new],
        [t.created_at for t in new],
        [t.expires_at for t in new],
        [t.used_at for t in new],
        [t.revoked_at for t in new],
    ]


class PgClientsRepo(ClientsRepo):
    """``ClientsRepo`` whose lookup by id (every token request) is one statement on
    asyncpg (through SQLAlchemy it is a pool checkout, a ping and the query)."""

    def __init__(self, engine: AsyncEngine, pool: Connections) -> None:
        super().__init__(engine)
        self.pool = pool

    async def get(self, client_id: str) -> Client | None:
        row = await self.pool.fetchrow("SELECT * FROM clients WHERE id = $1", client_id)
        return Client.of(_Mapped(row)) if row is not None else None
