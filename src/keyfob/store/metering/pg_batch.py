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
reservation, unless reservations are committed unflushed (``unflushed``: the backend's
``durability``). What an op's function would not have done (no row) is answered as None,
and the caller asks the general function, as for a lone call. A batch that fails for
another reason than a lost connection or a conflict is sent again op by op, so one op's
error is never another call's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from keyfob.metering import pending
from keyfob.metering.types import ReserveRequest, Settlement
from keyfob.store.metering.pg_connections import CONFLICTS, LOST, Connections

log = logging.getLogger("keyfob.metering")

#: Round trips of batched ops a process keeps on their way at once. Two: a lone
#: settlement on its way never delays the next call's reservation, and under load each
#: round trip carries what arrived during the other.
LANES = 2
#: At most this many ops in one statement (its arguments stay small).
MAX_OPS = 64
#: A settlement nobody awaits, sent while another round trip of the process is on its
#: way, waits this long for a reservation to go with (calls overlap: the next one is
#: near) before it goes alone; a read or a refusal in the process sends it at once
#: (``metering.pending``). Alone in the process it goes at once: waiting would only
#: put its work on the next reservation's path (measured: a lone client's calls took
#: 14% longer when each reservation carried the last settlement, ``bench.pg_metering``;
#: on the wire, hosted added p50 at c=1 0.75 ms against 0.64-0.67 without the wait).
SETTLE_WAIT_S = 0.002

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

#: The same, their commit not waiting for the WAL flush (``PostgresMetering.durability``
#: "commit"; ``keyfob_meter_many`` puts back the setting it found, so whichever of the two
#: runs first, it ends off).
_UNFLUSHED = ", set_config('synchronous_commit', 'off', true) AS unflushed"
_MANY_UNFLUSHED = (
    "SELECT m.o_spent, m.o_reserved FROM keyfob_meter_many("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 33))
    + f") AS m{_UNFLUSHED}"
)
RESERVE_ONE_UNFLUSHED = (
    "SELECT r.spent, r.reserved FROM keyfob_reserve_one("  # noqa: S608 (constants)
    + ", ".join(f"${i}" for i in range(1, 22))
    + f") AS r{_UNFLUSHED}"
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
    #: A settlement that may wait for a reservation to go with (``SETTLE_WAIT_S``).
    lazy: bool = False


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
        #: Reservations commit without waiting for the WAL flush (set by the backend).
        self.unflushed = False
        self._queue: list[_Op] = []
        self._flying = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: The lazy settlements queued may go alone now (their wait is over, or someone
        #: waits for them).
        self._due = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        pending.hurry_with(self)
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
        """``args``: keyfob_reserve_one's (``pg_arguments.one_arguments``)."""
        return await self._submit(_Op(1, args[15], args[16], args))

    async def _submit(self, op: _Op) -> Outcome:
        self._loop = asyncio.get_running_loop()
        op.lazy = (
            op.kind == 0 and SETTLE_WAIT_S > 0 and self._flying > 0 and pending.UNAWAITED.get()
        )
        if not self._queue and self._flying < self.lanes and not op.lazy:
            return await self._at_once(op)
        self._queue.append(op)
        self._kick()
        return await op.future

    async def _at_once(self, op: _Op) -> Outcome:
        """Nothing queued and a lane free: the op's own statement, in the caller's task
        (no batch task, no future: the lone call's path stays as short as it was)."""
        self._flying += 1
        self.round_trips += 1
        self.ops += 1
        try:
            row = await self.pool.fetchrow(self._statement(op), *op.args)
        finally:
            self._flying -= 1
            self._kick()
        return None if row is None or row[1] is None else (row[0], row[1])

    def _statement(self, op: _Op) -> str:
        if op.kind == 0:
            return _SETTLE_ONE
        return RESERVE_ONE_UNFLUSHED if self.unflushed else _RESERVE_ONE

    def hurry(self) -> None:
        """Send the settlements waiting for company now."""
        try:
            if asyncio.get_running_loop() is not self._loop:
                return  # another loop's store (its own reads hurry it)
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = True
        self._kick()

    def _ready(self) -> bool:
        if not self._queue:
            return False
        if self._due or len(self._queue) >= MAX_OPS:
            return True
        return any(not op.lazy for op in self._queue)

    def _kick(self) -> None:
        """Send what may go while a lane is free; lazy settlements left waiting always
        have a timer that sends them (none waits past ``SETTLE_WAIT_S`` for company)."""
        while self._flying < self.lanes and self._ready():
            ops, self._queue = self._queue[:MAX_OPS], self._queue[MAX_OPS:]
            self._flying += 1
            task = asyncio.ensure_future(self._send(ops))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._queue:
            self._due = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None and not self._due and self._loop is not None:
            self._timer = self._loop.call_later(SETTLE_WAIT_S, self.hurry)

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
            row = await self.pool.fetchrow(self._statement(op), *op.args)
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
        row = await self.pool.fetchrow(_MANY_UNFLUSHED if self.unflushed else _MANY, *columns)
        assert row is not None
        for op, spent, reserved in zip(ops, row[0], row[1], strict=True):
            if not op.future.done():
                op.future.set_result(None if reserved is None else (spent, reserved))

    async def close(self) -> None:
        """Send what waits, give the round trips on their way a moment, then stop."""
        self.hurry()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()


def _pick(op: _Op, at_settle: int | None, at_reserve: int | None) -> Any:
    at = at_settle if op.kind == 0 else at_reserve
    return None if at is None else op.args[at]


def _conflict(exc: BaseException) -> bool:
    """A batch PostgreSQL rolled back to break a lock cycle: each op's caller tries again."""
    return isinstance(exc, CONFLICTS)
