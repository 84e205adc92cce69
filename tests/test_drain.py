"""The bounded drain (issue 12): on SIGTERM a stream in flight gets
``KEYFOB_DRAIN_TIMEOUT`` seconds, then Keyfob cuts it itself — the client gets its
surface's error event and end of stream rather than a torn connection — settles it, and the process
exits well before the stream would have ended. A real ``keyfob serve``, fakellm's
three-second story, the official openai SDK."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.support import FakeLLM, free_port, keyfob_env, ledger_rows, mint_token, wait_http
from tests.test_concurrency import MODEL, link_fake


async def _stream_through_a_drain(url: str, token: str, proc: subprocess.Popen[bytes]) -> dict:  # type: ignore[type-arg]
    got: dict = {"chunks": 0, "finish": None, "error": None}  # type: ignore[type-arg]
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key=token, max_retries=0, timeout=30
    ) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            max_tokens=2000,
            stream=True,
            messages=[{"role": "user", "content": "tell a long story"}],
        )
        try:
            async for chunk in stream:
                got["chunks"] += 1
                if got["chunks"] == 3:
                    got["sigterm_at"] = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                if chunk.choices and chunk.choices[0].finish_reason:
                    got["finish"] = chunk.choices[0].finish_reason
        except openai.APIConnectionError as exc:  # a torn connection: what the cut avoids
            got["error"] = repr(exc)
        except openai.APIError as exc:  # the surface's own error event, then the end
            got["ended_with"] = str(exc)
        got["ended_at"] = time.monotonic()
    return got


def test_sigterm_cuts_streams_after_the_drain_limit_and_settles_them(
    owned_data_dir: Path, fakellm: FakeLLM
) -> None:
    asyncio.run(link_fake(owned_data_dir, fakellm))
    minted = mint_token(owned_data_dir, [MODEL], 10_000_000)
    port = free_port()
    log = owned_data_dir / "drain.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyfob", "serve", "--port", str(port)],
            env=keyfob_env(owned_data_dir, KEYFOB_DRAIN_TIMEOUT="1", KEYFOB_LOG_LEVEL="info"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/livez", proc=proc)
        got = asyncio.run(
            _stream_through_a_drain(f"http://127.0.0.1:{port}", minted["token"], proc)
        )
        assert proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        if proc.poll() is None:
            proc.kill()
    took = got["ended_at"] - got["sigterm_at"]
    # the story takes ~3 s; the drain ended it after its 1 s limit, cleanly
    assert 0.9 <= took < 2.5, (took, got, log.read_text())
    assert got["error"] is None and got["chunks"] > 3, got
    assert "shutting down" in got["ended_with"], got
    assert "cut 1 stream(s) still in flight" in log.read_text()
    rows = ledger_rows(owned_data_dir)
    assert [r["status"] for r in rows] != ["reserved"] and len(rows) == 1, rows


def test_a_gateway_calls_log_lines_carry_its_ledger_id() -> None:
    """The JSON formatter reads the request id the meter sets (the x-keyfob-request-id)."""
    import json
    import logging

    from keyfob.logs import REQUEST_ID, JsonFormatter

    record = logging.LogRecord("keyfob.gateway", logging.WARNING, __file__, 1, "cut %d", (1,), None)
    token = REQUEST_ID.set("01JLEDGERROWID")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "01JLEDGERROWID" and line["message"] == "cut 1"
    assert "request_id" not in json.loads(JsonFormatter().format(record))
