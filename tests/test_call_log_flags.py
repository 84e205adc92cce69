"""An app's call log marks what a person should know about a call: the model that served
it "instead of" the one the app asked for (the grant's fallback chain, or a downgrade
when a limit is reached), and an "estimate" badge when the provider reported no usage
and Keyfob counted itself. Real peers: fakellm (its streamed chat carries no usage), a
local upstream that answers 503, and the official openai SDK."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.gateway import headers as h
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import ledger, link, sdk
from tests.oauth_app import InProcess
from tests.support import FakeLLM, grant_token

HI = [{"role": "user", "content": "hello"}]
PRICE = (1_000_000, 2_000_000)  # $1 in, $2 out per million tokens


@pytest.fixture
def app(tmp_path: Path, fakellm: FakeLLM) -> Iterator[InProcess]:
    up = FakeUpstream()
    with InProcess(tmp_path / "data", models=()) as kf:
        link(kf, "down", up.url("down/v1"), models=["m"], price=PRICE)
        link(kf, "fl", fakellm.base_url, models=["small", "big"], price=PRICE)
        kf.logged_in()
        yield kf
    up.close()


def rows(app: InProcess, grant_id: str, n: int) -> list[dict[str, str]]:
    """The call log's rows (newest first) as the page shows them, cell by cell."""
    deadline = time.monotonic() + 5
    while True:
        text = app.client.get(f"/grants/{grant_id}?range=all").text
        found = re.findall(r"<tr>\s*(<td data-label=\"Time\">.*?)</tr>", text, re.S)
        if len(found) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    cells = []
    for row in found:
        pairs = re.findall(r'<td data-label="([^"]+)"[^>]*>(.*?)</td>', row, re.S)
        cells.append({k: unescape(v) for k, v in pairs})
    assert len(cells) == n, cells
    return cells


def mint(app: InProcess, models: list[str], policy: Policy) -> tuple[str, str]:
    minted = app.run(
        grant_token,
        app.store,
        user_id=app.owner.id,
        models=models,
        cap_micro_usd=policy.primary_cap_micro_usd,
        policy_json=policy.to_json(),
        client_name="Flagged",
    )
    return str(minted["token"]), str(minted["grant_id"])


def test_fallback_and_unreported_usage_are_marked_in_the_call_log(app: InProcess) -> None:
    policy = Policy(limits=(SpendLimit("month", 5_000_000),), fallback_chain=("fl/small",))
    token, grant_id = mint(app, ["down/m", "fl/small"], policy)
    with sdk(app, token) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="down/m", messages=HI, max_tokens=20
        )
        assert raw.headers[h.FALLBACK_FROM] == "down/m"
        assert raw.parse().usage is not None  # fakellm reports usage on whole answers
        stream = client.chat.completions.create(
            model="fl/small", messages=HI, max_tokens=20, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    statuses = sorted((r["model"], r["status"], r["usage_source"]) for r in ledger(app).values())
    assert ("fl/small", "estimated", "estimated") in statuses  # the stream had no usage
    # the stream, the fallback's served call and the failed attempt on down/m
    shown = rows(app, grant_id, 3)
    stream_row = shown[0]  # the newest
    [served] = [r for r in shown[1:] if r["Model"].startswith("fl/small")]
    [failed] = [r for r in shown[1:] if r["Model"] == "down/m"]
    assert stream_row["Model"] == "fl/small" and "instead of" not in stream_row["Model"]
    assert "estimate</span>" in stream_row["Status"]
    assert "ok, usage estimated" in stream_row["Status"]
    assert served["Model"].startswith("fl/small") and "instead of down/m" in served["Model"]
    assert "estimate</span>" not in served["Status"]
    assert failed["Model"] == "down/m" and "estimate" not in failed["Status"]


def test_downgrade_at_the_limit_is_marked_instead_of(app: InProcess) -> None:
    # the $0.0001 cap cannot hold a call to "big" ($0.0002 of output alone); the
    # person's fallback model serves it under the per-model cap of "big" only
    policy = Policy(
        limits=(SpendLimit("month", 100, model="fl/big"), SpendLimit("month", 5_000_000)),
        on_exhausted="downgrade",
        fallback_model="fl/small",
    )
    token, grant_id = mint(app, ["fl/big", "fl/small"], policy)
    with sdk(app, token) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fl/big", messages=HI, max_tokens=100
        )
    assert raw.parse().choices[0].message.content
    [row] = rows(app, grant_id, 1)
    assert row["Model"].startswith("fl/small") and "instead of fl/big" in row["Model"]
