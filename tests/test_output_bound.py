"""Invariant 1 against an adversarial upstream: the output bound Keyfob reserves is the
bound the provider bills (issue 10).

The upstream (``tests/adversarial_upstream.py``) ignores ``max_completion_tokens``
unless it plays api.openai.com, writes 20,000 tokens when no limit is sent, and keeps its
own bill. For every surface x provider kind, concurrent calls through the official SDKs
against a small cap: what it billed stays within the cap, and the ledger equals its bill.
Then the upstream breaks the bound outright (ignores every limit, over-reports): the
stream is cut, the whole answer charged its real cost, the provider marked, the person
told, and the next call refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from keyfob.allowance.policy import Policy, PolicyError
from keyfob.gateway import headers as h
from keyfob.gateway.output import OutputBound, OutputGuard, ask_of, fit_tokens
from keyfob.gateway.overrun import drain
from keyfob.pricing.prices import Price
from keyfob.providers import output_limit
from tests import provider_billing
from tests.adversarial_upstream import AdversarialUpstream, Behaviour
from tests.gateway_inproc import ledger, link, mint
from tests.oauth_app import InProcess, hidden
from tests.support import cli

#: 1 micro-USD per input token, 4 per output token: every cost is an exact integer.
PRICE = (1_000_000, 4_000_000)
#: Provider kind -> (link name, the limit fields its upstream obeys).
KINDS: dict[str, frozenset[str]] = {
    "openai_compatible": frozenset({"max_tokens"}),
    "openai": frozenset({"max_completion_tokens"}),
    "gemini": frozenset({"max_tokens"}),
    "openrouter": frozenset({"max_tokens"}),
    "anthropic": frozenset(),  # Messages: max_tokens, always obeyed
}
PROMPT = "Write as much as you can about the sea."
CAP = 60_000  # $0.06: about three calls at the 4,096-token default


@pytest.fixture(scope="module")
def up() -> Iterator[AdversarialUpstream]:
    fake = AdversarialUpstream()
    yield fake
    fake.close()


@pytest.fixture
def app(tmp_path: Path, up: AdversarialUpstream) -> Iterator[InProcess]:
    up.reset()
    for kind, honours in KINDS.items():
        up.configure(kind, Behaviour(price=PRICE, honours=honours, event_delay_s=0.0005))
    with InProcess(tmp_path / "data", models=()) as inproc:
        for kind in KINDS:
            link(
                inproc,
                kind,
                up.url(kind),
                models=["m"],
                kind=kind,
                api_key=_key(kind),
                price=PRICE,
            )
        yield inproc


def _key(kind: str) -> str:
    return {
        "anthropic": "sk-ant-api03-" + "k" * 40,
        "openai": "sk-proj-" + "k" * 40,
        "gemini": "AIza" + "k" * 35,
        "openrouter": "sk-or-v1-" + "k" * 40,
    }.get(kind, "sk-" + "k" * 40)


async def _one(
    http: Any, url: str, token: str, surface: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One call through the official SDK of its surface: what the app saw."""
    stream = bool(body.get("stream"))
    try:
        if surface == "messages":
            ac = anthropic.AsyncAnthropic(
                base_url=url, api_key=token, http_client=http, max_retries=0
            )
            raw = await ac.messages.with_raw_response.create(**body)
            if stream:
                events = [e async for e in await raw.parse()]
                ends = [e.delta.stop_reason for e in events if e.type == "message_delta"]
                return {"ok": True, "headers": raw.headers, "end": ends[-1] if ends else None}
            msg = await raw.parse()
            return {"ok": True, "headers": raw.headers, "end": msg.stop_reason}
        oc = openai.AsyncOpenAI(
            base_url=url + "/v1", api_key=token, http_client=http, max_retries=0
        )
        if surface == "responses":
            raw = await oc.responses.with_raw_response.create(**body)
            if stream:
                events = [e async for e in raw.parse()]
                done = [e.response for e in events if e.type in _RESPONSE_ENDS]
                end = done[-1].status if done else None
                return {"ok": True, "headers": raw.headers, "end": end}
            return {"ok": True, "headers": raw.headers, "end": raw.parse().status}
        raw = await oc.chat.completions.with_raw_response.create(**body)
        if stream:
            chunks = [c async for c in raw.parse()]
            ends = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
            return {"ok": True, "headers": raw.headers, "end": ends[-1] if ends else None}
        done = raw.parse()
        return {"ok": True, "headers": raw.headers, "end": done.choices[0].finish_reason}
    except (openai.RateLimitError, anthropic.RateLimitError) as exc:
        return {"ok": False, "status": 429, "headers": exc.response.headers}
    except (openai.BadRequestError, anthropic.BadRequestError) as exc:
        return {"ok": False, "status": 400, "headers": exc.response.headers, "body": exc.body}


