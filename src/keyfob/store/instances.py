"""Serving processes and their heartbeats (hosted mode; see ``keyfob.instances``)."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t


class InstancesRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def beat(self, instance_id: str, now: float, *, started: bool = False) -> None:
        """Record that ``instance_id`` is alive now (``started``: its life began now)."""
        i = t.instances.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(t.instances)
                .where(i.id == instance_id)
                .values(heartbeat_at=now, **({"started_at": now} if started else {}))
            )
            if done.rowcount == 0:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                await conn.execute(
                    dialect.insert(t.instances)
                    .values(id=instance_id, started_at=now, heartbeat_at=now)
                    .on_conflict_do_nothing()
                )

    async def silent_since(self, before: float, *, but: str) -> list[str]:
        """Instances whose last heartbeat is older than ``before`` (other than ``but``)."""
        i = t.instances.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(i.id).where(i.heartbeat_at < before, i.id != but).order_by(i.id)
            )
            return [r[0] for r in rows]

    async def forget(self, instance_ids: list[str]) -> None:
        if not instance_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(delete(t.instances).where(t.instances.c.id.in_(instance_ids)))
