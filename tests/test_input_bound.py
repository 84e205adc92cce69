"""The input bound is a true upper bound: reserved >= what the provider bills (invariant 1).

Hypothesis writes request bodies (text with any code point, inline images of random
sizes and formats, URL images, documents, file ids, function and server-side tools,
every limit field present or absent); for each surface and each wire format that may
serve it, the body Keyfob would send upstream is billed by ``provider_billing`` (an
independent implementation of the providers' rules, at their worst choices) and compared
with the bound Keyfob reserves for. Units test each rule and each refusal.

The output side the same way: for each provider kind (its dialect) and each set of limit
fields its upstream may honour, the body Keyfob sends (planned for the serving wire, then
``output.limit_plan`` with the bound reserved, fitted lower or not) tells the upstream a
limit it reads, and what it may write under it is within the reserved output bound.
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyfob.gateway.chat import SURFACE as CHAT
from keyfob.gateway.chat import upstream_body
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.messages import SURFACE as MESSAGES
from keyfob.gateway.responses import SURFACE as RESPONSES
from keyfob.gateway.translate import Untranslatable, anthropic_to_openai, openai_to_anthropic
from keyfob.gateway.translate import responses as tr
from keyfob.pricing.bounds import Unbounded, chat_input, messages_input
from keyfob.pricing.images import base64_dimensions, data_url_dimensions
from keyfob.pricing.model_limits import limits_for
from keyfob.pricing.prices import Price
from keyfob.pricing.usage import TokenUsage
from keyfob.settings import Settings
from tests import provider_billing as pb

SETTINGS = Settings()
OPENAI_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5", "o3"]
CLAUDE_MODELS = ["claude-sonnet-4-5", "claude-3-5-haiku", "claude-haiku-4-5"]
GEMINI_MODELS = ["gemini-2.0-flash", "gemini-2.5-pro", "gemini-3-pro-preview"]
#: The fee a provider charges per web search (published; OpenAI's highest tier).
SEARCH_FEE = {"anthropic": 10_000, "openai": 50_000}

# --- strategies ------------------------------------------------------------------------

#: Any code point, lone surrogates included (JSON allows them as escapes).
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)
sides = st.integers(1, 5000)
formats = st.sampled_from(pb.IMAGE_FORMATS)
details = st.sampled_from([None, "low", "high", "auto"])


@st.composite
def openai_image(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        fmt = draw(formats)
        w = draw(st.integers(1, 16384 if fmt == "webp-vp8l" else 5000))
        url = pb.data_url(fmt, w, draw(sides))
    else:
        url = "https://images.example/" + draw(st.sampled_from(["a.png", "b.jpg"]))
    image: dict[str, Any] = {"url": url}
    detail = draw(details)
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


cache_control = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])


def chat_part(with_files: bool) -> st.SearchStrategy[dict[str, Any]]:
    options = [
        st.builds(lambda t: {"type": "text", "text": t}, any_text),
        openai_image(),
        # OpenRouter passes cache_control on to Anthropic models
        st.builds(
            lambda t, c: {"type": "text", "text": t, "cache_control": c}, any_text, cache_control
        ),
    ]
    if with_files:
        options.append(st.just({"type": "file", "file": {"file_id": "file-abc123"}}))
    return st.one_of(*options)


function_tool = st.builds(
    lambda name, desc, props: {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in props}},
        },
    },
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
    any_text,
    st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=4),
)


@st.composite
def chat_bodies(draw: st.DrawFn, *, with_files: bool = True) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(any_text)})
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            content: Any = draw(any_text)
        else:
            content = draw(st.lists(chat_part(with_files), min_size=1, max_size=3))
        messages.append({"role": "user", "content": content})
        if draw(st.booleans()):
            args = draw(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True),
                                        st.integers() | any_text, max_size=4))  # fmt: skip
            import json

            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "f",
                                "arguments": json.dumps(args, separators=(",", ":")),
                            },
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": draw(any_text)})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(function_tool, min_size=1, max_size=3))
    for key in ("max_tokens", "max_completion_tokens"):
        if draw(st.booleans()):
            body[key] = draw(st.integers(1, 100_000))
    if draw(st.booleans()):
        body["stream"] = True
    return body


@st.composite
def anthropic_image(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        fmt = draw(formats)
        data = base64.b64encode(pb.make_image(fmt, draw(sides), draw(sides))).decode()
        source = {"type": "base64", "media_type": pb.media_type(fmt), "data": data}
    else:
        source = {"type": "url", "url": "https://images.example/c.png"}
    return {"type": "image", "source": source}


document = st.sampled_from(
    [
        {"type": "document", "source": {"type": "url", "url": "https://docs.example/a.pdf"}},
        {"type": "document", "source": {"type": "file", "file_id": "file_011"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "plain words"},
            "title": "notes",
        },
    ]
)


@st.composite
def messages_bodies(draw: st.DrawFn, *, server_tools: bool = True) -> dict[str, Any]:
    block = st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, any_text),
        anthropic_image(),
        document,
        st.builds(
            lambda t, ttl: {"type": "text", "text": t, "cache_control": ttl},
            any_text,
            cache_control,
        ),
    )
    messages = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            messages.append({"role": "user", "content": draw(any_text)})
        else:
            messages.append(
                {"role": "user", "content": draw(st.lists(block, min_size=1, max_size=3))}
            )
        messages.append({"role": "assistant", "content": draw(any_text)})
    messages.pop()
    body: dict[str, Any] = {
        "model": "m",
        "messages": messages,
        "max_tokens": draw(st.integers(1, 64_000)),
    }
    if draw(st.booleans()):
        body["system"] = draw(any_text)
    tools: list[dict[str, Any]] = []
    if draw(st.booleans()):
        tools.append({"name": "lookup", "description": draw(any_text),
                      "input_schema": {"type": "object", "properties": {}}})  # fmt: skip
    if server_tools and draw(st.booleans()):
        tools.append({"type": "web_search_20250305", "name": "web_search",
                      "max_uses": draw(st.integers(1, 5))})  # fmt: skip
    if server_tools and draw(st.booleans()):
        tools.append({"type": "web_fetch_20250910", "name": "web_fetch",
                      "max_uses": draw(st.integers(1, 3))})  # fmt: skip
    if server_tools and draw(st.booleans()):
        tools.append({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"})
    if tools:
        body["tools"] = tools
    return body


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": draw(any_text)}]
        if draw(st.booleans()):
            image = draw(openai_image())
            part = {"type": "input_image", "image_url": image["image_url"]["url"]}
            if "detail" in image["image_url"]:
                part["detail"] = image["image_url"]["detail"]
            parts.append(part)
        items.append({"role": "user", "content": parts})
    body: dict[str, Any] = {"model": "m", "input": items}
    if draw(st.booleans()):
        body["instructions"] = draw(any_text)
    if draw(st.booleans()):
        body["max_output_tokens"] = draw(st.integers(1, 50_000))
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    return body


# --- the comparison --------------------------------------------------------------------


def _price(model: str, kind: str) -> Price:
    """$3 / $15 per million, cache writes at Anthropic's 1.25x and 2x."""
    price = Price("test", Decimal(3), Decimal(15), None, Decimal("3.75"),
                  cache_write_1h_per_mtok=Decimal(6))  # fmt: skip
    return price.with_tool_prices(limits_for(kind, model))