_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


def calls(
    app: InProcess, token: str, surface: str, bodies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``bodies`` sent at once (one event loop, the app's own), through the SDKs."""

    async def run() -> list[dict[str, Any]]:
        # the anthropic SDK brings its own httpx fork (httpx2), openai the original
        lib = httpx2 if surface == "messages" else httpx
        transport = lib.ASGITransport(app=app.app)
        async with lib.AsyncClient(transport=transport, base_url=app.url) as http:
            got = await asyncio.gather(*(_one(http, app.url, token, surface, b) for b in bodies))
        await drain()
        return list(got)

    return app.run(run)


def rows_of(app: InProcess, expected: int) -> list[dict[str, Any]]:
    """The ledger once it holds ``expected`` settled rows: readers on another connection
    see the serving process's batch a few milliseconds late (``sync_reads``)."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in ledger(app).values() if r["status"] != "reserved"]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _body(surface: str, kind: str, i: int, limits: str) -> dict[str, Any]:
    model = f"{kind}/m"
    stream = i % 2 == 1
    if surface == "messages":
        return {
            "model": model,
            "max_tokens": 3000,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
        }
    if surface == "responses":
        return {"model": model, "input": PROMPT, "stream": stream}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    }
    if limits == "max_completion_tokens":  # the case: 1 token reserved, 1000s billed
        body["max_completion_tokens"] = 300 + i
    elif limits == "both":
        body["max_completion_tokens"], body["max_tokens"] = 200, 5000
    return body


CASES = [
    ("chat", "none"),
    ("chat", "max_completion_tokens"),
    ("chat", "both"),
    ("responses", "none"),
    ("messages", "max_tokens"),
]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("surface", "limits"), CASES)
def test_concurrent_calls_bill_within_the_cap(
    app: InProcess, up: AdversarialUpstream, surface: str, limits: str, kind: str
) -> None:
    token = mint(app, [f"{k}/m" for k in KINDS], cap_micro_usd=CAP)
    bodies = [_body(surface, kind, i, limits) for i in range(10)]
    got = calls(app, token, surface, bodies)
    served = [g for g in got if g["ok"]]
    assert served, got
    billed = up.billed(kind)
    rows = rows_of(app, len(up.of(kind)))
    charged = sum(r["cost_micro_usd"] or 0 for r in rows)
    # what the upstream billed never exceeds the cap, and the ledger is its bill
    assert 0 < billed <= CAP
    assert charged == billed, (charged, billed)
    assert all(r["status"] == "settled" and not r["needs_reconciliation"] for r in rows)
    assert len(rows) == len(served) == len(up.of(kind))
    for call, row in zip(
        sorted(up.of(kind), key=lambda c: c.output_tokens),
        sorted(rows, key=lambda r: r["output_tokens"]),
        strict=True,
    ):
        # the upstream was told a limit it obeys, and wrote no more than reserved
        assert call.obeyed is not None
        assert call.output_tokens == row["output_tokens"] <= call.obeyed
        assert row["cost_micro_usd"] <= row["reserved_micro_usd"]
    # the dialect: each kind got exactly the fields its upstream honours
    for call in up.of(kind):
        sent = {f: call.body.get(f) for f in ("max_tokens", "max_completion_tokens")}
        if kind == "openai":
            assert sent["max_tokens"] is None and sent["max_completion_tokens"] == call.obeyed
        elif kind == "gemini":
            assert sent["max_completion_tokens"] is None and sent["max_tokens"] == call.obeyed
        else:
            assert sent["max_tokens"] == call.obeyed
            assert sent["max_completion_tokens"] in (None, call.obeyed)
    if limits == "none":  # nothing set: fitted, so more calls are served than would fit
        lowered = [g for g in served if h.MAX_TOKENS_LOWERED_FROM in g["headers"]]
        assert lowered
        assert all(g["headers"][h.MAX_TOKENS_LOWERED_FROM] == "4096" for g in lowered)


#: Content billed beyond its text: an inline image (1024 px square, high detail: 25,501
#: tokens on gpt-4o-mini's formula), a document billed by reference (a whole context
#: window), a server-side web search (a fee per use, and its results as input).
IMAGE_URL = provider_billing.data_url("png", 1024, 1024)
IMAGE_B64 = IMAGE_URL.split(",", 1)[1]
CONTENT_CASES = [
    ("chat", "image"),
    ("responses", "image"),
    ("messages", "image"),
    ("chat", "document"),
    ("messages", "document"),
    ("chat", "web_search"),
    ("messages", "web_search"),
]
#: Cells refused before anything goes upstream, and why: the content has no form in the
#: serving provider's wire format (translation), so there is nothing to bound.
UNTRANSLATABLE = {
    ("chat", "document", "anthropic"),  # an OpenAI file part has no Anthropic form
    # a search model's option has no Anthropic form (dropped, it would be charged unused)
    ("chat", "web_search", "anthropic"),
    ("messages", "document", "openai_compatible"),  # a PDF document has no OpenAI form
    ("messages", "document", "openai"),
    ("messages", "document", "gemini"),
    ("messages", "document", "openrouter"),
    ("messages", "web_search", "openai_compatible"),  # server tools: custom tools only
    ("messages", "web_search", "openai"),
    ("messages", "web_search", "gemini"),
    ("messages", "web_search", "openrouter"),
}
CONTENT_CAP = 200_000
CONTEXT = 8_000


def _content_body(surface: str, kind: str, i: int, content: str) -> dict[str, Any]:
    model = f"{kind}/m"
    stream = i % 2 == 1
    ask = "Describe what you are given."
    if surface == "responses":  # images only (documents and tools: refused by translation)
        part = {"type": "input_image", "image_url": IMAGE_URL, "detail": "high"}
        item = {"role": "user", "content": [{"type": "input_text", "text": ask}, part]}
        return {"model": model, "input": [item], "stream": stream}
    if surface == "messages":
        body: dict[str, Any] = {"model": model, "max_tokens": 3000, "stream": stream}
        blocks: list[dict[str, Any]] = [{"type": "text", "text": ask}]
        if content == "image":
            source = {"type": "base64", "media_type": "image/png", "data": IMAGE_B64}
            blocks.append({"type": "image", "source": source})
        elif content == "document":
            source = {"type": "url", "url": "https://docs.example/report.pdf"}
            blocks.append({"type": "document", "source": source})
        else:
            body["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
        body["messages"] = [{"role": "user", "content": blocks}]
        return body
    parts: list[dict[str, Any]] = [{"type": "text", "text": ask}]
    body = {"model": model, "stream": stream}
    if content == "image":
        parts.append({"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "high"}})
    elif content == "document":
        parts.append({"type": "file", "file": {"file_id": "file-report"}})
    else:
        body["web_search_options"] = {}
    body["messages"] = [{"role": "user", "content": parts}]
    return body


def _content_limits(app: InProcess, up: AdversarialUpstream, kind: str) -> None:
    """The person's limits for ``m`` say what this upstream bills (its context window, its
    image formula), as ``keyfob providers limits`` would."""
    from keyfob.store.records import LimitOverride

    anthropic_wire = kind == "anthropic"
    rule = "anthropic-pixels" if anthropic_wire else "openai-tiles-2833-5667"
    image_model = "claude-sonnet-4-5" if anthropic_wire else "gpt-4o-mini"
    kf = app.app.state.kf
    provider = app.run(kf.store.providers.by_name, app.owner.id, kind)
    app.run(
        kf.store.providers.set_limits,
        provider.id,
        "m",
        LimitOverride(context_window_tokens=CONTEXT, image_rule=rule),
    )
    up.configure(
        kind,
        Behaviour(
            price=PRICE,
            honours=KINDS[kind],
            event_delay_s=0.0005,
            image_model=image_model,
            context_window=CONTEXT,
        ),
    )


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("surface", "content"), CONTENT_CASES)
def test_concurrent_calls_with_images_documents_and_searches_bill_within_the_cap(
    app: InProcess, up: AdversarialUpstream, surface: str, content: str, kind: str
) -> None:
    """The input side of the matrix: content billed by formula, by reference or per use.
    What the upstream billed stays within the cap and the ledger is its bill; a cell
    whose content cannot reach the provider is refused before any byte goes upstream."""
    _content_limits(app, up, kind)
    token = mint(app, [f"{k}/m" for k in KINDS], cap_micro_usd=CONTENT_CAP)
    bodies = [_content_body(surface, kind, i, content) for i in range(10)]
    got = calls(app, token, surface, bodies)
    if (surface, content, kind) in UNTRANSLATABLE:
        assert {g.get("status") for g in got} == {400}, got
        assert up.of(kind) == []
        return
    served = [g for g in got if g["ok"]]
    assert served, got
    assert all(g["ok"] or g["status"] == 429 for g in got), got
    billed = up.billed(kind)
    rows = rows_of(app, len(up.of(kind)))
    assert 0 < billed <= CONTENT_CAP
    assert sum(r["cost_micro_usd"] or 0 for r in rows) == billed
    assert len(rows) == len(served) == len(up.of(kind))
    for row in rows:
        assert row["cost_micro_usd"] <= row["reserved_micro_usd"]
        assert not row["needs_reconciliation"]
    calls_made = up.of(kind)
    if content == "image":  # the formula's price was billed, and reserved for
        assert all(c.input_tokens > 1000 for c in calls_made)
    elif content == "document":
        assert all(c.input_tokens >= CONTEXT for c in calls_made)
    else:
        assert all(c.tool_uses > 0 and c.fees_micro_usd > 0 for c in calls_made)
    # call by call: the tokens are the upstream's report; a chat search's fee, which no
    # upstream reports, is charged as quoted, which is what it billed
    assert sorted(r["cost_micro_usd"] for r in rows) == sorted(
        c.billed_micro_usd for c in calls_made
    )
    assert {(r["status"], r["usage_source"]) for r in rows} == {("settled", "upstream")}


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
def test_without_usage_reports_keyfob_counts_what_was_billed(
    app: InProcess, up: AdversarialUpstream, kind: str
) -> None:
    """An upstream that reports no usage (many local servers in streams): Keyfob counts,
    the rows say so (``estimated``), and the count is what was billed."""
    up.configure(kind, Behaviour(price=PRICE, honours=KINDS[kind], report="none"))
    token = mint(app, [f"{kind}/m"], cap_micro_usd=CAP)
    got = calls(app, token, "chat", [_body("chat", kind, i, "none") for i in range(6)])
    assert any(g["ok"] for g in got)
    rows = rows_of(app, len(up.of(kind)))
    assert {(r["status"], r["usage_source"]) for r in rows} == {("estimated", "estimated")}
    assert sum(r["cost_micro_usd"] for r in rows) == up.billed(kind) <= CAP


def test_fit_lowers_the_limit_and_says_so(app: InProcess, up: AdversarialUpstream) -> None:
    token = mint(app, ["openai_compatible/m"], cap_micro_usd=5_000)
    body = {"model": "openai_compatible/m", "messages": [{"role": "user", "content": "hi"}]}
    [got] = calls(app, token, "chat", [body])
    assert got["ok"] and got["end"] == "length"
    lowered = got["headers"][h.MAX_TOKENS_LOWERED_FROM]
    assert lowered == "4096"
    [call] = up.of("openai_compatible")
    # the largest limit whose worst case fits $0.005: (5000 - input bound) / 4 per token
    reserved = int(got["headers"][h.RESERVED].replace(".", ""))
    assert call.obeyed is not None and 256 <= call.obeyed < 4096
    assert reserved <= 5_000 and reserved + 4 > 5_000  # nothing larger would have fit
    assert call.billed_micro_usd <= reserved


def test_refuse_when_the_app_set_its_limit(app: InProcess, up: AdversarialUpstream) -> None:
    token = mint(app, ["openai_compatible/m"], cap_micro_usd=5_000)
    body = {
        "model": "openai_compatible/m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4000,
    }
    [got] = calls(app, token, "chat", [body])
    assert not got["ok"] and got["status"] == 429
    assert up.of("openai_compatible") == []
    # a grant whose policy says ``fit`` lowers even what the app set
    fitting = mint(app, ["openai_compatible/m"], cap_micro_usd=5_000, output_limit="fit")
    [got] = calls(app, fitting, "chat", [body])
    assert got["ok"] and got["headers"][h.MAX_TOKENS_LOWERED_FROM] == "4000"
    # ``refuse`` never fits, not even without an app limit
    refusing = mint(app, ["openai_compatible/m"], cap_micro_usd=5_000, output_limit="refuse")
    [got] = calls(app, refusing, "chat", [{**body, "max_tokens": None}])
    assert not got["ok"]


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_share_the_bound(app: InProcess, up: AdversarialUpstream, stream: bool) -> None:
    token = mint(app, ["openai_compatible/m"], cap_micro_usd=20_000)
    body = {
        "model": "openai_compatible/m",
        "messages": [{"role": "user", "content": "hi"}],
        "n": 3,
        "stream": stream,
    }
    [got] = calls(app, token, "chat", [body])
    assert got["ok"] and got["headers"][h.MAX_TOKENS_LOWERED_FROM] == "4096"
    [call] = up.of("openai_compatible")
    # three choices of the fitted per-choice limit: their worst case fits the cap
    assert call.obeyed is not None and call.output_tokens == 3 * call.obeyed
    [row] = rows_of(app, 1)
    assert row["cost_micro_usd"] == call.billed_micro_usd <= row["reserved_micro_usd"] <= 20_000


def test_fit_floor(app: InProcess, up: AdversarialUpstream) -> None:
    body = {"model": "anthropic/m", "messages": [{"role": "user", "content": "hi"}]}
    # 900 micro-USD leaves room for about 220 output tokens: under the default floor
    token = mint(app, ["anthropic/m"], cap_micro_usd=900)
    [got] = calls(app, token, "chat", [body])
    assert not got["ok"]
    low = mint(app, ["anthropic/m"], cap_micro_usd=900, fit_floor_tokens=100)
    [got] = calls(app, low, "chat", [body])
    assert got["ok"] and got["end"] == "length"
    [call] = up.of("anthropic")
    assert call.obeyed is not None and 100 <= call.obeyed < 256
    with pytest.raises(PolicyError):
        Policy(fit_floor_tokens=0)
    with pytest.raises(PolicyError):
        Policy.from_json('{"output_limit": "sometimes"}')
    assert Policy.from_json(Policy(output_limit="fit").to_json()).output_limit == "fit"
    assert "output_limit" not in Policy().to_json()


def _broken(up: AdversarialUpstream, kind: str, **changes: Any) -> None:
    b = Behaviour(price=PRICE, honours=KINDS[kind], natural_tokens=6000, **changes)
    up.configure(kind, b)


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
def test_whole_answer_past_the_bound_is_charged_its_real_cost(
    app: InProcess, up: AdversarialUpstream, kind: str
) -> None:
    _broken(up, kind, ignore_limits=True)
    up.hooks.clear()
    hook = f"http://127.0.0.1:{up.port}/hook"
    token = mint(app, [f"{kind}/m"], cap_micro_usd=30_000, webhook_url=hook)
    body = {"model": f"{kind}/m", "messages": [{"role": "user", "content": "hi"}]}
    [got] = calls(app, token, "chat", [{**body, "max_tokens": 100}])
    assert got["ok"]
    [call] = up.of(kind)
    assert call.output_tokens == 6000  # it ignored the limit it was sent
    [row] = rows_of(app, 1)
    assert row["cost_micro_usd"] == call.billed_micro_usd > row["reserved_micro_usd"]
    assert "ignored the output limit" in row["error"]
    # the windows hold the real bill, so the next call is refused
    [again] = calls(app, token, "chat", [{**body, "max_tokens": 5000}])
    assert not again["ok"]
    # the provider is marked, the person's flag is up
    kf = app.app.state.kf
    marks = app.run(kf.store.overruns.by_provider, app.owner.id)
    provider = app.run(kf.store.providers.by_name, app.owner.id, kind)
    assert marks[provider.id].count == 1
    [seen] = app.run(kf.store.overruns.for_user, app.owner.id, unseen_only=True)
    assert (seen.kind, seen.cost_micro_usd, seen.ledger_id) == (
        "usage_reported",
        call.billed_micro_usd,
        row["id"],
    )
    # the person is told: a signed allowance.overrun event on the grant's webhook
    events = [e for e, _sig in up.hooks if e["event"] == "allowance.overrun"]
    assert [(e["ledger_id"], e["kind"], e["output_tokens"]) for e in events] == [
        (row["id"], "usage_reported", 6000)
    ]
    assert all(sig.startswith("sha256=") for _e, sig in up.hooks)
    listed = cli(app.data_dir, "providers", "list").stdout
    line = next(ln for ln in listed.splitlines() if ln.strip("│ ").startswith(kind + " "))
    assert "IGNORED 1x" in line
    # the dashboard says so, in words, until the person marks it seen; the provider's
    # mark stays on the providers page
    app.logged_in()
    overview = app.client.get("/")
    assert "A provider billed past the limit Keyfob sent" in overview.text
    assert f"via {kind}" in overview.text and "6000 output tokens" in overview.text
    providers = app.client.get("/providers")
    assert "ignored the output limit Keyfob sent it" in providers.text
    seen_page = app.client.post(
        "/overruns/seen", data={"csrf_token": hidden(overview.text, "csrf_token")}
    )
    assert seen_page.status_code == 303
    assert app.run(kf.store.overruns.for_user, app.owner.id, unseen_only=True) == []
    assert "A provider billed past the limit" not in app.client.get("/").text
    assert "ignored the output limit Keyfob sent it" in app.client.get("/providers").text


@pytest.fixture
def pg_app(tmp_path: Path, up: AdversarialUpstream) -> Iterator[InProcess]:
    """The same gateway on PostgreSQL (the hosted metering path: one transaction per
    reservation and settlement, no write-back)."""
    import secrets

    import asyncpg

    name = f"keyfob_test_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    up.reset()
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        with InProcess(tmp_path / "data", models=(), database_url=url) as inproc:
            assert inproc.store.engine.dialect.name == "postgresql" and inproc.store.hot is None
            for kind in ("openai_compatible", "anthropic"):
                link(inproc, kind, up.url(kind), models=["m"], kind=kind, api_key=_key(kind),
                     price=PRICE)  # fmt: skip
            yield inproc
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
def test_an_overrun_is_charged_its_real_cost_on_postgresql(
    pg_app: InProcess, up: AdversarialUpstream, kind: str
) -> None:
    """On PostgreSQL too: a whole answer billed past its reservation is settled at its
    real cost, the window holds it (the next call is refused), the overrun is recorded;
    and a stream past its bound is cut and charged what was counted."""
    _broken(up, kind, ignore_limits=True)
    app = pg_app
    token = mint(app, [f"{kind}/m"], cap_micro_usd=30_000)
    body = {"model": f"{kind}/m", "messages": [{"role": "user", "content": "hi"}]}
    [got] = calls(app, token, "chat", [{**body, "max_tokens": 100}])
    assert got["ok"]
    [call] = up.of(kind)
    assert call.output_tokens == 6000
    [row] = rows_of(app, 1)
    assert row["cost_micro_usd"] == call.billed_micro_usd > row["reserved_micro_usd"]
    assert "ignored the output limit" in row["error"]
    # the allowance, read through its public API, holds the real bill
    kf = app.app.state.kf
    grant = app.run(kf.store.grants.get, row["grant_id"])
    [month] = app.run(kf.allowance.limits, grant)
    assert month.spent_micro_usd == call.billed_micro_usd and month.reserved_micro_usd == 0
    [again] = calls(app, token, "chat", [{**body, "max_tokens": 5000}])
    assert not again["ok"] and again["status"] == 429
    assert len(up.of(kind)) == 1  # refused before the upstream
    [seen] = app.run(kf.store.overruns.for_user, app.owner.id, unseen_only=True)
    assert (seen.kind, seen.cost_micro_usd, seen.ledger_id) == (
        "usage_reported",
        call.billed_micro_usd,
        row["id"],
    )
    # a stream past its bound, on a fresh grant: cut, charged at least its reservation
    up.reset()
    _broken(up, kind, ignore_limits=True, event_delay_s=0.01)
    streaming = mint(app, [f"{kind}/m"], cap_micro_usd=30_000)
    [got] = calls(app, streaming, "chat", [{**body, "max_tokens": 200, "stream": True}])
    assert got["ok"] and got["end"] == "length"
    [cut] = [r for r in rows_of(app, 2) if r["grant_id"] != row["grant_id"]]
    assert cut["needs_reconciliation"] and "stream cut" in cut["error"]
    assert cut["cost_micro_usd"] >= cut["reserved_micro_usd"] and cut["output_tokens"] > 200
    [streamed_call] = up.of(kind)
    assert streamed_call.output_tokens < 6000


def test_policy_from_the_cli(app: InProcess) -> None:
    mint(app, ["anthropic/m"], client_name="Agent")
    shown = cli(
        app.data_dir, "apps", "policy", "Agent", "--output-limit", "fit", "--fit-floor", "128"
    ).stdout
    assert '"output_limit": "fit"' in shown and '"fit_floor_tokens": 128' in shown
    bad = cli(app.data_dir, "apps", "policy", "Agent", "--output-limit", "maybe", check=False)
    assert bad.returncode != 0 and "auto, fit or refuse" in bad.stdout + bad.stderr


@pytest.mark.parametrize(
    ("kind", "surface"),
    [("openai_compatible", "chat"), ("anthropic", "messages"), ("openai", "responses")],
)
def test_stream_past_the_bound_is_cut(
    app: InProcess, up: AdversarialUpstream, kind: str, surface: str
) -> None:
    _broken(up, kind, ignore_limits=True, event_delay_s=0.01)
    token = mint(app, [f"{kind}/m"], cap_micro_usd=30_000)
    if surface == "messages":
        body: dict[str, Any] = {"max_tokens": 200}
    elif surface == "responses":
        body = {"max_output_tokens": 200}
    else:
        body = {"max_tokens": 200}
    if surface == "responses":
        body |= {"model": f"{kind}/m", "input": "hi", "stream": True}
    else:
        body |= {"model": f"{kind}/m", "messages": [{"role": "user", "content": "hi"}]}
        body["stream"] = True
    [got] = calls(app, token, surface, [body])
    assert got["ok"]
    # the client's stream ended as a length-limited answer of its surface
    assert (
        got["end"]
        == {"chat": "length", "messages": "max_tokens", "responses": "incomplete"}[surface]
    )
    [call] = up.of(kind)
    [row] = rows_of(app, 1)
    assert row["needs_reconciliation"] and "stream cut" in row["error"]
    # cut within MIN_CHECK_STEP_BYTES of events past the bound (16 tokens in ~170 bytes)
    assert 200 < row["output_tokens"] <= 200 + 200 // 10 + 8 + (2048 // 170 + 1) * 16
    assert row["cost_micro_usd"] >= row["reserved_micro_usd"]
    # the upstream stopped soon after: it billed what it generated until the cut
    assert call.output_tokens < 6000
    [seen] = app.run(app.app.state.kf.store.overruns.for_user, app.owner.id)
    assert seen.kind == "stream_cut"


def test_over_and_under_reported_usage(app: InProcess, up: AdversarialUpstream) -> None:
    kind = "openai_compatible"
    body = {"model": f"{kind}/m", "messages": [{"role": "user", "content": "hi"}]}
    up.configure(kind, Behaviour(price=PRICE, natural_tokens=1000, report="over"))
    token = mint(app, [f"{kind}/m"], cap_micro_usd=100_000)
    [got] = calls(app, token, "chat", [{**body, "max_tokens": 800}])
    assert got["ok"]
    [row] = rows_of(app, 1)
    # reported twice what it wrote: charged what it reported (what it will bill), flagged
    assert row["output_tokens"] == 1600 and row["cost_micro_usd"] > row["reserved_micro_usd"]
    up.reset()
    up.configure(kind, Behaviour(price=PRICE, natural_tokens=1000, report="under"))
    under = mint(app, [f"{kind}/m"], cap_micro_usd=5_000)
    got = calls(app, under, "chat", [{**body, "max_tokens": 1000} for _ in range(4)])
    # whatever it reports, it obeyed the limit sent: its bill stays within the cap
    assert up.billed(kind) <= 5_000 and any(g["ok"] for g in got)


def test_provider_headers_are_not_echoed_to_the_app(
    app: InProcess, up: AdversarialUpstream
) -> None:
    token = mint(app, ["openai_compatible/m", "anthropic/m"])
    for kind, surface in (("openai_compatible", "chat"), ("anthropic", "messages")):
        body = {
            "model": f"{kind}/m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10,
        }
        [got] = calls(app, token, surface, [body])
        text = json.dumps(dict(got["headers"]))
        assert "x-echo-" not in text and "k" * 30 not in text


def test_dialects() -> None:
    body = {"model": "m", "max_tokens": 9, "max_completion_tokens": 7, "messages": []}
    assert output_limit.openai_generic("/chat/completions", body, 5) == {
        **body,
        "max_tokens": 5,
        "max_completion_tokens": 5,
    }
    assert "max_completion_tokens" not in output_limit.openai_generic(
        "/chat/completions", {"max_tokens": 9}, 5
    )
    official = output_limit.openai_official("/chat/completions", body, 5)
    assert "max_tokens" not in official and official["max_completion_tokens"] == 5
    gemini = output_limit.max_tokens_only("/chat/completions", body, 5)
    assert "max_completion_tokens" not in gemini and gemini["max_tokens"] == 5
    assert output_limit.openai_generic("/responses", {}, 5) == {"max_output_tokens": 5}
    thinking = {"max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4000}}
    lowered = output_limit.anthropic("/messages", thinking, 3000)
    assert lowered["max_tokens"] == 3000 and lowered["thinking"]["budget_tokens"] == 2999
    # a fit to 1,025 keeps the smallest budget; below it the budget cannot be valid (at
    # least 1,024 and below max_tokens, else a 400), so thinking is dropped
    assert output_limit.anthropic("/messages", thinking, 1025)["thinking"]["budget_tokens"] == 1024
    for small in (1024, 600, 1):
        dropped = output_limit.anthropic("/messages", thinking, small)
        assert "thinking" not in dropped and dropped["max_tokens"] == small
    kept = output_limit.anthropic("/messages", {**thinking, "max_tokens": 9000}, 5000)
    assert kept["thinking"] == thinking["thinking"]  # a budget below the limit stays
    assert thinking["thinking"]["budget_tokens"] == 4000  # never mutated
    assert body["max_tokens"] == 9  # never mutated

    class Plugin:
        wire = "anthropic"

    assert output_limit.of(Plugin()) is output_limit.anthropic


def test_ask_fit_and_guard() -> None:
    chat = {"max_tokens": 500, "max_completion_tokens": 300, "n": 3}
    assert (ask_of("chat.completions", chat).limit, ask_of("chat.completions", chat).n) == (
        300,
        3,
    )
    assert ask_of("chat.completions", {}).limit is None
    assert ask_of("responses", {"max_output_tokens": 7}).limit == 7
    assert ask_of("embeddings", {}) is None
    price = Price("override", input_per_mtok=Decimal(1), output_per_mtok=Decimal(4))
    out = OutputBound(4096, 2)
    k = fit_tokens(price, 100, out, 10_000, in_tokens=False)
    assert price.cost_micro_usd(_usage(100, 2 * k)) <= 10_000
    assert price.cost_micro_usd(_usage(100, 2 * (k + 1))) > 10_000
    assert fit_tokens(price, 100, out, 50, in_tokens=False) == 0
    guard = OutputGuard(100)
    parts: list[str] = []
    events = 0
    for _ in range(400):
        parts.append(" tok")
        events += 1
        if guard.passed(60, lambda: parts):
            break
    # cut past 100 + 10% + 8, within MIN_CHECK_STEP_BYTES (2048 / 60 events) of it
    assert 118 < guard.tokens == events <= 118 + 2048 // 60 + 1
    quiet = OutputGuard(16)  # a short stream under 2 KiB is never counted
    assert not any(quiet.passed(150, lambda: ["x" * 1000]) for _ in range(13))


def _usage(i: int, o: int) -> Any:
    from keyfob.pricing.usage import TokenUsage

    return TokenUsage(i, o)


@pytest.mark.parametrize("stream", [False, True])
def test_answers_do_not_wait_for_the_settlement_and_lose_nothing_on_postgresql(
    pg_app: InProcess, up: AdversarialUpstream, stream: bool
) -> None:
    """An answer goes out once its settlement is decided, before PostgreSQL has it
    (``metering.pending``). Attacked with every settlement's write held back 0.3 s: a
    client calling again at once near its cap is still never refused for the room its
    last call freed (a refusal waits for the settlements on their way), each answer's
    allowance header is what the ledger ends up saying, and a read sees every call."""
    app = pg_app
    up.configure("openai_compatible", Behaviour(price=PRICE, natural_tokens=10))
    metering = app.store.metering
    real_settle = metering.settle
    writes: list[float] = []

    async def slow_settle(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        writes.append(time.monotonic())
        return await real_settle(*args, **kwargs)

    metering.settle = slow_settle  # type: ignore[method-assign]
    # each call reserves ~4,000 micro-USD (1,000 output tokens at 4) and costs ~60: two
    # reservations never fit in 6,000 at once, so every call needs the last one's release
    cap = 6_000
    token = mint(app, ["openai_compatible/m"], cap_micro_usd=cap)
    body = {"model": "openai_compatible/m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1000, "stream": stream}  # fmt: skip

    async def one_after_another() -> list[tuple[dict[str, Any], float]]:
        transport = httpx.ASGITransport(app=app.app)
        async with httpx.AsyncClient(transport=transport, base_url=app.url) as http:
            out = []
            for _ in range(4):
                out.append((await _one(http, app.url, token, "chat", body), time.monotonic()))
            return out

    answers = app.run(one_after_another)
    assert [got["ok"] for got, _ in answers] == [True] * 4, answers
    assert len(up.of("openai_compatible")) == 4
    rows = sorted(ledger(app).values(), key=lambda r: r["id"])  # a read waits for the writes
    assert [r["status"] for r in rows] == ["settled"] * 4
    assert all(0 < r["cost_micro_usd"] < 200 for r in rows)
    assert all(w > at for w, (_got, at) in zip(writes, answers, strict=True))
    spent = 0
    for (got, _at), row in zip(answers, rows, strict=True):
        spent += row["cost_micro_usd"]
        if not stream:  # a stream's headers go out before its usage is known
            assert Decimal(got["headers"][h.COST]) * 1_000_000 == row["cost_micro_usd"]
            assert Decimal(got["headers"][h.LEFT]) * 1_000_000 == cap - spent
    kf = app.app.state.kf
    [month] = app.run(kf.allowance.limits, app.run(kf.store.grants.get, rows[0]["grant_id"]))
    assert (month.spent_micro_usd, month.reserved_micro_usd) == (spent, 0)
