"""The OAuth repositories on SQLite's inline connection: refresh-token rotation and the
lookups around it (the token endpoint's and the gateway's bearer check).

Why a second implementation: through SQLAlchemy + aiosqlite the refresh grant is four
store round trips (about 4 ms of CPU, a thread handoff per statement); here it is one
read and one transaction of four statements on the connection the metering hot path
already holds (``sqlite_hot.SqliteHotPath``), about 0.1 ms. The reference is
``apps.TokensRepo`` / ``apps.ClientsRepo``: the same checks in the same order, the same
outcomes (``apps.RotationRefused``); PostgreSQL applies them in one function call
(``pg_oauth.py``, ``pg_oauth.sql``). ``Store`` picks these when it opens a SQLite file,
so nothing above the store knows which engine runs.
"""

from __future__ import annotations

import functools
import sqlite3
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store.apps import (
    ClientsRepo,
    RefreshExpired,
    RefreshGrantEnded,
    RefreshReplayed,
    Successors,
    TokensRepo,
)
from keyfob.store.records import Client, Grant, Token
from keyfob.store.sqlite_hot import SqliteHotPath


class _Mapped:
    """Lets a record's ``of()`` read a ``sqlite3.Row`` the way it reads a SQLAlchemy row."""

    __slots__ = ("_mapping",)

    def __init__(self, row: sqlite3.Row) -> None:
        self._mapping = row


def _row(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> _Mapped | None:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    row = cur.execute(sql, args).fetchone()
    return _Mapped(row) if row is not None else None


_SELECT_BY_HASH = (
    "SELECT token_hash, kind, grant_id, client_id, family_id, scope, resource, created_at, "
    "expires_at, used_at, revoked_at FROM tokens WHERE token_hash = ?"
)
_INSERT_ISSUED = (
    "INSERT INTO tokens (token_hash, kind, grant_id, client_id, family_id, scope, resource, "
    "created_at, expires_at, used_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def client(conn: sqlite3.Connection, client_id: str) -> Client | None:
    found = _row(conn, "SELECT * FROM clients WHERE id = ?", (client_id,))
    return Client.of(found) if found is not None else None


def grant_expiry(conn: sqlite3.Connection, grant_id: str) -> float | None:
    """When the grant ends by itself (None: never, or no such grant)."""
    row = conn.execute("SELECT expires_at FROM grants WHERE id = ?", (grant_id,)).fetchone()
    return float(row[0]) if row is not None and row[0] is not None else None


def token(conn: sqlite3.Connection, token_hash: str) -> Token | None:
    found = _row(conn, _SELECT_BY_HASH, (token_hash,))
    return Token.of(found) if found is not None else None


def active_with_grant(
    conn: sqlite3.Connection, token_hash: str, kind: str, now: float
) -> tuple[Token, Grant] | None:
    """A live token of ``kind`` and its live grant, or None (``TokensRepo.active_with_grant``
    on the inline connection: two primary-key lookups, no thread handoff)."""
    found = token(conn, token_hash)
    if found is None or found.kind != kind or found.revoked_at is not None:
        return None
    if found.expires_at <= now:
        return None
    row = _row(conn, "SELECT * FROM grants WHERE id = ? AND revoked_at IS NULL", (found.grant_id,))
    return (found, Grant.of(row)) if row is not None else None


#: Outcomes of ``rotate_refresh_tx`` other than success (``None``).
REPLAYED = "replayed"  # used before: the family was revoked
EXPIRED = "expired"  # revoked or expired (now marked used, as the reference path does)
GRANT_REVOKED = "grant_revoked"


def revoke_family_tx(conn: sqlite3.Connection, family_id: str) -> None:
    conn.execute(
        "UPDATE tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        (time.time(), family_id),
    )


def rotate_refresh_tx(
    conn: sqlite3.Connection, token_hash: str, family_id: str, now: float, new: tuple[Token, ...]
) -> str | None:
    """Spend a refresh token and store its successors, in the caller's one transaction.

    Mirrors the reference steps in their order: mark used only if unused (else revoke
    the family: a replay), then refuse a revoked or expired token, then a revoked grant
    (both with the token left spent, as the reference's separate commits leave it), then
    insert the new pair. Returns None on success, else one of the outcomes above.

    Its twin on PostgreSQL is ``keyfob_rotate_refresh`` (``pg_oauth.sql``): a change of
    rule here is a change there (and a migration), held together by
    tests/test_token_rotation.py, which runs both."""
    row = conn.execute(
        "UPDATE tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
        "RETURNING revoked_at, expires_at, grant_id",
        (now, token_hash),
    ).fetchone()
    if row is None:
        revoke_family_tx(conn, family_id)
        return REPLAYED
    revoked_at, expires_at, grant_id = row
    if revoked_at is not None or expires_at < now:
        return EXPIRED
    grant = conn.execute(
        "SELECT revoked_at, expires_at FROM grants WHERE id = ?", (grant_id,)
    ).fetchone()
    if grant is None or grant[0] is not None or (grant[1] is not None and grant[1] <= now):
        return GRANT_REVOKED  # revoked or expired
    ends = grant[1] if grant[1] is not None else float("inf")  # tokens never outlive it
    conn.executemany(
        _INSERT_ISSUED,
        [
            (
                t.token_hash,
                t.kind,
                t.grant_id,
                t.client_id,
                t.family_id,
                t.scope,
                t.resource,
                t.created_at,
                min(t.expires_at, ends),
                t.used_at,
                t.revoked_at,
            )
            for t in new
        ],
    )
    return None


_REFUSED = {
    REPLAYED: RefreshReplayed,
    EXPIRED: RefreshExpired,
    GRANT_REVOKED: RefreshGrantEnded,
}


class InlineTokensRepo(TokensRepo):
    """``TokensRepo`` with its hot operations on the inline connection."""

    def __init__(self, engine: AsyncEngine, hot: SqliteHotPath) -> None:
        super().__init__(engine)
        self.hot = hot

    async def get(self, token_hash: str) -> Token | None:
        return await self.hot.read(functools.partial(token, token_hash=token_hash))

    async def active_with_grant(
        self, token_hash: str, kind: str, now: float
    ) -> tuple[Token, Grant] | None:
        return await self.hot.read(
            functools.partial(active_with_grant, token_hash=token_hash, kind=kind, now=now)
        )

    async def rotate_refresh(self, token: Token, now: float, successors: Successors) -> None:
        """``TokensRepo.rotate_refresh`` as ONE transaction (mark used, check the grant,
        store the new pair) after one read of the grant's end."""
        hot = self.hot
        if token.used_at is not None:  # known replay: nothing to spend, the family ends
            await hot.run(functools.partial(revoke_family_tx, family_id=token.family_id))
            raise RefreshReplayed
        # the grant's end caps the new pair (rotate_refresh_tx refuses an ended grant)
        ends = await hot.read(functools.partial(grant_expiry, grant_id=token.grant_id))
        outcome = await hot.run(
            functools.partial(
                rotate_refresh_tx,
                token_hash=token.token_hash,
                family_id=token.family_id,
                now=now,
                new=successors(ends),
            )
        )
        if outcome is not None:
            raise _REFUSED[outcome]


class InlineClientsRepo(ClientsRepo):
    """``ClientsRepo`` whose lookup by id (every token request) is one indexed read on
    the inline connection (a SQLAlchemy round trip costs ~20x more)."""

    def __init__(self, engine: AsyncEngine, hot: SqliteHotPath) -> None:
        super().__init__(engine)
        self.hot = hot

    async def get(self, client_id: str) -> Client | None:
        return await self.hot.read(functools.partial(client, client_id=client_id))
