"""The OpenAI surface end to end: official SDK -> keyfob serve -> fakellm, metered exactly."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from keyfob.context import Keyfob
from keyfob.gateway import headers as h
from keyfob.providers.linking import link_provider
from keyfob.settings import Settings
from keyfob.store.records import Provider
from tests.support import FakeLLM, KeyfobServer, ledger_rows, mint_token

MODEL = "fake/gpt-4o-mini"
TEST_KEY = "sk-test-0000000000000000000000"


async def _link(
    data_dir: Path, name: str, base_url: str, api_key: str | None, models: list[str], is_local: bool
) -> Provider:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        return await link_provider(
            kf,
            user_id=owner.id,
            name=name,
            kind="openai_compatible",
            base_url=base_url,
            api_key=api_key,
            models=models,
            is_local=is_local,
        )
    finally:
        await kf.close()


def link(
    data_dir: Path,
    name: str,
    base_url: str,
    *,
    api_key: str | None = TEST_KEY,
    models: list[str] | None = None,
    is_local: bool = False,
) -> Provider:
    """Link a provider through the same function the CLI and web page call."""
    return asyncio.run(
        _link(
            data_dir,
            name,
            base_url,
            api_key,
            ["gpt-4o-mini"] if models is None else models,
            is_local,
        )
    )


def client(server: KeyfobServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0)


@pytest.fixture
def fake_token(server: KeyfobServer, fakellm: FakeLLM) -> str:
    link(server.data_dir, "fake", fakellm.base_url)
    return str(mint_token(server.data_dir, models=[MODEL], cap_micro_usd=1_000_000)["token"])


def test_non_streamed_cost_is_exact(server: KeyfobServer, fake_token: str) -> None:
    with client(server, fake_token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=50
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == (
        "Hi there! This is a mock response from fakellm."
    )
    # gpt-4o-mini: 1 x $0.15/MTok + 11 x $0.60/MTok = 6.75 micro-USD, rounded up to 7
    assert raw.headers[h.COST] == "0.000007"
    rows = ledger_rows(server.data_dir)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == raw.headers[h.REQUEST_ID]
    assert (row["status"], row["cost_micro_usd"], row["usage_source"]) == ("settled", 7, "upstream")
    assert (row["input_tokens"], row["output_tokens"]) == (1, 11)
    assert row["model"] == MODEL and row["streamed"] is False
    assert row["needs_reconciliation"] is False
    assert raw.headers[h.RESERVED] == f"0.{row['reserved_micro_usd']:06d}"
    assert raw.headers[h.LEFT] == f"0.{1_000_000 - 7:06d}"
    assert raw.headers[h.RESETS_AT].endswith("Z")


def test_bare_model_name_resolves(server: KeyfobServer, fake_token: str) -> None:
    with client(server, fake_token) as c:
        completion = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
    assert completion.choices[0].message.content
    assert ledger_rows(server.data_dir)[0]["model"] == MODEL


def test_streamed_relay_counts_itself_when_upstream_reports_no_usage(
    server: KeyfobServer, fake_token: str
) -> None:
    with client(server, fake_token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=50, stream=True
        )
        reserved = raw.headers[h.COST]
        assert raw.headers[h.RESERVED] == reserved
        with raw.parse() as stream:
            chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Hi there! This is a mock response from fakellm."
    # the usage-only chunk Keyfob asked for upstream is not relayed to this client
    assert all(ch.usage is None for ch in chunks)
    [row] = ledger_rows(server.data_dir)
    assert row["id"] == raw.headers[h.REQUEST_ID]
    assert row["streamed"] is True
    assert (row["status"], row["usage_source"]) == ("estimated", "estimated")
    assert row["output_tokens"] == 14  # cl100k: "Hi there! This is a mock response from fakellm."
    assert row["input_tokens"] > 0
    assert 0 < row["cost_micro_usd"] <= row["reserved_micro_usd"]


def test_stream_ends_with_cost_comment(server: KeyfobServer, fake_token: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {fake_token}"},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    lines = [ln for ln in text.splitlines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert lines[-2].startswith(": keyfob-cost-usd=")
    [row] = ledger_rows(server.data_dir)
    assert lines[-2] == f": keyfob-cost-usd=0.{row['cost_micro_usd']:06d}"


def test_stream_usage_kept_when_client_asks(server: KeyfobServer, fake_token: str) -> None:
    with (
        client(server, fake_token) as c,
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream,
    ):
        chunks = list(stream)
    assert chunks  # fakellm sends no usage chunk; Keyfob must not invent one in the stream
    [row] = ledger_rows(server.data_dir)
    assert row["status"] == "estimated"


class StubUpstream:
    """A tiny threaded OpenAI-ish upstream for timings fakellm cannot script."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _chunk(content: str) -> bytes:
    data = json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        }
    )
    return f"data: {data}\n\n".encode()


