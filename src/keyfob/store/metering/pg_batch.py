"""The common case's settlements and reservations, several to a round trip when calls
overlap (``keyfob_meter_many`` in ``postgres.sql``).

Why: in hosted mode each call costs PostgreSQL two transactions and Keyfob two round
trips (a reservation, a settlement), and the round trip's fixed part (the protocol, the
event loop's wake-ups, a transaction's begin and commit) was most of hosted mode's CPU
per call beyond personal mode's (docs/BENCHMARKS.md, "Hosted mode: where the time
goes"). A process keeps at most ``lanes`` round trips of these on their way; whatever
its calls ask meanwhile waits and goes in the next one, as one statement and one
transaction. A lone call therefore waits for nothing: it goes at once, by the
one-statement functions as before (the lowest latency), and batches form only when
calls overlap, growing with the load (the more in flight, the fewer round trips per
call), as a database's group commit does.

The rules are the same as each op alone: a batch runs exactly ``keyfob_settle_one`` or
``keyfob_reserve_one`` for each op, in (scope, key) order with settlements first (so two
batches never lock counters in a cycle, and a reservation sees the room the process's
settlements just freed), and commits waiting for the WAL flush when it holds any
reservation. What an op's function would not have done (no row) is answered as None,
and the caller asks the general function, as for a lone call. A batch that fails for
another reason than a lost connection or a conflict is sent again op by op, so one op's
error is never another call's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from keyfob.metering.types import ReserveRequest, Settlement
from keyfob.store.metering.pg_connections import LOST, Connections

log = logging.getLogger("keyfob.metering")

#: Round trips of batched ops a process keeps on their way at once. Two: a lone
#: settlement on its way never delays the next call's reservation, and under load each
#: round trip carries what arrived during the other.
LANES = 2
#: At most this many ops in one statement (its arguments stay small).
MAX_OPS = 64

_MANY = (
    "SELECT o_spent, o_reserved FROM keyfob_meter_many("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 33))
    + ")"
)
_SETTLE_ONE = (
    "SELECT spent, reserved FROM keyfob_settle_one("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 15))
    + ")"
)
_RESERVE_ONE = (
    "SELECT spent, reserved FROM keyfob_reserve_one("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 22))
    + ")"
)

#: (spent, reserved) of the op's counter after it, or None: its function did nothing.
Outcome = tuple[int, int] | None


@dataclass
class _Op:
    kind: int  # 0: a settlement, 1: a reservation
    scope: str
    key: str
    #: The op's function's arguments, in its own order.
    args: list[Any]
    future: asyncio.Future[Outcome] = field(default_factory=lambda: _loop().create_future())


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


#: For each of keyfob_meter_many's 32 argument arrays, where the op's own argument
#: list has it (None: not an argument of that kind of op). Settlement args are
#: keyfob_settle_one's: id, status, cost, source, input, output, cached, reasoning,
#: recon, upstream, error, now, scope, key; reservation args are keyfob_reserve_one's:
#: id, token, grant, user, client, provider, model, endpoint, streamed, amount, tokens,
#: now, basis, downgraded, instance, scope, key, start, expires, cap, need.
_COLUMNS: tuple[tuple[int | None, int | None], ...] = (
    (0, 0),  # id
    (12, 15),  # scope
    (13, 16),  # key
    (11, 11),  # now
    *((i, None) for i in range(1, 11)),  # status .. error
    *((None, i) for i in range(1, 11)),  # token .. tokens
    (None, 12),  # basis
    (None, 13),  # downgraded
    (None, 14),  # instance
    (None, 17),  # start
    (None, 18),  # expires
    (None, 19),  # cap
    (None, 20),  # need
)
assert len(_COLUMNS) == 31  # and the ops' kinds: 32 arguments


class Batches:
    """The process's queue of common-case ops and its round trips of them."""

    def __init__(self, pool: Connections, lanes: int = LANES) -> None:
        self.pool = pool
        self.lanes = lanes
        self._queue: list[_Op] = []
        self._flying = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Round trips sent and ops carried (``bench.pg_metering`` prints the ratio).
        self.round_trips = 0
        self.ops = 0

    async def settle_one(
        self, entry_id: str, s: Settlement, now: float, scope: str, key: str
    ) -> Outcome:
        return await self._submit(
            _Op(
                0,
                scope,
                key,
                [
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
                    scope,
                    key,
                ],
            )
        )

    async def reserve_one(self, req: ReserveRequest, args: list[Any]) -> Outcome:
        """``args``: keyfob_reserve_one's (``PostgresMetering._one_arguments``)."""
        return await self._submit(_Op(1, args[15], args[16], args))

    async def _submit(self, op: _Op) -> Outcome:
        self._queue.append(op)
        self._kick()
        return await op.future

    def _kick(self) -> None:
        while self._queue and self._flying < self.lanes:
            ops, self._queue = self._queue[:MAX_OPS], self._queue[MAX_OPS:]
            self._flying += 1
            task = asyncio.ensure_future(self._send(ops))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, ops: list[_Op]) -> None:
        try:
            self.round_trips += 1
            self.ops += len(ops)
            if len(ops) == 1:
                await self._alone(ops[0])
            else:
                try:
                    await self._together(ops)
                except LOST:
                    raise
                except Exception as exc:
                    if _conflict(exc):
                        raise
                    log.warning("a batch of %d failed (%s): op by op", len(ops), type(exc).__name__)
                    await asyncio.gather(*(self._alone(op) for op in ops))
        except BaseException as exc:
            for op in ops:
                if not op.future.done():
                    if isinstance(exc, Exception):
                        op.future.set_exception(exc)
                    else:
                        op.future.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flying -= 1
            self._kick()

    async def _alone(self, op: _Op) -> None:
        try:
            row = await self.pool.fetchrow(_SETTLE_ONE if op.kind == 0 else _RESERVE_ONE, *op.args)
        except Exception as exc:
            if not op.future.done():
                op.future.set_exception(exc)
            return
        if not op.future.done():
            op.future.set_result(None if row is None or row[1] is None else (row[0], row[1]))

    async def _together(self, ops: list[_Op]) -> None:
        ops.sort(key=lambda o: (o.scope, o.key, o.kind))
        columns = [[o.kind for o in ops]]
        columns += [
            [_pick(o, at_settle, at_reserve) for o in ops] for at_settle, at_reserve in _COLUMNS
        ]
        row = await self.pool.fetchrow(_MANY, *columns)
        assert row is not None
        for op, spent, reserved in zip(ops, row[0], row[1], strict=True):
            if not op.future.done():
                op.future.set_result(None if reserved is None else (spent, reserved))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _pick(op: _Op, at_settle: int | None, at_reserve: int | None) -> Any:
    at = at_settle if op.kind == 0 else at_reserve
    return None if at is None else op.args[at]


def _conflict(exc: BaseException) -> bool:
    """A batch PostgreSQL rolled back to break a lock cycle: each op's caller tries again."""
    return isinstance(
        exc, (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
    )