def _check(bound: TokenUsage, bill: pb.Bill, model: str, kind: str) -> None:
    """Reserved >= billed: tokens, fees and their cost at the model's tool prices."""
    assert bound.input_tokens >= bill.input_tokens, (model, bound, bill)
    price = _price(model, kind)
    fees = price.fees_micro_usd(bound.tool_uses or {})
    assert fees >= bill.fees_micro_usd, (model, bound.tool_uses, bill)
    worst = TokenUsage(
        bound.input_tokens,
        bill.output_tokens,
        tool_uses=bound.tool_uses,
    )
    billed = bill.cost_micro_usd(Decimal(3), Decimal(15))
    assert price.cost_micro_usd(worst) >= billed


def _upstream(model: str, kind: str, provider: str) -> pb.Upstream:
    limits = limits_for(kind, model)
    assert limits is not None
    return pb.Upstream(limits.context_window_tokens, search_micro_usd=SEARCH_FEE[provider])


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(chat_bodies(), st.sampled_from(OPENAI_MODELS + GEMINI_MODELS))
def test_chat_served_by_an_openai_wire_upstream(body: dict[str, Any], model: str) -> None:
    bound = CHAT.bounds(body, SETTINGS, model, limits_for("openai", model))
    sent, _ = upstream_body(body, model, body.get("stream") is True)
    bill = pb.bill_chat(sent, model=model, output_tokens=1, up=_upstream(model, "openai", "openai"))
    _check(bound, bill, model, "openai")


