"""``python -m bench.pg_metering``: PostgreSQL's own CPU and the round trip per metering call.

Why: the wire bench gives hosted mode's PostgreSQL CPU per gateway call as one figure;
this drives the metering backend alone (a reservation, then its settlement in a task
nobody awaits, as the gateway's; one grant, one calendar cap: the gateway's common
case) on a fresh database, so a change to
``postgres.sql`` or the commit mode shows as microseconds of PostgreSQL's CPU (every
process of the server: backends, WAL writer, checkpointer, from ``/proc``) and of wall
time per call, sequentially and with calls in flight. Needs PostgreSQL on loopback
(``KEYFOB_BENCH_PG_ADMIN``, as the wire bench).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped]

from keyfob.metering import pending
from keyfob.metering.types import Counter, Limit, Reserved, ReserveRequest, Settlement
from keyfob.store import Store
from keyfob.store.records import Token

#: The reservation's forms (``store/metering/postgres.py``): the backend's choice (the
#: common case's one-statement functions, committed without waiting for the WAL flush),
#: then with every reservation flushed (``durability = "disk"``: one transaction when
#: alone in the process, the procedure that releases its locks before the disk sync
#: while others are on their way, and each form alone), and the general functions
#: (``keyfob_reserve``/``_settle``, always flushed).
VARIANTS: dict[
    str, tuple[Literal["auto", "one", "procedure"], bool, bool, Literal["commit", "disk"]]
] = {
    "as chosen (batched)": ("auto", True, True, "commit"),
    "unbatched, as chosen": ("auto", True, False, "commit"),
    "disk: as chosen (batched)": ("auto", True, True, "disk"),
    "disk: unbatched, as chosen": ("auto", True, False, "disk"),
    "disk: always the procedure": ("procedure", True, False, "disk"),
    "disk: always one transaction": ("one", True, False, "disk"),
    "general functions, as chosen": ("auto", False, False, "commit"),
}


ADMIN = os.environ.get("KEYFOB_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_cpu_s() -> float:
    """utime + stime of every PostgreSQL process on this machine (seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if not name.startswith("postgres"):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def _seed(store: Store) -> tuple[str, str, str, str]:
    user = await store.users.create(f"b{secrets.token_hex(3)}", "x", is_owner=True)
    client = await store.clients.add(
        name="bench", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id, client_id=client.id, models=["m"], cap_micro_usd=10**15
    )
    token = f"tok-{grant.id}"
    await store.tokens.save(
        Token(token, "access", grant.id, client.id, "fam", "", None, 0, 1e12, None, None)
    )
    return user.id, client.id, grant.id, token


async def run(n: int, concurrency: int, rounds: int) -> None:
    name = f"keyfob_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        store = await Store.open(f"{url}/{name}")
        try:
            user_id, client_id, grant_id, token = await _seed(store)
            limits = (Limit("month", "month", 10**15, (Counter(grant_id, "month:bench"),)),)
            done = Settlement("settled", 400, "upstream", 10, 10)

            async def call(i: int) -> None:
                req = ReserveRequest(
                    f"b{i:08d}{secrets.token_hex(4)}", token, grant_id, user_id, client_id,
                    None, "m", "chat", False, 1000, time.time(), limits, None, None, None,
                    None, "bench",
                )  # fmt: skip
                r = await store.metering.reserve(req)
                assert isinstance(r, Reserved)
                # settled as the gateway does: in a task nobody awaits (metering.pending)
                unawaited = pending.UNAWAITED.set(True)
                try:
                    pending.track(asyncio.ensure_future(store.metering.settle(req.entry_id, done)))
                finally:
                    pending.UNAWAITED.reset(unawaited)
                await asyncio.sleep(0)  # the answer goes out: the settlement's task starts

            async def worker(k: int) -> None:
                for i in range(k, n, concurrency):
                    await call(i)
                await pending.settled()

            await asyncio.gather(*(worker(k) for k in range(concurrency)))  # warm-up: n calls
            results: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in VARIANTS}
            for _ in range(rounds):
                for variant, (form, common, batching, durability) in VARIANTS.items():
                    store.metering.durability = durability  # type: ignore[attr-defined]
                    store.metering.form = form  # type: ignore[attr-defined]
                    store.metering.common_case = common  # type: ignore[attr-defined]
                    store.metering.batching = batching  # type: ignore[attr-defined]
                    batches = store.metering.batches  # type: ignore[attr-defined]
                    trips0, ops0 = batches.round_trips, batches.ops
                    cpu0, wall0 = _postgres_cpu_s(), time.perf_counter()
                    proc0 = time.process_time()
                    await asyncio.gather(*(worker(k) for k in range(concurrency)))
                    wall = time.perf_counter() - wall0
                    pg = _postgres_cpu_s() - cpu0
                    own = time.process_time() - proc0
                    trips = batches.round_trips - trips0
                    per_trip = (batches.ops - ops0) / trips if trips else 0.0
                    results[variant].append((n / wall, pg / n * 1e6, own / n * 1e6, per_trip))
            for variant, rows in results.items():
                rate, pg_us, own_us, per_trip = (
                    statistics.median(r[i] for r in rows) for i in range(4)
                )
                batched = f"  {per_trip:4.1f} ops per batch" if per_trip else ""
                print(
                    f"c={concurrency} {variant:>30}: {rate:6.0f} calls/s  PostgreSQL CPU "
                    f"{pg_us:6.1f} us/call  this process {own_us:6.1f} us/call{batched} "
                    f"(medians of {rounds})"
                )
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=3000, help="calls per measurement")
    ap.add_argument("-c", "--concurrency", default="1,10,50", help="comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant")
    args = ap.parse_args()
    import uvloop

    for c in (int(x) for x in args.concurrency.split(",")):
        uvloop.run(run(args.n, c, args.rounds))


if __name__ == "__main__":
    main()
