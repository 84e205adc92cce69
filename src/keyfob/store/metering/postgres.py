"""Metering on PostgreSQL: one function call per reservation and one per settlement
(``postgres.sql``), through asyncpg directly with prepared statements.

Why not SQLAlchemy here: the hosted benchmark measured 4-8 ms of CPU per call and about
13 round trips through SQLAlchemy (statement compilation, a ping per pool checkout,
one statement per counter). The decisions are made by ``metering.rules`` in Python and
applied by the functions in one round trip each; only a counter that must be computed
from the ledger (after a grant edit, or a window added mid-period) takes a transaction
of several statements, once per counter and grant version.

Correctness: a limit of one counter holds with a conditional upsert (``spent + reserved
+ amount <= cap``), atomic in any number of processes; a limit summing several counters
(rolling windows, rates) takes the grant's row lock first, which serialises the
reservations of that grant. Counters are always locked in (scope, key) order.

Durability: a reservation is committed before its call goes upstream, and by default
(``db_reservation_durability = commit``) the common case's commit does not wait for the
WAL flush: the hold is visible to every process at once and on disk within three
``wal_writer_delay``; a settlement's commit never waits for it (``keyfob_settle`` turns
``synchronous_commit`` off for its own transaction). ``Replays`` puts back the recent
reservations and applies the recent settlements again after the connections were lost,
in case PostgreSQL itself crashed before flushing them. ``disk`` flushes every
reservation first. What each buys and costs: docs/ARCHITECTURE.md, "Hosted metering".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from keyfob.metering import rules
from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    CounterState,
    CredentialRevoked,
    GrantChanged,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
)
from keyfob.store.metering.pg_arguments import arguments, one_arguments
from keyfob.store.metering.pg_batch import RESERVE_ONE_UNFLUSHED, Batches
from keyfob.store.metering.pg_connections import ATTEMPTS, LOST, Connections, retried
from keyfob.store.metering.pg_replays import REPLAY_MIN_S, Replays
from keyfob.store.metering.pg_seed import seed_counters
from keyfob.store.metering.sqlite_tx import dead_settlement
from keyfob.tokens import new_sortable_id

#: What a common-case reservation waits for (``PostgresMetering.durability``).
Durability = Literal["commit", "disk"]

_ARGS = ", ".join(f"${i}" for i in range(1, 25))
#: A reservation in one transaction, flushed before its locks are released.
_RESERVE = f"SELECT outcome, refused, seeds, spent, reserved FROM keyfob_reserve({_ARGS})"  # noqa: S608 (constants)
#: The same reservation, its locks released before the flush (``postgres.sql``).
_RESERVE_DURABLY = f"CALL keyfob_reserve_durably({_ARGS})"
_ONE_ARGS = ", ".join(f"${i}" for i in range(1, 22))
#: The common case (one limit of one money counter) in one statement, each form.
_RESERVE_ONE = f"SELECT spent, reserved FROM keyfob_reserve_one({_ONE_ARGS})"  # noqa: S608 (constants)
_RESERVE_ONE_DURABLY = f"CALL keyfob_reserve_one_durably({_ONE_ARGS})"
#: A common-case reservation a crash of PostgreSQL undid, put back (``pg_replays``).
_RESTORE_ONE = f"SELECT keyfob_restore_one({_ONE_ARGS})"
#: After a lost connection the replay is tried this many times (20 ms apart at first,
#: then up to 0.5 s: about 30 s in all, a PostgreSQL restart), then left to the next
#: metering call.
REPLAY_TRIES = 80
_SETTLE_ONE = (
    "SELECT scope, key, spent, reserved FROM keyfob_settle_one("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 15))
    + ")"
)
#: At most this many calls in flight are remembered as reserved in the common case (a
#: forgotten one settles through ``keyfob_settle``, which is always right).
ONE_MAX = 100_000
_SETTLE = (
    "SELECT scope, key, spent, reserved FROM keyfob_settle("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 13))
    + ")"
)
log = logging.getLogger("keyfob.metering")

#: A reservation decided again after counters were computed from the ledger: each
#: computation answers for one grant version, so this only loops if the grant is edited
#: again meanwhile (which then raises ``GrantChanged``).
MAX_SEED_ROUNDS = 4


#: A dead process's open reservations are charged this many at a time.
DEAD_AT_ONCE = 256

#: How a reservation whose call never went upstream is released.
_NOT_SENT = Settlement(
    "failed", 0, "none", error="the metering connection was lost before the call was sent"
)


def plain_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://``) as asyncpg's DSN."""
    scheme, _, rest = url.partition("://")
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class PostgresMetering:
    """Reservations take one of two forms, the same rules either way: alone in this
    process, one transaction whose commit is flushed under its row locks (the fewest
    steps: the lowest latency for a lone call); while another reservation of this
    process is on its way, ``keyfob_reserve_durably``, which releases the locks before
    the flush (one more commit, but calls of one grant no longer wait for each other's
    disk syncs, and concurrent flushes are one). Measured: ``python -m bench.pg_metering``
    (docs/BENCHMARKS.md)."""

    #: "auto" as above; "one" or "procedure": always that form (the shared backend
    #: tests run the rules against each; ``bench.pg_metering`` compares them).
    form: Literal["auto", "one", "procedure"] = "auto"

    #: False: never the one-statement common case (``keyfob_reserve_one``), so the shared
    #: tests hold ``keyfob_reserve`` to the rules for single-counter limits too.
    common_case = True

    #: False: every common-case op in a round trip of its own, never batched with the
    #: process's other calls (``pg_batch``; the shared tests run both).
    batching = True

    @property
    def durability(self) -> Durability:
        """What a common-case reservation waits for before its call goes upstream
        (``db_reservation_durability``): ``"commit"``, its commit (visible to every
        process at once, on disk within three ``wal_writer_delay``; a crash of
        PostgreSQL meanwhile is repaired by this process's replay), or ``"disk"``, the
        WAL flush. Every other reservation is always flushed. Why and what it costs:
        docs/ARCHITECTURE.md, invariant 2."""
        return self._durability

    @durability.setter
    def durability(self, value: Durability) -> None:
        self._durability = value
        self.batches.unflushed = value == "commit"

    def __init__(
        self, pool: Connections, replays: Replays | None = None, durability: Durability = "commit"
    ) -> None:
        self.pool = pool
        #: Reservations of this process on their way to PostgreSQL now.
        self._reserving = 0
        #: entry id -> (scope, key): calls in flight reserved by ``keyfob_reserve_one``.
        self._one: dict[str, tuple[str, str]] = {}
        self.replays = replays or Replays()
        self._replaying: asyncio.Task[None] | None = None
        pool.on_lost = self._lost
        self.batches = Batches(pool)
        self.durability = durability

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_cache_size: int = 100,
        durability: Durability = "commit",
    ) -> PostgresMetering:
        """Connections of its own (``pg_connections``: no reset round trip per call).
        ``statement_cache_size=0`` for PgBouncer in transaction pooling (server-side
        prepared statements do not survive a pooled transaction)."""
        pool = Connections(plain_url(url), max_size, statement_cache_size)
        try:
            await pool.warm(min_size)
            delay_ms = await pool.fetchrow(
                "SELECT setting::integer FROM pg_settings WHERE name = 'wal_writer_delay'"
            )
        except BaseException:
            await pool.close()
            raise
        keep_s = max(REPLAY_MIN_S, 3 * (delay_ms[0] if delay_ms else 200) / 1000 + 1.0)
        return cls(pool, Replays(keep_s), durability)

    async def close(self) -> None:
        await self.batches.close()
        if self._replaying is not None:  # a replay still waiting for the server
            self._replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replaying
        await self.pool.close()

    # -- reserve -------------------------------------------------------------------------

    async def replay_if_due(self) -> None:
        """After lost connections: settle the recent settlements again (one replay at a
        time; the calls meanwhile wait for it, so no decision reads a counter that a lost
        settlement should have moved)."""
        if not self.replays.due:
            return
        async with self.replays.lock:
            if not self.replays.due:
                return
            losses, reservations, todo = self.replays.start()
            # independent rows: as many at once as there are connections; the
            # reservations first, so each settlement finds its row
            back = await asyncio.gather(*(self._restore(args) for args in reservations))
            await asyncio.gather(*(self._settle_call(e, s, now) for e, s, now in todo))
            self.replays.finished(losses)
            restored = sum(back)
            if restored:
                log.warning(
                    "put back %d reservations PostgreSQL lost (a crash before its WAL flush)",
                    restored,
                )
            if todo:
                log.info("replayed %d recent settlements after lost connections", len(todo))

    async def _restore(self, args: list[Any]) -> bool:
        """Put back one reservation if the ledger lacks it (idempotent: safe to repeat)."""
        row = await retried(
            functools.partial(self.pool.fetchrow, _RESTORE_ONE, *args), lost_too=True
        )
        return bool(row is not None and row[0])

    def _lost(self) -> None:
        """A connection found lost (in use, or closed by the server while idle): replay
        soon, not only at this process's next metering call, so that the reservations a
        crash of PostgreSQL undid are held again before other processes decide against
        the room they seem to leave."""
        self.replays.lost()
        if self._replaying is not None and not self._replaying.done():
            return
        with contextlib.suppress(RuntimeError):  # no loop (closing): the next call replays
            self._replaying = asyncio.get_running_loop().create_task(self._replay_soon())

    async def _replay_soon(self) -> None:
        for attempt in range(REPLAY_TRIES):
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.5))
            try:
                await self.replay_if_due()
            except LOST:
                continue
            except Exception:  # the next metering call replays, and says why
                log.exception("replay after lost connections failed")
                return
            if not self.replays.due:
                return

    def _one_counter(self, req: ReserveRequest) -> Counter | None:
        """The counter of a call in the common case (``keyfob_reserve_one``), or None."""
        if not self.common_case or len(req.limits) != 1 or req.refill is not None:
            return None
        [lim] = req.limits
        if len(lim.counters) != 1:
            return None
        [c] = lim.counters
        if c.scope != req.grant_id or rules.measure_of(c.key) != "usd" or c.key == WALLET_KEY:
            return None
        return c

    async def reserve(self, req: ReserveRequest) -> Reserved | Refused:
        await self.replay_if_due()
        counter = self._one_counter(req)
        if counter is not None:
            [lim] = req.limits
            row = await self._reserve_call(req, counter)
            await self.replay_if_due()
            if row is not None and row[1] is not None:
                if len(self._one) >= ONE_MAX:
                    self._one.clear()
                self._one[req.entry_id] = (counter.scope, counter.key)
                return Reserved(req.entry_id, (rules.state_of(lim, row[0], row[1]),))
            # not held: keyfob_reserve decides (a refusal, a change, counters to compute)
        for _ in range(MAX_SEED_ROUNDS):
            row = await self._reserve_call(req)
            await self.replay_if_due()  # a loss found on the way (decided conservatively)
            assert row is not None
            outcome = row["outcome"]
            if outcome == 0:
                return Reserved(
                    req.entry_id,
                    tuple(
                        rules.state_of(lim, spent, reserved)
                        for lim, spent, reserved in zip(
                            req.limits, row["spent"], row["reserved"], strict=True
                        )
                    ),
                )
            if outcome == 1:
                raise CredentialRevoked
            if outcome == 2:
                raise GrantChanged
            if outcome == 4:
                lim = req.limits[row["refused"] - 1]
                need = rules.hold_of(
                    rules.measure_of(lim.counters[-1].key),
                    req.amount_micro_usd,
                    req.tokens_reserved,
                )
                values = list(zip(row["spent"], row["reserved"], strict=True))
                return rules.refusal(lim, values, need, req.now)
            counters = [c for lim in req.limits for c in lim.counters]
            await self.seed([counters[i - 1] for i in row["seeds"]], req.basis)
        raise GrantChanged

    async def _reserve_call(self, req: ReserveRequest, one: Counter | None = None) -> Any:
        """One ``keyfob_reserve`` call (``keyfob_reserve_one`` for ``one``'s common case);
        when the connection is lost on the way, whether it committed is unknown: a
        reservation found in the ledger is released at once (settled as failed, nothing
        went upstream) and the call is tried again under a new entry id, so a lost
        connection can neither hold money nor drop a call."""
        for attempt in range(ATTEMPTS):
            try:
                durably = self.form == "procedure" or (self.form == "auto" and self._reserving)
                if one is None:
                    sql = _RESERVE_DURABLY if durably else _RESERVE
                    args = arguments(req)
                else:
                    args = one_arguments(req, one)
                    if self._durability == "commit":
                        row = await retried(
                            functools.partial(self.batches.reserve_one, req, args)
                            if self.batching
                            else functools.partial(self.pool.fetchrow, RESERVE_ONE_UNFLUSHED, *args)
                        )
                        if row is not None and row[1] is not None:
                            self.replays.reserved(args)
                        return row
                    sql = _RESERVE_ONE_DURABLY if durably else _RESERVE_ONE
                    if self.batching and self.form == "auto":
                        return await retried(functools.partial(self.batches.reserve_one, req, args))
                self._reserving += 1
                try:
                    return await retried(functools.partial(self.pool.fetchrow, sql, *args))
                finally:
                    self._reserving -= 1
            except LOST:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
                await self.replay_if_due()
                found = await retried(  # a read: safe to repeat on another loss
                    functools.partial(
                        self.pool.fetchrow, "SELECT status FROM ledger WHERE id = $1", req.entry_id
                    ),
                    lost_too=True,
                )
                if found is not None:
                    await self.settle(req.entry_id, _NOT_SENT)
                    req.entry_id = new_sortable_id()
        raise AssertionError("unreachable")

    async def seed(self, counters: Sequence[Counter], basis: float | None) -> None:
        """Compute counters from the ledger (``pg_seed``)."""
        await retried(lambda: seed_counters(self.pool, counters, basis), lost_too=True)

    # -- settle --------------------------------------------------------------------------

    def settle_now(
        self, entry_id: str, s: Settlement, now: float
    ) -> tuple[CounterState, ...] | None:
        return None  # a round trip always suspends

    async def settle(
        self, entry_id: str, s: Settlement, now: float | None = None
    ) -> tuple[CounterState, ...]:
        now = time.time() if now is None else now
        # kept for replay first: a settlement that fails because PostgreSQL is away is
        # applied by the replay once it is back, not left reserved for the reaper
        self.replays.add(entry_id, s, now)
        await self.replay_if_due()
        rows = None
        one = self._one.pop(entry_id, None)
        if one is not None:
            rows = await self._settle_call(entry_id, s, now, one) or None
        if rows is None:  # not the common case, or not any more: keyfob_settle decides
            rows = await self._settle_call(entry_id, s, now)
        await self.replay_if_due()  # a loss this settlement found on its way
        return tuple(CounterState(r[0], r[1], int(r[2]), int(r[3])) for r in rows)

    async def _settle_call(
        self, entry_id: str, s: Settlement, now: float, one: tuple[str, str] | None = None
    ) -> list[Any]:
        if one is not None and self.batching:
            scope, key = one
            got = await retried(
                lost_too=True,  # as below
                fn=lambda: self.batches.settle_one(entry_id, s, now, scope, key),
            )
            return [] if got is None else [(scope, key, got[0], got[1])]
        sql, more = (_SETTLE, ()) if one is None else (_SETTLE_ONE, one)
        return await retried(
            lost_too=True,  # a settlement only moves a row still reserved: safe to repeat
            fn=lambda: self.pool.fetch(
                sql,
                entry_id,
                s.status,
                s.cost_micro_usd,
                s.usage_source,
                s.input_tokens,
                s.output_tokens,
                s.cached_input_tokens,
                s.reasoning_tokens,
                s.needs_reconciliation,
                s.upstream_status,
                s.error,
                now,
                *more,
            ),
        )

    async def reconcile_dead(
        self, *, started_before: float | None = None, instance_ids: Sequence[str] = ()
    ) -> int:
        """Charge the reservations of dead processes in full, flagged
        (``sqlite_tx.dead_settlement``): those of the named instances, and any opened
        before ``started_before``."""
        conds: list[str] = []
        args: list[Any] = []
        if started_before is not None:
            args.append(started_before)
            conds.append(f"created_at < ${len(args)}")
        if instance_ids:
            args.append(list(instance_ids))
            conds.append(f"instance_id = ANY(${len(args)})")
        if not conds:
            return 0
        rows = await self.pool.fetch(
            "SELECT id, reserved_micro_usd FROM ledger WHERE status = 'reserved' AND ("  # noqa: S608 (constants)
            + " OR ".join(conds)
            + ")",
            *args,
        )
        now = time.time()
        for at in range(0, len(rows), DEAD_AT_ONCE):  # concurrently, over the connections
            await asyncio.gather(
                *(
                    self.settle(r["id"], dead_settlement(int(r["reserved_micro_usd"])), now)
                    for r in rows[at : at + DEAD_AT_ONCE]
                )
            )
        return len(rows)

    async def collect(self, now: float) -> int:
        """Delete time buckets that have left every window (nothing held on them)."""
        done = await self.pool.execute(
            "DELETE FROM counters WHERE expires_at < $1 AND reserved = 0", now
        )
        return int(done.split()[-1])