@FAST
@given(chat_bodies(with_files=False), st.sampled_from(CLAUDE_MODELS))
def test_chat_served_by_anthropic(body: dict[str, Any], model: str) -> None:
    bound = CHAT.bounds(body, SETTINGS, model, limits_for("anthropic", model))
    try:
        sent = openai_to_anthropic.request(body, model=model, default_max_tokens=4096)
    except Untranslatable:
        return
    up = _upstream(model, "anthropic", "anthropic")
    _check(bound, pb.bill_messages(sent, model=model, output_tokens=1, up=up), model, "anthropic")


@FAST
@given(messages_bodies(), st.sampled_from(CLAUDE_MODELS))
def test_messages_served_by_anthropic(body: dict[str, Any], model: str) -> None:
    bound = MESSAGES.bounds(body, SETTINGS, model, limits_for("anthropic", model))
    sent = {**body, "model": model}
    up = _upstream(model, "anthropic", "anthropic")
    bill = pb.bill_messages(sent, model=model, output_tokens=body["max_tokens"], up=up)
    _check(bound, bill, model, "anthropic")
    # An upstream that uses fewer searches than allowed bills no more.
    fewer = pb.bill_messages(
        sent, model=model, output_tokens=1, up=pb.Upstream(up.context_window, tool_uses=1)
    )
    assert fewer.input_tokens <= bill.input_tokens


@FAST
@given(messages_bodies(server_tools=False), st.sampled_from(OPENAI_MODELS + GEMINI_MODELS))
def test_messages_served_by_an_openai_wire_upstream(body: dict[str, Any], model: str) -> None:
    bound = MESSAGES.bounds(body, SETTINGS, model, limits_for("openai", model))
    try:
        sent = anthropic_to_openai.request(body, model=model)
    except Untranslatable:
        return
    bill = pb.bill_chat(sent, model=model, output_tokens=1, up=_upstream(model, "openai", "openai"))
    _check(bound, bill, model, "openai")


@FAST
@given(responses_bodies(), st.sampled_from(OPENAI_MODELS + CLAUDE_MODELS))
def test_responses_on_either_wire(body: dict[str, Any], model: str) -> None:
    claude = model.startswith("claude")
    kind, provider = ("anthropic", "anthropic") if claude else ("openai", "openai")
    bound = RESPONSES.bounds(body, SETTINGS, model, limits_for(kind, model))
    chat = tr.request(body, model=model)
    up = _upstream(model, kind, provider)
    if claude:
        sent = openai_to_anthropic.request(chat, model=model, default_max_tokens=4096)
        bill = pb.bill_messages(sent, model=model, output_tokens=1, up=up)
    else:
        bill = pb.bill_chat(chat, model=model, output_tokens=1, up=up)
        # Billed as the Responses API itself would bill the original body, too.
        direct = pb.bill_responses(body, model=model, output_tokens=1, up=up)
        assert bound.input_tokens >= direct.input_tokens
    _check(bound, bill, model, kind)


# --- rules, one by one -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", pb.IMAGE_FORMATS)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000))
@settings(max_examples=30, deadline=None)
def test_inline_image_sizes_are_read_from_their_headers(fmt: str, w: int, h: int) -> None:
    assert data_url_dimensions(pb.data_url(fmt, w, h)) == (w, h)


@given(st.binary(max_size=64), st.sampled_from(["image/png", "image/jpeg", "", None]))
@settings(max_examples=300, deadline=None)
def test_a_malformed_image_is_unknown_never_a_crash(data: bytes, media: str | None) -> None:
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\0\0\0\0WEBP", b"GIF89a"):
        found = base64_dimensions(base64.b64encode(prefix + data).decode(), media)
        assert found is None or (found[0] > 0 and found[1] > 0)
    assert base64_dimensions("!!! not base64", "image/png") is None
    assert data_url_dimensions("data:image/png,plain") is None


