"""The input bound through the gateway, with the official SDKs and an upstream that bills.

The upstream bills each request as ``provider_billing`` says a provider would (images
by their formula, documents by what they hold, every allowed web search used, each one
a pass over a full context window) and reports it as usage, ``server_tool_use``
included. Keyfob must reserve at least that before the call, refuse what it cannot bound
in the surface's own error format, and settle what the upstream reports, fees included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from keyfob.gateway import headers as h
from keyfob.pricing.model_limits import limits_for
from keyfob.store.records import LimitOverride
from tests import provider_billing as pb
from tests.gateway_inproc import ledger, link, mint, sdk
from tests.oauth_app import InProcess
from tests.support import cli

#: $1 and $5 per million tokens: micro-USD per token 1 in, 5 out.
PRICE = (1_000_000, 5_000_000)
CLAUDE = "claude-3-5-haiku"


class BillingUpstream:
    """Anthropic Messages and OpenAI chat, billed by ``provider_billing``."""

    def __init__(self) -> None:
        self.bills: list[pb.Bill] = []
        self.bodies: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def _up(self, model: str) -> pb.Upstream:
        kind = "anthropic" if model.startswith("claude") else "openai"
        limits = limits_for(kind, model)  # my-model: the window its owner set below
        fee = 10_000 if kind == "anthropic" else 50_000  # per search, as published
        return pb.Upstream(limits.context_window_tokens if limits else 32_000, search_micro_usd=fee)

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        model = str(body["model"])
        bill = pb.bill_messages(body, model=model, output_tokens=3, up=self._up(model))
        self.bills.append(bill)
        usage: dict[str, Any] = {"input_tokens": bill.input_tokens, "output_tokens": 3}
        if bill.tool_uses:
            usage["server_tool_use"] = {
                "web_search_requests": bill.tool_uses.get("web_search", 0),
                "web_fetch_requests": bill.tool_uses.get("web_fetch", 0),
            }
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        model = str(body["model"])
        bill = pb.bill_chat(body, model=model, output_tokens=3, up=self._up(model))
        self.bills.append(bill)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": bill.input_tokens, "completion_tokens": 3},
            }
        )

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/{name}/v1/messages", self._messages)
        app.router.add_post("/{name}/v1/chat/completions", self._chat)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def up() -> Iterator[BillingUpstream]:
    fake = BillingUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, up: BillingUpstream) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp("inbound") / "data", models=()) as app:
        ant_key = "sk-ant-api03-" + "a" * 80
        link(app, "ant", up.url("ant/v1"), models=[CLAUDE], kind="anthropic", api_key=ant_key,
             price=PRICE)  # fmt: skip
        # the same upstream, with the person's own tool prices (linked before any call:
        # the gateway caches the provider list)
        link(app, "ant-own", up.url("ant/v1"), models=[CLAUDE], kind="anthropic",
             api_key=ant_key, price=PRICE)  # fmt: skip
        models = ["gpt-4o-mini", "my-model", "your-model", "gpt-4o-search-preview"]
        link(app, "oai", up.url("oai/v1"), models=models, kind="openai", api_key="sk-" + "b" * 48,
             price=PRICE)  # fmt: skip
        yield app


def claude_client(app: InProcess, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=app.url, api_key=token, max_retries=0, http_client=app.client
    )


def _micro(value: str) -> int:
    return int(Decimal(value) * 1_000_000)


def test_web_search_is_reserved_per_use_and_settled_with_its_fees(
    app: InProcess, up: BillingUpstream
) -> None:
    token = mint(app, [f"ant/{CLAUDE}"], cap_micro_usd=50_000_000)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    raw = claude_client(app, token).messages.with_raw_response.create(
        model=f"ant/{CLAUDE}",
        max_tokens=50,
        messages=[{"role": "user", "content": "what is new?"}],
        tools=[search],  # type: ignore[list-item]
    )
    bill = up.bills[-1]
    assert bill.tool_uses == {"web_search": 2} and bill.input_tokens > 2 * 200_000
    billed = bill.input_tokens * 1 + 3 * 5 + 2 * 10_000
    assert _micro(raw.headers[h.RESERVED]) >= billed
    assert _micro(raw.headers[h.COST]) == billed
    entry = ledger(app)[raw.headers[h.REQUEST_ID]]
    assert entry["cost_micro_usd"] == billed and not entry["needs_reconciliation"]


def test_a_search_model_is_charged_its_search_though_unreported(
    app: InProcess, up: BillingUpstream
) -> None:
    """OpenAI's search models bill a search per request and report no count of it."""
    token = mint(app, ["oai/gpt-4o-search-preview"])
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="oai/gpt-4o-search-preview",
            max_tokens=5,
            messages=[{"role": "user", "content": "news?"}],
            web_search_options={},
        )
    bill = up.bills[-1]
    assert bill.tool_uses == {"web_search": 1}
    fee = 50_000  # the highest published tier, reserved and charged
    assert _micro(raw.headers[h.COST]) == bill.input_tokens + 3 * 5 + fee
    assert _micro(raw.headers[h.RESERVED]) >= bill.input_tokens + 5 * 5 + fee