class SlowStream(BaseHTTPRequestHandler):
    """Three chunks 0.7 s apart, then a usage chunk and [DONE]."""

    chunks = 3

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for i in range(self.chunks):
                self.wfile.write(_chunk(f"part{i} "))
                self.wfile.flush()
                time.sleep(0.7)
            usage = json.dumps(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            )
            self.wfile.write(f"data: {usage}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def test_first_chunk_arrives_before_upstream_finishes(server: KeyfobServer) -> None:
    upstream = StubUpstream(SlowStream)
    try:
        link(server.data_dir, "slow", upstream.base_url)
        token = mint_token(server.data_dir, models=["slow/gpt-4o-mini"], cap_micro_usd=1_000_000)[
            "token"
        ]
        started = time.monotonic()
        arrivals: list[float] = []
        with (
            client(server, token) as c,
            c.chat.completions.create(
                model="slow/gpt-4o-mini",
                messages=[{"role": "user", "content": "x"}],
                max_tokens=10,
                stream=True,
            ) as stream,
        ):
            for _ in stream:
                arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 3
        assert arrivals[0] < 0.6 < arrivals[-1]
        [row] = ledger_rows(server.data_dir)
        # usage reported upstream: 3 x 0.15 + 3 x 0.6 = 2.25 -> 3 micro-USD
        assert (row["status"], row["cost_micro_usd"], row["output_tokens"]) == ("settled", 3, 3)
    finally:
        upstream.close()


def test_client_disconnect_mid_stream_still_settles(server: KeyfobServer) -> None:
    class Longer(SlowStream):
        chunks = 8

    upstream = StubUpstream(Longer)
    try:
        link(server.data_dir, "slow", upstream.base_url)
        token = mint_token(server.data_dir, models=["slow/gpt-4o-mini"], cap_micro_usd=1_000_000)[
            "token"
        ]
        body = {
            "model": "slow/gpt-4o-mini",
            "stream": True,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
        }
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status_code == 200
            next(resp.iter_raw())  # first chunk, then hang up
        deadline = time.monotonic() + 10
        while True:
            [row] = ledger_rows(server.data_dir)
            if row["status"] != "reserved" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert row["status"] == "charged_reservation"
        assert row["cost_micro_usd"] == row["reserved_micro_usd"] > 0
        assert row["needs_reconciliation"] is True
    finally:
        upstream.close()


def test_models_lists_only_the_grant(server: KeyfobServer, fakellm: FakeLLM) -> None:
    link(server.data_dir, "fake", fakellm.base_url, models=["gpt-4o-mini", "gpt-4o"])
    token = mint_token(server.data_dir, models=[MODEL], cap_micro_usd=1000)["token"]
    with client(server, token) as c:
        models = c.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "fake"


def test_refused_before_upstream_when_cap_too_small(server: KeyfobServer, fakellm: FakeLLM) -> None:
    link(server.data_dir, "fake", fakellm.base_url)
    token = mint_token(server.data_dir, models=[MODEL], cap_micro_usd=5)["token"]
    before = fakellm.request_count()
    with client(server, token) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=1000
        )
    assert fakellm.request_count() == before
    err = info.value
    assert err.code == "allowance_exhausted"
    assert "month:" in err.message and "resets at" in err.message
    # a month away: no Retry-After (SDKs would sleep it), and told not to retry
    assert "retry-after" not in err.response.headers
    assert err.response.headers["x-should-retry"] == "false"
    assert err.response.headers[h.LEFT] == "0.000005"
    assert ledger_rows(server.data_dir) == []


def test_stream_usage_summary_when_the_upstream_sends_none(
    server: KeyfobServer, fake_token: str
) -> None:
    """fakellm sends no usage in streams: a client that asked for it still gets a usage
    chunk (Keyfob's own count, the one the ledger settled), and one that did not gets none."""
    with client(server, fake_token) as c:
        chunks = list(
            c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=50,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = [ch.usage for ch in chunks if ch.usage is not None]
        plain = list(
            c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=50,
                stream=True,
            )
        )
    assert len(usage) == 1 and usage[0].completion_tokens > 0
    assert all(ch.usage is None for ch in plain)
    rows = sorted(ledger_rows(server.data_dir), key=lambda r: r["created_at"])
    assert rows[0]["status"] == "estimated"
    assert rows[0]["output_tokens"] == usage[0].completion_tokens
    assert rows[0]["input_tokens"] == usage[0].prompt_tokens