def test_gpt_4o_mini_high_detail_image_bills_25501_and_is_reserved_so() -> None:
    """The issue's example: 2,833 + 5,667 per tile, 4 tiles (a 1024 x 1024 image)."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": pb.data_url("png", 1024, 1024)}}
                ],
            }
        ]
    }
    assert pb.openai_image_tokens("gpt-4o-mini", 1024, 1024, "high") == 25_501
    bound = chat_input(body, "gpt-4o-mini", limits_for("openai", "gpt-4o-mini"))
    assert 25_501 <= bound.tokens < 25_501 + 100
    # By URL the size is unknown: the most the formula allows (8 tiles).
    body["messages"][0]["content"][0]["image_url"]["url"] = "https://images.example/x.png"
    by_url = chat_input(body, "gpt-4o-mini", limits_for("openai", "gpt-4o-mini"))
    assert by_url.tokens >= pb.url_image_tokens("gpt-4o-mini") == 2833 + 8 * 5667


def test_content_by_reference_is_bounded_by_the_context_window() -> None:
    file_part = {"type": "file", "file": {"file_id": "file-abc"}}
    body = {"messages": [{"role": "user", "content": [file_part]}]}
    assert chat_input(body, "gpt-4o", limits_for("openai", "gpt-4o")).tokens >= 128_000
    doc = {"type": "document", "source": {"type": "url", "url": "https://x.example/a.pdf"}}
    msgs = {"messages": [{"role": "user", "content": [doc]}], "max_tokens": 10}
    claude = limits_for("anthropic", "claude-3-5-haiku")
    assert messages_input(msgs, "claude-3-5-haiku", claude).tokens >= 200_000
    # No known context window: refused, saying how to set one.
    with pytest.raises(Unbounded, match="keyfob providers limits"):
        chat_input(body, "my-model", None)


def test_server_tools_cost_their_uses_and_need_a_bound() -> None:
    claude = limits_for("anthropic", "claude-3-5-haiku")
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    body = {"messages": [{"role": "user", "content": "news?"}], "max_tokens": 10, "tools": [search]}
    bound = messages_input(body, "claude-3-5-haiku", claude)
    assert bound.fees_micro_usd == 3 * 10_000
    assert bound.tool_uses == {"anthropic-web-search": 3}
    assert bound.tokens >= 3 * 200_000  # each use: another pass over up to the window
    del search["max_uses"]
    with pytest.raises(Unbounded, match="max_uses"):
        messages_input(body, "claude-3-5-haiku", claude)
    for refused in (
        {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
        {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
        {"container": "container_1"},
    ):
        with pytest.raises(Unbounded):
            messages_input({**body, "tools": [], **refused}, "claude-3-5-haiku", claude)
    chat = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]}
    with pytest.raises(Unbounded, match="function"):
        chat_input(chat, "gpt-4o", limits_for("openai", "gpt-4o"))
    grounding = {**chat, "tools": [{"google_search": {}}]}  # Gemini's grounding, no type
    with pytest.raises(Unbounded):
        chat_input(grounding, "gemini-2.5-flash", limits_for("gemini", "gemini-2.5-flash"))


def test_a_search_model_pays_its_search() -> None:
    body = {"messages": [{"role": "user", "content": "news?"}], "web_search_options": {}}
    model = "gpt-4o-search-preview"
    bound = chat_input(body, model, limits_for("openai", model))
    assert bound.fees_micro_usd == 50_000 and bound.tokens >= 128_000


def test_the_surface_refuses_in_its_own_format() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    with pytest.raises(GatewayError) as caught:
        MESSAGES.bounds(
            body, SETTINGS, "claude-3-5-haiku", limits_for("anthropic", "claude-3-5-haiku")
        )
    assert caught.value.status == 400 and caught.value.code == "unbounded_cost"
    assert caught.value.param == "tools.0.max_uses"


def test_cache_writes_are_reserved_at_their_premium() -> None:
    hour = {"type": "ephemeral", "ttl": "1h"}
    block = {"type": "text", "text": "x" * 1000, "cache_control": hour}
    body = {"messages": [{"role": "user", "content": [block]}], "max_tokens": 1}
    claude = limits_for("anthropic", "claude-3-5-haiku")
    bound = messages_input(body, "claude-3-5-haiku", claude)
    plain = messages_input({**body, "messages": [{"role": "user", "content": "x" * 1000}]},
                           "claude-3-5-haiku", claude)  # fmt: skip
    assert bound.cache_ttl == "1h" and bound.tokens >= 2 * plain.tokens
    price = _price("claude-3-5-haiku", "anthropic")
    # Priced as input, the doubled count covers every token written at the 1h rate (2x).
    assert price.cost_micro_usd(bound.usage(0)) >= plain.tokens * 6
    usage = TokenUsage.from_anthropic(
        {"input_tokens": 10, "output_tokens": 0, "cache_creation_input_tokens": 1000,
         "cache_creation": {"ephemeral_1h_input_tokens": 400, "ephemeral_5m_input_tokens": 600}}
    )  # fmt: skip
    assert usage is not None and usage.cache_write_1h_tokens == 400
    assert price.cost_micro_usd(usage) == math.ceil(10 * 3 + 600 * 3.75 + 400 * 6)


def test_settlement_charges_reported_tool_uses() -> None:
    usage = TokenUsage.from_anthropic(
        {"input_tokens": 100, "output_tokens": 10, "server_tool_use": {"web_search_requests": 2}}
    )
    assert usage is not None and usage.tool_uses == {"anthropic-web-search": 2}
    price = _price("claude-3-5-haiku", "anthropic")
    assert price.cost_micro_usd(usage) == 100 * 3 + 10 * 15 + 2 * 10_000
    assert TokenUsage.from_anthropic({"server_tool_use": {"web_search_requests": -1}}) is None
    none = TokenUsage.from_openai({"prompt_tokens": 1, "completion_tokens": 1})
    assert none is not None and none.tool_uses is None


# --- the output side: what the upstream writes, from the body Keyfob sends ---------------

#: Which limit fields an upstream of each kind may honour (the sets its dialect serves):
#: OpenAI-compatible servers ``max_tokens`` (DeepSeek, Mistral, Ollama, llama.cpp) or
#: both (vLLM, OpenRouter); api.openai.com ``max_completion_tokens`` (reasoning models)
#: or both; Gemini ``max_tokens``. Messages and Responses have one field each.
_MT, _BOTH = frozenset({"max_tokens"}), frozenset({"max_tokens", "max_completion_tokens"})
HONOURS: dict[str, list[frozenset[str]]] = {
    "openai_compatible": [_MT, _BOTH],
    "openrouter": [_MT, _BOTH],
    "openai": [frozenset({"max_completion_tokens"}), _BOTH],
    "gemini": [_MT],
    "anthropic": [_MT],
}
OUTPUT_MODELS = {
    "openai_compatible": "deepseek-chat",
    "openrouter": "openai/gpt-4o-mini",
    "openai": "o3",
    "gemini": "gemini-2.5-flash",
    "anthropic": "claude-sonnet-4-5",
}


def _adapter(kind: str) -> Any:
    from keyfob.providers import ProviderRegistry

    return ProviderRegistry.load().get(kind)(SETTINGS)


def _resolved(kind: str) -> Any:
    from keyfob.gateway.models import Resolved
    from keyfob.store.records import Provider

    provider = Provider("p", "", kind, kind, "http://upstream.test", None, "api_key",
                        False, (), 0.0)  # fmt: skip
    return Resolved(provider, OUTPUT_MODELS[kind], f"{kind}/{OUTPUT_MODELS[kind]}")


def upstream_writes(path: str, sent: dict[str, Any], honours: frozenset[str]) -> int | None:
    """The most output an upstream honouring ``honours`` writes for ``sent``, all choices;
    None when it was told no limit it reads (it writes what it wants). An upstream that
    reads two fields may take either: the larger counts."""
    if path == "/messages":
        fields: tuple[str, ...] = ("max_tokens",)
    elif path == "/responses":
        fields = ("max_output_tokens",)
    else:
        fields = tuple(sorted(honours))
    given = [sent[f] for f in fields if isinstance(sent.get(f), int) and sent[f] > 0]
    if not given:
        return None
    n = sent.get("n") if path == "/chat/completions" and isinstance(sent.get("n"), int) else 1
    return max(given) * max(n, 1)


def _output_check(surface: Any, body: dict[str, Any], kind: str, honours: frozenset[str],
                  fitted: int | None) -> None:  # fmt: skip
    from keyfob.gateway.output import OutputBound, ask_of, limit_plan, output_bound

    model = OUTPUT_MODELS[kind]
    limits = limits_for(kind, model)
    out = output_bound(ask_of(surface.endpoint, body), limits, SETTINGS)
    if fitted is not None and fitted < out.per_choice:  # the reservation fitted it lower
        out = OutputBound(fitted, out.n, out.app_set, out.per_choice)
    adapter = _adapter(kind)
    try:
        plan = surface.plan({**body, "model": f"{kind}/{model}"}, _resolved(kind),
                            adapter.wire, SETTINGS)  # fmt: skip
    except Untranslatable:
        return
    sent = limit_plan(plan, adapter, out).body
    writes = upstream_writes(plan.path, sent, honours)
    assert writes is not None, (kind, honours, plan.path, sent)
    assert writes <= out.tokens, (kind, honours, writes, out)
    if plan.path == "/messages":
        thinking = sent.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            # else the API answers 400: the budget is at least 1,024 and below max_tokens
            assert 1024 <= thinking["budget_tokens"] < sent["max_tokens"], sent


#: A fitted limit, or none; small fits often (around the 1,024-token thinking minimum).
fits = st.none() | st.integers(1, 2_000) | st.integers(1, 70_000)


@st.composite
def kind_and_honours(draw: st.DrawFn) -> tuple[str, frozenset[str]]:
    kind = draw(st.sampled_from(sorted(HONOURS)))
    return kind, draw(st.sampled_from(HONOURS[kind]))


@FAST
@given(chat_bodies(with_files=False), kind_and_honours(), fits, st.integers(1, 3))
def test_chat_output_the_upstream_writes_is_reserved(
    body: dict[str, Any], kh: tuple[str, frozenset[str]], fitted: int | None, n: int
) -> None:
    if n > 1:
        body["n"] = n
    _output_check(CHAT, body, kh[0], kh[1], fitted)


@FAST
@given(responses_bodies(), kind_and_honours(), fits)
def test_responses_output_the_upstream_writes_is_reserved(
    body: dict[str, Any], kh: tuple[str, frozenset[str]], fitted: int | None
) -> None:
    _output_check(RESPONSES, body, kh[0], kh[1], fitted)


@FAST
@given(messages_bodies(server_tools=False), kind_and_honours(), fits, st.data())
def test_messages_output_the_upstream_writes_is_reserved(
    body: dict[str, Any], kh: tuple[str, frozenset[str]], fitted: int | None, data: st.DataObject
) -> None:
    if body["max_tokens"] > 1024 and data.draw(st.booleans()):  # extended thinking
        budget = data.draw(st.integers(1024, body["max_tokens"] - 1))
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    _output_check(MESSAGES, body, kh[0], kh[1], fitted)


def test_a_generic_upstream_honouring_only_max_completion_tokens_is_the_documented_edge() -> None:
    """``openai_compatible`` sends ``max_tokens`` (what such servers honour) and
    ``max_completion_tokens`` only when the app sent it: a server that reads only the
    latter is told its bound only then (else the stream cut and real-cost settlement
    are what hold it, ``tests/test_output_bound.py``)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    only_mct = frozenset({"max_completion_tokens"})
    adapter = _adapter("openai_compatible")
    plan = CHAT.plan(body, _resolved("openai_compatible"), adapter.wire, SETTINGS)
    from keyfob.gateway.output import OutputBound, limit_plan

    assert upstream_writes("/chat/completions", limit_plan(plan, adapter, OutputBound(500)).body,
                           only_mct) is None  # fmt: skip
    with_mct = CHAT.plan({**body, "max_completion_tokens": 900}, _resolved("openai_compatible"),
                         adapter.wire, SETTINGS)  # fmt: skip
    sent = limit_plan(with_mct, adapter, OutputBound(500, app_set=True)).body
    assert upstream_writes("/chat/completions", sent, only_mct) == 500


@FAST
@given(st.integers(1025, 64_000), st.data())
def test_a_fitted_anthropic_call_with_thinking_stays_valid(max_tokens: int, data: Any) -> None:
    """Fitting lowers ``max_tokens``; the thinking budget must stay a valid one (at least
    1,024 and below ``max_tokens``) or go, whatever the fit."""
    budget = data.draw(st.integers(1024, max_tokens - 1))
    fitted = data.draw(st.integers(1, max_tokens))
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "think"}],
        "max_tokens": max_tokens,
        "thinking": {"type": "enabled", "budget_tokens": budget},
    }
    _output_check(MESSAGES, body, "anthropic", _MT, fitted)
