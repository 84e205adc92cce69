"""What an OpenAI-wire upstream receives and returns, untouched by the gateway: ``n``
choices and logprobs, image parts (bounded in the reservation), and the Gemini adapter's
OpenAI-compatible path and auth header. In-process, against a local fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from keyfob.gateway import headers as h
from keyfob.pricing.model_limits import family_image_rule
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import ledger, link, mint, sdk
from tests.oauth_app import InProcess

#: $1 per million tokens in and out: one micro-USD per token, so reservations count tokens.
PRICE = (1_000_000, 1_000_000)
GEMINI_KEY = "AIza" + "S" * 35
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, up: FakeUpstream
) -> Iterator[tuple[InProcess, str]]:
    with InProcess(tmp_path_factory.mktemp("passthrough") / "data", models=()) as app:
        link(app, "oai", up.url("oai/v1"), models=["m"], price=PRICE)
        link(
            app,
            "gem",
            up.url("gem/v1beta/openai"),
            models=["gemini-2.0-flash"],
            kind="gemini",
            api_key=GEMINI_KEY,
            price=PRICE,
        )
        yield app, mint(app, ["oai/m", "gem/gemini-2.0-flash"])


def micro(header: str) -> int:
    return int(Decimal(header) * 1_000_000)


def test_n_choices_and_logprobs_pass_through(gw: tuple[InProcess, str], up: FakeUpstream) -> None:
    app, token = gw
    with sdk(app, token) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="oai/m",
            messages=[{"role": "user", "content": "hi"}],
            n=3,
            logprobs=True,
            top_logprobs=2,
            max_tokens=10,
        )
        one = c.chat.completions.with_raw_response.create(
            model="oai/m", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    done = raw.parse()
    assert [ch.index for ch in done.choices] == [0, 1, 2]
    assert [ch.message.content for ch in done.choices] == [f"oai answer {i}" for i in range(3)]
    for ch in done.choices:
        assert ch.logprobs is not None and ch.logprobs.content is not None
        [tok] = ch.logprobs.content
        assert (tok.token, tok.logprob, tok.bytes) == ("a", -0.1, [97])
        assert [t.token for t in tok.top_logprobs] == ["a", "b"]
    sent = up.bodies("oai")[-2]
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"]) == (3, True, 2)
    # the worst case covers every choice: max_tokens x n output tokens
    assert micro(raw.headers[h.RESERVED]) - micro(one.headers[h.RESERVED]) == 2 * 10
    row = ledger(app)[raw.headers[h.REQUEST_ID]]
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (10, 6, "settled")


def test_image_parts_reach_the_upstream_and_are_bounded(
    gw: tuple[InProcess, str], up: FakeUpstream
) -> None:
    app, token = gw
    text = {"type": "text", "text": "What is in this picture?"}
    image = {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}
    messages: list[Any] = [{"role": "user", "content": [text, image]}]
    with sdk(app, token) as c:
        with_image = c.chat.completions.with_raw_response.create(
            model="oai/m", messages=messages, max_tokens=10
        )
        without = c.chat.completions.with_raw_response.create(
            model="oai/m", messages=[{"role": "user", "content": [text]}], max_tokens=10
        )
    assert with_image.parse().choices[0].message.content == "oai answer 0"
    sent = up.bodies("oai")[-2]
    assert sent["messages"] == messages and sent["max_tokens"] == 10
    # an inline image is bounded by its model's formula from its size (1 x 1 px), not by
    # its bytes; model "m" is of no known family: the largest answer of several rules
    bound = family_image_rule("m").tokens(1, 1, "low")
    assert bound == 258  # Gemini's smallest image
    assert micro(with_image.headers[h.RESERVED]) - micro(without.headers[h.RESERVED]) == bound


def test_gemini_adapter_path_and_key(gw: tuple[InProcess, str], up: FakeUpstream) -> None:
    app, token = gw
    with sdk(app, token) as c:
        done = c.chat.completions.create(
            model="gem/gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}]
        )
    assert done.choices[0].message.content == "gem answer 0"
    call = [s for s in up.seen if s.name == "gem"][-1]
    assert call.path == "/gem/v1beta/openai/chat/completions"
    assert call.headers["Authorization"] == f"Bearer {GEMINI_KEY}"
    assert call.body["model"] == "gemini-2.0-flash"
    provider = app.run(app.store.providers.by_name, app.owner.id, "gem")
    assert provider is not None and provider.credential_kind == "gemini_api_key"