def test_a_server_tool_without_max_uses_is_refused_in_anthropic_format(app: InProcess) -> None:
    token = mint(app, [f"ant/{CLAUDE}"])
    before = len(ledger(app))
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude_client(app, token).messages.create(
            model=f"ant/{CLAUDE}",
            max_tokens=50,
            messages=[{"role": "user", "content": "news?"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "max_uses" in error["message"]
    assert len(ledger(app)) == before  # nothing reserved, nothing sent


def test_a_url_document_is_bounded_by_the_context_window(
    app: InProcess, up: BillingUpstream
) -> None:
    """The issue's case: a document by URL bounded at a few thousand tokens let a $0.10
    cap be billed ten times over. Its worst case is now the context window: refused."""
    token = mint(app, [f"ant/{CLAUDE}"], cap_micro_usd=100_000)
    sent = len(up.bodies)
    doc = {"type": "document", "source": {"type": "url", "url": "https://docs.example/a.pdf"}}
    with pytest.raises(anthropic.RateLimitError):
        claude_client(app, token).messages.create(
            model=f"ant/{CLAUDE}",
            max_tokens=50,
            messages=[{"role": "user", "content": [doc, {"type": "text", "text": "sum up"}]}],  # type: ignore[list-item]
        )
    assert len(up.bodies) == sent  # never reached the provider


def test_an_inline_image_is_reserved_by_its_model_formula(
    app: InProcess, up: BillingUpstream
) -> None:
    token = mint(app, ["oai/gpt-4o-mini"])
    image = {"type": "image_url", "image_url": {"url": pb.data_url("png", 1024, 1024)}}
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="oai/gpt-4o-mini",
            max_tokens=10,
            messages=[{"role": "user", "content": [image]}],  # type: ignore[list-item]
        )
    bill = up.bills[-1]
    assert bill.input_tokens >= 25_501  # 2,833 + 4 x 5,667
    assert _micro(raw.headers[h.RESERVED]) >= bill.input_tokens + 10 * 5
    assert _micro(raw.headers[h.COST]) == bill.input_tokens + 3 * 5


def test_a_file_part_needs_a_context_window_which_the_person_can_set(
    app: InProcess, up: BillingUpstream
) -> None:
    token = mint(app, ["oai/my-model", "oai/your-model"])
    part = {"type": "file", "file": {"file_id": "file-abc"}}
    messages = [{"role": "user", "content": [part]}]
    sent = len(up.bodies)
    with sdk(app, token) as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="oai/your-model", max_tokens=5, messages=messages)  # type: ignore[arg-type]
    assert caught.value.code == "unbounded_cost"
    assert "keyfob providers limits" in caught.value.message and len(up.bodies) == sent
    provider = app.run(app.store.providers.by_name, app.owner.id, "oai")
    assert provider is not None
    app.run(app.store.providers.set_limits, provider.id, "my-model",
            LimitOverride(context_window_tokens=32_000))  # fmt: skip
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="oai/my-model",
            max_tokens=5,
            messages=messages,  # type: ignore[arg-type]
        )
    assert _micro(raw.headers[h.RESERVED]) >= 32_000
    assert up.bills[-1].input_tokens >= 32_000  # it filled the window it was given


