"""Apps (OAuth clients), the grants people give them, and the credentials issued."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable

from sqlalchemy import and_, case, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyfob.store import schema as t
from keyfob.store.records import AuthCode, Client, DeviceCode, Grant, Token
from keyfob.tokens import new_id


class Unchanged:
    """The type of ``UNCHANGED``: an argument left out on purpose."""


UNCHANGED = Unchanged()


class RotationRefused(Exception):
    """A refresh token could not be rotated (``TokensRepo.rotate_refresh``); the same
    outcomes on every backend, in the same order of checks."""


class RefreshReplayed(RotationRefused):
    """Used before: two parties hold it, so its whole family was revoked."""


class RefreshExpired(RotationRefused):
    """Revoked or expired (and now spent, as the separate steps leave it)."""


class RefreshGrantEnded(RotationRefused):
    """The grant behind it was revoked or has ended (the token is spent)."""


#: Builds the successors of a spent refresh token, given the grant's end (None: never),
#: which neither new token may outlive.
Successors = Callable[[float | None], tuple[Token, ...]]


async def _apply_expiry(
    conn: AsyncConnection,
    grant_id: str,
    expires_at: float | None,
    now: float,
    token_ttls_s: tuple[int, int] | None,
) -> None:
    """The grant's end, and each live token's: its own lifetime from its creation, cut at
    the grant's end (so a later end given back extends tokens up to their own life)."""
    await conn.execute(
        update(t.grants)
        .where(t.grants.c.id == grant_id)
        .values(expires_at=expires_at, updated_at=now)
    )
    if token_ttls_s is None:
        raise ValueError("changing a grant's expiry needs the tokens' lifetimes")
    for kind, ttl in zip(("access", "refresh"), token_ttls_s, strict=True):
        natural = t.tokens.c.created_at + ttl
        ends = (
            natural
            if expires_at is None
            else case((natural < expires_at, natural), else_=expires_at)
        )
        await conn.execute(
            update(t.tokens)
            .where(
                t.tokens.c.grant_id == grant_id,
                t.tokens.c.kind == kind,
                t.tokens.c.revoked_at.is_(None),
            )
            .values(expires_at=ends)
        )


class ClientsRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(
        self,
        *,
        name: str,
        redirect_uris: list[str],
        is_public: bool,
        secret_hash: str | None,
        client_id: str | None = None,
        kind: str = "registered",
        metadata_json: str | None = None,
        registered_by: str | None = None,
        verified: bool = False,
    ) -> Client:
        now = time.time()
        values = dict(
            id=client_id or f"kfapp_{new_id()[:20]}",
            name=name,
            redirect_uris_json=json.dumps(redirect_uris),
            is_public=is_public,
            secret_hash=secret_hash,
            created_at=now,
            kind=kind,
            metadata_json=metadata_json,
            registered_by=registered_by,
            verified_at=now if verified else None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.clients).values(**values))
        client = await self.get(str(values["id"]))
        assert client is not None
        return client

    async def get(self, client_id: str) -> Client | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.clients).where(t.clients.c.id == client_id))).first()
        return Client.of(row) if row else None

    async def list(self) -> list[Client]:
        """Every app on this Keyfob: for admins' pages and internal lookups only; what a
        person is shown comes from ``visible_to``."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(t.clients).order_by(t.clients.c.created_at))).all()
        return [Client.of(r) for r in rows]

    async def visible_to(self, user_id: str) -> builtins.list[Client]:
        """The apps a person sees: those they registered and those they ever allowed.
        Another person's apps are theirs alone, and so is an app that registered itself
        (listing it would tell who uses what); admins see every app on the admin page."""
        c = t.clients.c
        granted = select(t.grants.c.client_id).where(t.grants.c.user_id == user_id)
        seen = (c.registered_by == user_id) | c.id.in_(granted)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(t.clients).where(seen).order_by(c.created_at))).all()
        return [Client.of(r) for r in rows]

    async def set_verified(self, client_id: str, verified: bool) -> bool:
        """An admin vouches for (or withdraws from) an app's name; False: no such app."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(t.clients)
                .where(t.clients.c.id == client_id)
                .values(verified_at=time.time() if verified else None)
            )
        return bool(done.rowcount)

    async def save_document(
        self,
        *,
        client_id: str,
        name: str,
        redirect_uris: builtins.list[str],
        metadata_json: str | None,
        fetched_at: float,
    ) -> Client:
        """Insert or refresh a public client described by a Client ID Metadata Document.

        Only rows of kind ``metadata_document`` are ever updated, so a document can never
        overwrite an app the owner registered."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(t.clients).where(t.clients.c.id == client_id))).first()
            if row is None:
                await conn.execute(
                    insert(t.clients).values(
                        id=client_id,
                        name=name,
                        redirect_uris_json=json.dumps(redirect_uris),
                        is_public=True,
                        secret_hash=None,
                        created_at=fetched_at,
                        kind="metadata_document",
                        metadata_json=metadata_json,
                        fetched_at=fetched_at,
                    )
                )
            elif row._mapping["kind"] == "metadata_document":
                same = row._mapping["name"] == name and json.loads(
                    row._mapping["redirect_uris_json"]
                ) == list(redirect_uris)
                await conn.execute(
                    update(t.clients)
                    .where(t.clients.c.id == client_id)
                    .values(
                        name=name,
                        redirect_uris_json=json.dumps(redirect_uris),
                        metadata_json=metadata_json,
                        fetched_at=fetched_at,
                        # an admin vouched for a name and redirect URIs, not for a URL
                        verified_at=row._mapping["verified_at"] if same else None,
                    )
                )
        client = await self.get(client_id)
        assert client is not None
        return client


class GrantsRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def upsert(
        self,
        *,
        user_id: str,
        client_id: str,
        models: list[str],
        cap_micro_usd: int,
        window: str = "month",
        timezone: str = "UTC",
        policy_json: str | None = None,
        expires_at: float | Unchanged | None = UNCHANGED,
        token_ttls_s: tuple[int, int] | None = None,
    ) -> Grant:
        """One active grant per (person, app): a new consent updates it in place.

        Window rows keep their spend; each reservation checks the cap of the policy in
        force at that moment, so a raised or lowered cap applies to the next call.
        ``expires_at`` (None: never) is applied as ``set_expiry`` does, with
        ``token_ttls_s`` = (access, refresh) lifetimes; left out, it is kept."""
        now = time.time()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(t.grants).where(
                        t.grants.c.user_id == user_id,
                        t.grants.c.client_id == client_id,
                        t.grants.c.revoked_at.is_(None),
                    )
                )
            ).first()
            if row:
                grant_id = row.id
                await conn.execute(
                    update(t.grants)
                    .where(t.grants.c.id == grant_id)
                    .values(
                        models_json=json.dumps(models),
                        cap_micro_usd=cap_micro_usd,
                        window=window,
                        timezone=timezone,
                        policy_json=policy_json,
                        updated_at=now,
                    )
                )
                if not isinstance(expires_at, Unchanged):
                    await _apply_expiry(conn, grant_id, expires_at, now, token_ttls_s)
            else:
                grant_id = new_id()
                await conn.execute(
                    insert(t.grants).values(
                        id=grant_id,
                        user_id=user_id,
                        client_id=client_id,
                        models_json=json.dumps(models),
                        cap_micro_usd=cap_micro_usd,
                        window=window,
                        timezone=timezone,
                        created_at=now,
                        updated_at=now,
                        revoked_at=None,
                        policy_json=policy_json,
                        expires_at=None if isinstance(expires_at, Unchanged) else expires_at,
                    )
                )
        grant = await self.get(grant_id)
        assert grant is not None
        return grant

    async def set_policy(
        self,
        grant_id: str,
        *,
        policy_json: str,
        cap_micro_usd: int,
        models: list[str] | None = None,
        window: str | None = None,
    ) -> None:
        values: dict[str, object] = dict(
            policy_json=policy_json, cap_micro_usd=cap_micro_usd, updated_at=time.time()
        )
        if models is not None:
            values["models_json"] = json.dumps(models)
        if window is not None:
            values["window"] = window
        async with self.engine.begin() as conn:
            await conn.execute(update(t.grants).where(t.grants.c.id == grant_id).values(**values))

    async def set_expiry(
        self, grant_id: str, expires_at: float | None, *, token_ttls_s: tuple[int, int]
    ) -> None:
        """Set (or lift, with None) when a grant ends, and cut its live tokens to match,
        in one transaction: every endpoint already refuses an expired token, so an expired
        grant is refused everywhere like a revoked one, with no check of its own."""
        async with self.engine.begin() as conn:
            await _apply_expiry(conn, grant_id, expires_at, time.time(), token_ttls_s)

    async def get(self, grant_id: str) -> Grant | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.grants).where(t.grants.c.id == grant_id))).first()
        return Grant.of(row) if row else None

    async def active_for(self, user_id: str, client_id: str) -> Grant | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.grants).where(
                        t.grants.c.user_id == user_id,
                        t.grants.c.client_id == client_id,
                        t.grants.c.revoked_at.is_(None),
                    )
                )
            ).first()
        return Grant.of(row) if row else None

    async def ever_for(self, user_id: str, client_id: str) -> bool:
        """Has this person ever allowed this app (a live or a revoked grant)?"""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.grants.c.id)
                    .where(t.grants.c.user_id == user_id, t.grants.c.client_id == client_id)
                    .limit(1)
                )
            ).first()
        return row is not None

    async def list(self, user_id: str, *, include_revoked: bool = False) -> list[Grant]:
        q = select(t.grants).where(t.grants.c.user_id == user_id)
        if not include_revoked:
            q = q.where(t.grants.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(t.grants.c.created_at))).all()
        return [Grant.of(r) for r in rows]

    async def revoke(self, grant_id: str) -> None:
        """End a grant and every token issued under it, in one transaction."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.grants)
                .where(t.grants.c.id == grant_id, t.grants.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.grant_id == grant_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )


class CodesRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def save(self, code: AuthCode) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.auth_codes).values(**code.__dict__))

    async def consume(self, code_hash: str, now: float) -> tuple[AuthCode | None, bool]:
        """Mark a code used. Returns (code, first_use); first_use is False on replay."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.auth_codes)
                .where(t.auth_codes.c.code_hash == code_hash, t.auth_codes.c.used_at.is_(None))
                .values(used_at=now)
            )
            row = (
                await conn.execute(
                    select(t.auth_codes).where(t.auth_codes.c.code_hash == code_hash)
                )
            ).first()
        if row is None:
            return None, False
        return AuthCode.of(row), result.rowcount == 1

    async def purge_expired(self, before: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(t.auth_codes).where(t.auth_codes.c.expires_at < before))


class TokensRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def save(self, *tokens: Token) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.tokens), [tok.__dict__ for tok in tokens])

    async def get(self, token_hash: str) -> Token | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(t.tokens).where(t.tokens.c.token_hash == token_hash))
            ).first()
        return Token.of(row) if row else None

    async def active_with_grant(
        self, token_hash: str, kind: str, now: float
    ) -> tuple[Token, Grant] | None:
        """A live token of ``kind`` and its live grant, or None (one indexed join)."""
        q = (
            select(t.tokens, t.grants)
            .join(t.grants, t.grants.c.id == t.tokens.c.grant_id)
            .where(
                and_(
                    t.tokens.c.token_hash == token_hash,
                    t.tokens.c.kind == kind,
                    t.tokens.c.revoked_at.is_(None),
                    t.tokens.c.expires_at > now,
                    t.grants.c.revoked_at.is_(None),
                )
            )
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        m = row._mapping
        token = Token(
            m[t.tokens.c.token_hash],
            m[t.tokens.c.kind],
            m[t.tokens.c.grant_id],
            m[t.tokens.c.client_id],
            m[t.tokens.c.family_id],
            m[t.tokens.c.scope],
            m[t.tokens.c.resource],
            m[t.tokens.c.created_at],
            m[t.tokens.c.expires_at],
            m[t.tokens.c.used_at],
            m[t.tokens.c.revoked_at],
        )
        grant = Grant(
            m[t.grants.c.id],
            m[t.grants.c.user_id],
            m[t.grants.c.client_id],
            tuple(json.loads(m[t.grants.c.models_json])),
            m[t.grants.c.cap_micro_usd],
            m[t.grants.c.window],
            m[t.grants.c.timezone],
            m[t.grants.c.created_at],
            m[t.grants.c.updated_at],
            m[t.grants.c.revoked_at],
            m[t.grants.c.policy_json],
            m[t.grants.c.expires_at],
        )
        return token, grant

    async def mark_used(self, token_hash: str, now: float) -> bool:
        """Mark a refresh token used; False when it was used before (a replay)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.token_hash == token_hash, t.tokens.c.used_at.is_(None))
                .values(used_at=now)
            )
        return result.rowcount == 1

    async def revoke(self, token_hash: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.token_hash == token_hash, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )

    async def revoke_family(self, family_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.family_id == family_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )

    async def rotate_refresh(self, token: Token, now: float, successors: Successors) -> None:
        """Spend the refresh token ``token`` (as read) and store its successors.

        Rotation (RFC 9700 4.14.2): a token used before and presented again means two
        parties hold it; which one is legitimate cannot be told, so the family ends, with
        no grace period. The checks, in order: spend it only if unused (else revoke the
        family: ``RefreshReplayed``), then refuse a revoked or expired token
        (``RefreshExpired``), then an ended grant (``RefreshGrantEnded``), both leaving
        it spent; then store ``successors(grant's end)``. The SQLite server does the
        same in one inline transaction (``sqlite_oauth.InlineTokensRepo``), PostgreSQL
        in one function call (``pg_oauth.PgTokensRepo``); ``Store.open`` always picks
        one of those, so these separate steps are the reference, not a path served."""
        if token.used_at is not None or not await self.mark_used(token.token_hash, now):
            await self.revoke_family(token.family_id)
            raise RefreshReplayed
        if token.revoked_at is not None or token.expires_at < now:
            raise RefreshExpired
        grant = await GrantsRepo(self.engine).get(token.grant_id)
        if grant is None or not grant.live(now):
            raise RefreshGrantEnded
        await self.save(*successors(grant.expires_at))


