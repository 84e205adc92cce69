"""Translation between the OpenAI and Anthropic wire formats, on recorded event sequences."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keyfob.gateway.translate import Untranslatable, anthropic_to_openai, openai_to_anthropic
from keyfob.gateway.translate import responses as tr
from keyfob.gateway.translate.sse import Splitter, parse_json
from keyfob.pricing.usage import TokenUsage

# An Anthropic stream as api.anthropic.com sends it: text, then a tool call, cached input.
ANTHROPIC_STREAM = b"".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    for name, data in [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-3-5-haiku-latest",
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 10,
                        "cache_creation_input_tokens": 5,
                        "cache_read_input_tokens": 100,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 42},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


# An OpenAI stream with a text part, a tool call streamed in pieces, then the usage chunk.
OPENAI_STREAM = b"".join(
    [
        *(
            f"data: {json.dumps(c)}\n\n".encode()
            for c in [
                _chunk({"role": "assistant", "content": ""}),
                _chunk({"content": "Let me check."}),
                _chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    }
                ),
                _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
                _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}),
                _chunk({}, "tool_calls"),
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 120,
                        "completion_tokens": 30,
                        "total_tokens": 150,
                        "prompt_tokens_details": {"cached_tokens": 100},
                        "completion_tokens_details": {"reasoning_tokens": 7},
                    },
                },
            ]
        ),
        b"data: [DONE]\n\n",
    ]
)


def events(raw: bytes, chunk_size: int = 37) -> list[bytes]:
    """Cut at arbitrary byte boundaries, as a network would."""
    s = Splitter()
    out: list[bytes] = []
    for i in range(0, len(raw), chunk_size):
        out += s.feed(raw[i : i + chunk_size])
    assert s.buf == b""
    return out


def test_usage_mapping_both_ways() -> None:
    u = TokenUsage.from_anthropic(
        {
            "input_tokens": 10,
            "output_tokens": 3,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 100,
        }
    )
    assert u == TokenUsage(115, 3, 100, 5, 0)  # our input includes the cached tokens
    assert u.to_anthropic()["input_tokens"] == 10
    assert u.to_openai()["prompt_tokens"] == 115
    assert u.to_openai()["prompt_tokens_details"]["cached_tokens"] == 100
    o = TokenUsage.from_openai(
        {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 7},
        }
    )
    assert o is not None
    assert o.to_anthropic() == {
        "input_tokens": 20,
        "output_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
    }
    assert TokenUsage.from_anthropic({"input_tokens": -1}) is None


def test_anthropic_stream_to_openai_chunks() -> None:
    t = anthropic_to_openai.MessagesToChatStream(model="claude/x", include_usage=True)
    out = [o for ev in events(ANTHROPIC_STREAM) for o in t.feed(ev)]
    assert t.done and out[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(parse_json(o)[2]) for o in out[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hi"
    calls = [
        tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "get_weather"
    args = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(args) == {"city": "Paris"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == 115 and usage["completion_tokens"] == 42
    assert usage["prompt_tokens_details"]["cached_tokens"] == 100
    assert t.usage == TokenUsage(115, 42, 100, 5, 0)


def test_openai_stream_to_anthropic_events() -> None:
    t = openai_to_anthropic.ChatToMessagesStream(model="fake/m")
    out = [o for ev in events(OPENAI_STREAM, 23) for o in t.feed(ev)]
    assert t.done
    parsed = [parse_json(o) for o in out]
    names = [n for n, _obj, _raw in parsed]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    objs = [obj for _n, obj, _raw in parsed]
    assert objs[4]["content_block"] == {  # type: ignore[index]
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    delta = objs[8]
    assert delta is not None
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 20,
        "output_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
    }


def test_requests_translate_both_ways_and_back() -> None:
    chat = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}}],
        "tool_choice": "required",
        "stop": "END",
        "max_tokens": 50,
        "stream": True,
    }
    msg = openai_to_anthropic.request(chat, model="claude", default_max_tokens=4096)
    assert msg["system"] == "Be brief."
    assert msg["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert msg["messages"][1]["content"][0]["input"] == {"q": 1}
    assert msg["messages"][2]["content"][0]["type"] == "tool_result"
    assert msg["tool_choice"] == {"type": "any"}
    assert msg["stop_sequences"] == ["END"] and msg["max_tokens"] == 50
    back = anthropic_to_openai.request(msg, model="gpt")
    assert back["messages"][0] == {"role": "system", "content": "Be brief."}
    assert back["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"q": 1}'
    assert back["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
    assert back["stream_options"] == {"include_usage": True}
    with pytest.raises(Untranslatable):
        openai_to_anthropic.request({**chat, "n": 2}, model="c", default_max_tokens=1)


def test_whole_answers_translate() -> None:
    msg = {
        "id": "msg_1",
        "content": [
            {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 2},
    }
    chat = anthropic_to_openai.response(msg, model="c/m")
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert chat["usage"]["prompt_tokens"] == 5
    again = openai_to_anthropic.response(chat, model="c/m")
    assert again["content"] == msg["content"] and again["stop_reason"] == "tool_use"
    assert again["usage"]["input_tokens"] == 3 and again["usage"]["cache_read_input_tokens"] == 2


def test_responses_over_chat_stream() -> None:
    body = {"model": "m", "input": "hi", "stream": True}
    chat = tr.request(body, model="m")
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    t = tr.ChatToResponsesStream(body, model="m")
    out = [o for ev in events(OPENAI_STREAM) for o in t.feed(ev)]
    kinds = [parse_json(o)[0] for o in out]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    final = parse_json(out[-1])[1]
    assert final is not None
    resp = final["response"]
    assert resp["output"][0]["content"][0]["text"] == "Let me check."
    assert resp["output"][1]["type"] == "function_call"
    assert json.loads(resp["output"][1]["arguments"]) == {"city": "Paris"}
    assert resp["usage"]["input_tokens"] == 120
    seq = [parse_json(o)[1]["sequence_number"] for o in out]  # type: ignore[index]
    assert seq == list(range(len(out)))
    with pytest.raises(Untranslatable):
        tr.request({"model": "m", "input": "x", "previous_response_id": "r"}, model="m")
