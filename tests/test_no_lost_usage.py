"""Invariant 2, no lost usage: kill -9 the gateway while 100 streams are in flight. After the
restart every call that reached the upstream is in the ledger exactly once, charged its
reservation and flagged for reconciliation.

Each stream is ~300 words that fakellm sends 10 ms apart (about three seconds), so the kill
lands mid-stream however slow the machine: a short answer could finish before the kill on a
loaded CI machine, leaving nothing in flight to prove the point."""

from __future__ import annotations

import asyncio
import time

import openai

from tests.support import FakeLLM, KeyfobServer, ledger_rows, mint_token
from tests.test_concurrency import MODEL, link_fake

CALLS = 100


async def start_streams(url: str, token: str, server: KeyfobServer) -> int:
    started = 0
    early: list[str] = []
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key=token, max_retries=0, timeout=30
    ) as client:

        async def one() -> None:
            nonlocal started
            try:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    max_tokens=2000,
                    stream=True,
                    messages=[{"role": "user", "content": "tell a long story"}],
                )
                started += 1
                async for _ in stream:
                    pass
            except (openai.APIConnectionError, openai.APIError) as exc:
                if server.proc is not None and server.proc.poll() is None:
                    early.append(repr(exc))  # failed before the kill: a real error

        tasks = [asyncio.create_task(one()) for _ in range(CALLS)]
        deadline = time.monotonic() + 20
        while started < CALLS // 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        server.kill9()  # ten streams have started, the other calls are anywhere on the path
        await asyncio.gather(*tasks)
    assert early == []
    return started


def test_kill9_mid_stream_loses_no_usage(server: KeyfobServer, fakellm: FakeLLM) -> None:
    asyncio.run(link_fake(server.data_dir, fakellm))
    minted = mint_token(server.data_dir, [MODEL], 10_000_000)
    before = fakellm.request_count()

    started = asyncio.run(start_streams(server.url, minted["token"], server))
    reached = fakellm.request_count() - before
    assert started >= CALLS // 10 and reached >= started

    server.start()  # the restart reconciles what the dead process left open
    rows = ledger_rows(server.data_dir)
    assert len({r["id"] for r in rows}) == len(rows)
    # every call the upstream saw is in the ledger; a call killed between its reservation
    # and the upstream is charged too, flagged, never dropped
    assert len(rows) >= reached
    finished = [r for r in rows if r["status"] in ("estimated", "settled")]
    charged = [r for r in rows if r["status"] == "charged_reservation"]
    assert len(finished) + len(charged) == len(rows), [r["status"] for r in rows]
    assert charged, "the kill was meant to land mid-stream"
    for r in charged:
        assert r["needs_reconciliation"] and r["cost_micro_usd"] == r["reserved_micro_usd"]
    assert len(rows) - reached <= len(charged)