class DeviceCodesRepo:
    """Device authorization requests (RFC 8628). Every state change is one conditional
    UPDATE, so two pollers (or two people) racing on one code cannot both win."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def save(self, code: DeviceCode) -> bool:
        """Store a new request; False when its user code collides with a live one."""
        from sqlalchemy.exc import IntegrityError

        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    delete(t.device_codes).where(
                        t.device_codes.c.user_code_hash == code.user_code_hash,
                        t.device_codes.c.expires_at < code.created_at,
                    )
                )
                await conn.execute(insert(t.device_codes).values(**code.__dict__))
        except IntegrityError:
            return False
        return True

    async def get(self, device_code_hash: str) -> DeviceCode | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.device_codes).where(
                        t.device_codes.c.device_code_hash == device_code_hash
                    )
                )
            ).first()
        return DeviceCode.of(row) if row else None

    async def by_user_code(self, user_code_hash: str) -> DeviceCode | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.device_codes).where(t.device_codes.c.user_code_hash == user_code_hash)
                )
            ).first()
        return DeviceCode.of(row) if row else None

    async def decide(
        self,
        device_code_hash: str,
        *,
        approved: bool,
        user_id: str,
        grant_id: str | None,
        now: float,
    ) -> bool:
        """Record the person's decision on a pending, unexpired request (once)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.device_codes)
                .where(
                    t.device_codes.c.device_code_hash == device_code_hash,
                    t.device_codes.c.status == "pending",
                    t.device_codes.c.expires_at >= now,
                )
                .values(
                    status="approved" if approved else "denied",
                    user_id=user_id,
                    grant_id=grant_id,
                    decided_at=now,
                )
            )
        return bool(result.rowcount == 1)

    async def polled(self, device_code_hash: str, *, now: float, interval_s: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.device_codes)
                .where(t.device_codes.c.device_code_hash == device_code_hash)
                .values(last_polled_at=now, interval_s=interval_s)
            )

    async def consume(self, device_code_hash: str, now: float) -> bool:
        """approved -> used, exactly once: True for the one poll that gets the tokens."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.device_codes)
                .where(
                    t.device_codes.c.device_code_hash == device_code_hash,
                    t.device_codes.c.status == "approved",
                )
                .values(status="used", last_polled_at=now)
            )
        return bool(result.rowcount == 1)

    async def purge_expired(self, before: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(t.device_codes).where(t.device_codes.c.expires_at < before))
