"""Many people on one Keyfob: invite codes, one-time password links, disabling a person
in one transaction, and the aggregate usage admins see (never anyone's keys).

Codes are 256-bit random and stored as SHA-256 only (like Keyfob's tokens); every state
change is one conditional UPDATE, so two browsers racing on one code cannot both win.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t
from keyfob.store.metering.writeback import synced
from keyfob.store.records import User
from keyfob.tokens import new_id


class CodeRefused(ValueError):
    """An invite or password code that is unknown, used up, expired or revoked."""


class NameTaken(ValueError):
    """The username already belongs to someone."""


@dataclass(frozen=True, slots=True)
class Invite:
    id: str
    created_by: str | None
    note: str | None
    max_uses: int
    uses: int
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable(self, now: float) -> bool:
        return (
            self.revoked_at is None
            and self.uses < self.max_uses
            and (self.expires_at is None or self.expires_at > now)
        )

    @classmethod
    def of(cls, row: Any) -> Invite:
        m = row._mapping
        return cls(
            m["id"],
            m["created_by"],
            m["note"],
            m["max_uses"],
            m["uses"],
            m["created_at"],
            m["expires_at"],
            m["revoked_at"],
        )


@dataclass(frozen=True, slots=True)
class PersonUsage:
    user_id: str
    calls: int
    cost_micro_usd: int
    last_call_at: float | None


def _usable_invite(code_hash: str, now: float) -> Any:
    c = t.invites.c
    return (
        (c.code_hash == code_hash)
        & c.revoked_at.is_(None)
        & (c.uses < c.max_uses)
        & (c.expires_at.is_(None) | (c.expires_at > now))
    )


class PeopleRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- invites ------------------------------------------------------------------------

    async def add_invite(
        self,
        code_hash: str,
        *,
        created_by: str | None,
        max_uses: int,
        expires_at: float | None,
        note: str | None = None,
    ) -> Invite:
        values = dict(
            id=new_id(),
            code_hash=code_hash,
            created_by=created_by,
            note=note,
            max_uses=max_uses,
            uses=0,
            created_at=time.time(),
            expires_at=expires_at,
            revoked_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.invites).values(**values))
        values.pop("code_hash")
        return Invite(**values)  # type: ignore[arg-type]

    async def invites(self) -> list[Invite]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(t.invites).order_by(t.invites.c.created_at.desc()))
            ).all()
        return [Invite.of(r) for r in rows]

    async def invite(self, invite_id: str) -> Invite | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.invites).where(t.invites.c.id == invite_id))).first()
        return Invite.of(row) if row else None

    async def invite_usable(self, code_hash: str, now: float) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(t.invites.c.id).where(_usable_invite(code_hash, now)))
            ).first()
        return row is not None

    async def revoke_invite(self, invite_id: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(t.invites)
                .where(t.invites.c.id == invite_id, t.invites.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(done.rowcount)

    async def create_person(
        self,
        username: str,
        password_hash: str,
        *,
        timezone: str = "UTC",
        role: str = "member",
        invite_hash: str | None = None,
    ) -> User:
        """A new person; with ``invite_hash``, one use of that invite is taken in the same
        transaction (so a refused name gives the use back, and a used-up code makes no
        one)."""
        now = time.time()
        values = dict(
            id=new_id(),
            username=username,
            password_hash=password_hash,
            timezone=timezone,
            is_owner=False,
            created_at=now,
            role=role,
        )
        try:
            async with self.engine.begin() as conn:
                if invite_hash is not None:
                    taken = await conn.execute(
                        update(t.invites)
                        .where(_usable_invite(invite_hash, now))
                        .values(uses=t.invites.c.uses + 1)
                    )
                    if taken.rowcount != 1:
                        raise CodeRefused(
                            "this invite code is not valid (used up, expired or revoked)"
                        )
                await conn.execute(insert(t.users).values(**values))
        except IntegrityError:
            raise NameTaken(f"the username {username!r} is taken") from None
        return User(**values)  # type: ignore[arg-type]

    # --- one-time password links ------------------------------------------------------

    async def add_password_link(
        self, code_hash: str, user_id: str, *, created_by: str | None, ttl_s: float
    ) -> float:
        """A new link for the person; every older unused link of theirs stops working."""
        now = time.time()
        pr = t.password_resets.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.password_resets)
                .where(pr.user_id == user_id, pr.used_at.is_(None))
                .values(used_at=now)
            )
            await conn.execute(
                insert(t.password_resets).values(
                    code_hash=code_hash,
                    user_id=user_id,
                    created_by=created_by,
                    created_at=now,
                    expires_at=now + ttl_s,
                    used_at=None,
                )
            )
        return now + ttl_s

    async def password_link_user(self, code_hash: str, now: float) -> str | None:
        """Whose live link this is (None when unknown, used or expired)."""
        pr = t.password_resets.c
        q = select(pr.user_id).where(
            pr.code_hash == code_hash, pr.used_at.is_(None), pr.expires_at > now
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return str(row[0]) if row else None

    async def use_password_link(self, code_hash: str, password_hash: str, now: float) -> str:
        """Set the password through a live link, once: marks the link used, stores the
        hash and ends every session of the person, in one transaction. Returns the
        person's id."""
        pr = t.password_resets.c
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(pr.user_id).where(
                        pr.code_hash == code_hash, pr.used_at.is_(None), pr.expires_at > now
                    )
                )
            ).first()
            if row is None:
                raise CodeRefused("this link is not valid (used, replaced or expired)")
            user_id = str(row[0])
            done = await conn.execute(
                update(t.password_resets)
                .where(pr.code_hash == code_hash, pr.used_at.is_(None))
                .values(used_at=now)
            )
            if done.rowcount != 1:
                raise CodeRefused("this link is not valid (used, replaced or expired)")
            await conn.execute(
                update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash)
            )
            await conn.execute(delete(t.web_sessions).where(t.web_sessions.c.user_id == user_id))
        return user_id

    # --- disabling ----------------------------------------------------------------------

    async def disable(self, user_id: str) -> int:
        """Disable a person in one transaction: mark them, revoke every live grant and
        its tokens (so every endpoint refuses them as revoked ones, on the next call),
        void their password links and end their sessions. Returns the grants revoked."""
        now = time.time()
        g = t.grants.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.users)
                .where(t.users.c.id == user_id, t.users.c.disabled_at.is_(None))
                .values(disabled_at=now)
            )
            live = select(g.id).where(g.user_id == user_id)
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.grant_id.in_(live), t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            revoked = await conn.execute(
                update(t.grants)
                .where(g.user_id == user_id, g.revoked_at.is_(None))
                .values(revoked_at=now, updated_at=now)
            )
            await conn.execute(
                update(t.password_resets)
                .where(
                    t.password_resets.c.user_id == user_id,
                    t.password_resets.c.used_at.is_(None),
                )
                .values(used_at=now)
            )
            await conn.execute(delete(t.web_sessions).where(t.web_sessions.c.user_id == user_id))
        return int(revoked.rowcount or 0)

    # --- what admins see --------------------------------------------------------------

    async def usage_by_person(self, since: float | None = None) -> dict[str, PersonUsage]:
        """Calls and cost per person (in-flight calls at their hold), from the ledger."""
        await synced()
        L = t.ledger.c
        from keyfob.store.reports import _charged

        q = select(
            L.user_id,
            func.count(),
            func.coalesce(func.sum(_charged()), 0),
            func.max(L.created_at),
        )
        if since is not None:
            q = q.where(L.created_at >= since)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.group_by(L.user_id))).all()
        return {
            r[0]: PersonUsage(r[0], int(r[1]), int(r[2]), float(r[3]) if r[3] else None)
            for r in rows
        }

    async def counts_by_person(self) -> dict[str, tuple[int, int]]:
        """(live grants, providers linked) per person: numbers only, never the keys."""
        g, p = t.grants.c, t.providers.c
        async with self.engine.connect() as conn:
            grants = (
                await conn.execute(
                    select(g.user_id, func.count())
                    .where(g.revoked_at.is_(None))
                    .group_by(g.user_id)
                )
            ).all()
            providers = (
                await conn.execute(select(p.user_id, func.count()).group_by(p.user_id))
            ).all()
        out: dict[str, tuple[int, int]] = {}
        for uid, n in grants:
            out[uid] = (int(n), 0)
        for uid, n in providers:
            out[uid] = (out.get(uid, (0, 0))[0], int(n))
        return out
