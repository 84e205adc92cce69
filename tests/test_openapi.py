"""The OpenAPI 3.1 document at /openapi.json (issue 15).

Checked with openapi-spec-validator, and exercised by schemathesis against a running
server with a live grant and fakellm upstream: whatever schemathesis generates from the
document (valid and invalid bodies, odd parameters), the server never answers 5xx, and
every answer's status, content type, headers and body conform to the document. Example
counts are bounded so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli, mint_token
from tests.test_gateway_openai import MODEL, link

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, fakellm: FakeLLM
) -> Iterator[tuple[KeyfobServer, str]]:
    data_dir = tmp_path_factory.mktemp("openapi") / "data"
    data_dir.mkdir()
    cli(data_dir, "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
    link(data_dir, "fake", fakellm.base_url)
    token = str(mint_token(data_dir, models=[MODEL], cap_micro_usd=2_000_000)["token"])
    srv = KeyfobServer(data_dir).start()
    try:
        yield srv, token
    finally:
        srv.stop()


def test_the_document_is_valid_openapi_3_1(live: tuple[KeyfobServer, str]) -> None:
    server, _token = live
    answer = httpx.get(server.url + "/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    doc = answer.json()
    validate(doc)  # openapi-spec-validator, 3.1 dialect
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": server.url}]
    for path in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/models",
        "/v1/keyfob/quote",
        "/v1/keyfob/allowance",
        "/oauth/token",
        "/oauth/device_authorization",
        "/.well-known/oauth-authorization-server",
    ):
        assert path in doc["paths"], path
    # the 429 an app must handle is described where it reads it
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "x-should-retry" in chat["default"]["headers"]


#: Bodies that reach the upstream (the served document cannot name this server's models):
#: schemathesis sends each explicit example besides what it generates, so successful
#: answers, streamed ones too, are checked against the document as well as refusals.
HELLO = [{"role": "user", "content": "hello"}]
EXAMPLES = {
    "/v1/chat/completions": [
        {"model": MODEL, "messages": HELLO, "max_tokens": 20},
        {"model": MODEL, "messages": HELLO, "stream": True},
    ],
    "/v1/responses": [
        {"model": MODEL, "input": "hello", "max_output_tokens": 20},
        {"model": MODEL, "input": "hello", "stream": True},
    ],
    "/v1/messages": [
        {"model": MODEL, "messages": HELLO, "max_tokens": 20},
        {"model": MODEL, "messages": HELLO, "max_tokens": 20, "stream": True},
    ],
    "/v1/messages/count_tokens": [{"model": MODEL, "messages": HELLO}],
    "/v1/keyfob/quote": [{"model": MODEL, "messages": HELLO, "max_tokens": 20}],
}


@pytest.fixture(scope="module")
def api_schema(live: tuple[KeyfobServer, str]) -> Any:
    server, _token = live
    doc = httpx.get(server.url + "/openapi.json").json()
    for path, bodies in EXAMPLES.items():
        media = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        media["examples"] = {f"e{i}": {"value": b} for i, b in enumerate(bodies)}
    return schemathesis.openapi.from_dict(doc)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_and_never_fails(
    case: Any, live: tuple[KeyfobServer, str]
) -> None:
    server, token = live
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token}"},
        checks=CHECKS,
        timeout=30,
    )