def test_a_persons_tool_price_is_reserved_and_charged(app: InProcess, up: BillingUpstream) -> None:
    """``keyfob providers limits ... --tool-price anthropic-web-search=0.025``: the
    person's per-use price replaces the shipped $0.01, in the reservation and in the
    settlement of the uses the upstream reports."""
    provider = app.run(app.store.providers.by_name, app.owner.id, "ant-own")
    assert provider is not None
    own = LimitOverride(tool_prices=(("anthropic-web-search", 25_000),))
    app.run(app.store.providers.set_limits, provider.id, CLAUDE, own)
    assert app.run(app.store.providers.limits, provider.id) == {CLAUDE: own}
    token = mint(app, [f"ant-own/{CLAUDE}"], cap_micro_usd=50_000_000)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    raw = claude_client(app, token).messages.with_raw_response.create(
        model=f"ant-own/{CLAUDE}",
        max_tokens=50,
        messages=[{"role": "user", "content": "what is new?"}],
        tools=[search],  # type: ignore[list-item]
    )
    bill = up.bills[-1]
    assert bill.tool_uses == {"web_search": 2}
    charged = bill.input_tokens * 1 + 3 * 5 + 2 * 25_000
    assert _micro(raw.headers[h.COST]) == charged
    reserved = _micro(raw.headers[h.RESERVED])
    assert reserved >= bill.input_tokens + 50 * 5 + 2 * 25_000
    entry = ledger(app)[raw.headers[h.REQUEST_ID]]
    assert entry["cost_micro_usd"] == charged


def test_limits_cli(tmp_path: Path) -> None:
    """Few processes: each is a Python start-up, slow on a loaded machine."""
    from tests.conftest import OWNER, OWNER_PASSWORD

    data = tmp_path / "data"
    cli(data, "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
    cli(data, "providers", "add", "oai", "--base-url", "http://127.0.0.1:9/v1",
        "-m", "my-model", "-m", "gpt-4o-mini", KEYFOB_PROVIDER_KEY="sk-" + "c" * 48)  # fmt: skip
    set_ = cli(data, "providers", "limits", "oai", "my-model", "--context", "32000",
               "--max-output", "2048", "--image-rule", "anthropic-pixels",
               "--tool-price", "openai-web-search=0.025").stdout  # fmt: skip
    assert "context window 32,000 tokens, max output 2,048" in set_
    assert "images: anthropic-pixels" in set_ and "source: override" in set_
    assert "tool openai-web-search: $0.025000 per use (yours)" in set_
    bad = cli(data, "providers", "limits", "oai", "my-model", "--tool-price", "web=1", check=False)
    assert bad.returncode != 0 and "unknown tool 'web'" in bad.stderr
    listed = cli(data, "models", "list").stdout.splitlines()
    assert "32,000 / 2,048" in next(ln for ln in listed if "oai/my-model" in ln)
    assert "128,000 / 16,384" in next(ln for ln in listed if "oai/gpt-4o-mini" in ln)
    bad = cli(data, "providers", "limits", "oai", "my-model", "--image-rule", "nope", check=False)
    assert bad.returncode != 0 and "unknown image rule" in bad.stderr
    reset = cli(data, "providers", "limits", "oai", "my-model", "--reset").stdout
    assert "no limits known" in reset and "--context N" in reset
