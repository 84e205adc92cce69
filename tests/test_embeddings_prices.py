"""An OpenAI-compatible proxy serving OpenAI's embedding model gets its price (issue 15):
the app's call is metered instead of answered with a 400 meant for the owner."""

from __future__ import annotations

import openai

from keyfob.gateway import headers as h
from tests.support import KeyfobServer, ledger_rows, mint_token
from tests.test_gateway_openai import link
from tests.test_gateway_surfaces import Stub


def test_text_embedding_3_small_on_openai_compatible_is_priced(server: KeyfobServer) -> None:
    stub = Stub()  # answers embeddings with usage 3 tokens per input
    try:
        link(server.data_dir, "proxy", stub.base_url, models=["text-embedding-3-small"])
        model = "proxy/text-embedding-3-small"
        token = mint_token(server.data_dir, models=[model], cap_micro_usd=1_000_000)["token"]
        with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as c:
            raw = c.embeddings.with_raw_response.create(model=model, input=["a"] * 100)
        assert len(raw.parse().data) == 100
        # 300 tokens x $0.02 per MTok = 6 micro-USD
        assert raw.headers[h.COST] == "0.000006"
        [row] = ledger_rows(server.data_dir)
        assert (row["status"], row["input_tokens"], row["cost_micro_usd"]) == ("settled", 300, 6)
    finally:
        stub.close()
