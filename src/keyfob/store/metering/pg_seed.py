"""Computing counters from the ledger on PostgreSQL (``rules.seed_sql``), in one
transaction per call that needs it (after a grant edit, or a window added mid-period).
"""

from __future__ import annotations

from collections.abc import Sequence

from keyfob.metering import rules
from keyfob.metering.types import Counter
from keyfob.store.metering.pg_connections import Connections
from keyfob.store.metering.sqlite_tx import keys_json, keys_of


def dollar(sql: str) -> str:
    """``?`` placeholders (shared with SQLite) as asyncpg's ``$1, $2, ...``."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


async def seed_counters(
    pool: Connections, counters: Sequence[Counter], basis: float | None
) -> None:
    """Compute ``counters`` from the ledger in one transaction.

    Locks are taken in the order a settlement takes them, ledger rows before counters,
    so the two never wait on each other in a cycle: first the open rows of every
    counter's period (in id order), then the counters (in (scope, key) order). A
    settlement in progress therefore finishes first (and is summed as settled), one
    that starts later reads the key added to its row, and a reservation holding a
    counter waits for it to be computed."""
    ordered = sorted(counters, key=lambda c: (c.scope, c.key))
    async with pool.acquire() as conn, conn.transaction():
        scopes = sorted({c.scope for c in ordered})
        since = min(c.starts_at for c in ordered if c.starts_at is not None)
        await conn.execute(
            "SELECT id FROM ledger WHERE grant_id = ANY($1) AND created_at >= $2 "
            "AND status = 'reserved' ORDER BY id FOR UPDATE",
            scopes,
            since,
        )
        for c in ordered:
            await conn.execute(
                "INSERT INTO counters (scope, key, spent, reserved, expires_at) "
                "VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
                c.scope,
                c.key,
                c.expires_at,
            )
            await conn.execute(
                "SELECT 1 FROM counters WHERE scope = $1 AND key = $2 FOR UPDATE",
                c.scope,
                c.key,
            )
        for c in ordered:
            where, args = rules.period_where(c)
            open_rows = await conn.fetch(
                dollar(
                    f"SELECT id, window_keys_json FROM ledger WHERE {where} "  # noqa: S608 (constants)
                    "AND status = 'reserved' ORDER BY id"
                ),
                *args,
            )
            sql, args = rules.seed_sql(c)
            sums = await conn.fetchrow(dollar(sql), *args)
            assert sums is not None
            for r in open_rows:
                more = rules.tagged(keys_of(r["window_keys_json"]), c.key)
                if more is not None:
                    await conn.execute(
                        "UPDATE ledger SET window_keys_json = $1 WHERE id = $2",
                        keys_json(more),
                        r["id"],
                    )
            await conn.execute(
                "UPDATE counters SET spent = $3, reserved = $4, seeded_for = $5 "
                "WHERE scope = $1 AND key = $2",
                c.scope,
                c.key,
                int(sums[0]),
                int(sums[1]),
                basis,
            )
