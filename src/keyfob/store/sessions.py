"""Server-side dashboard sessions: rows keyed by the SHA-256 of the cookie's session id."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t


@dataclass(frozen=True, slots=True)
class WebSession:
    id_hash: str
    user_id: str
    created_at: float
    last_seen_at: float


class SessionsRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, id_hash: str, user_id: str, now: float) -> WebSession:
        values = dict(id_hash=id_hash, user_id=user_id, created_at=now, last_seen_at=now)
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.web_sessions).values(**values))
        return WebSession(id_hash, user_id, now, now)

    async def get(self, id_hash: str) -> WebSession | None:
        c = t.web_sessions.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.web_sessions).where(c.id_hash == id_hash))).first()
        if row is None:
            return None
        return WebSession(row.id_hash, row.user_id, row.created_at, row.last_seen_at)

    async def touch(self, id_hash: str, now: float) -> None:
        c = t.web_sessions.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.web_sessions).where(c.id_hash == id_hash).values(last_seen_at=now)
            )

    async def delete(self, id_hash: str) -> bool:
        c = t.web_sessions.c
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(t.web_sessions).where(c.id_hash == id_hash))
        return bool(done.rowcount)

    async def delete_for_user(self, user_id: str) -> int:
        """End every session of ``user_id``; returns how many there were."""
        c = t.web_sessions.c
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(t.web_sessions).where(c.user_id == user_id))
        return int(done.rowcount or 0)

    async def delete_stale(self, idle_before: float, created_before: float) -> int:
        """Forget sessions idle since ``idle_before`` or older than ``created_before``."""
        c = t.web_sessions.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                delete(t.web_sessions).where(
                    (c.last_seen_at < idle_before) | (c.created_at < created_before)
                )
            )
        return int(done.rowcount or 0)

    async def count_for_user(self, user_id: str) -> int:
        c = t.web_sessions.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(c.id_hash).where(c.user_id == user_id))).all()
        return len(rows)
